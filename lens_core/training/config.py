"""Training configuration of LENS (paper Sec. VI-B); one dataclass so that the paper's ablation rows
and round 2 (mined labels) are trained by the same code with different configs."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from lens_core.config import deep_merge
from lens_core.label_kinds import GT_LIKE_KINDS, IGNORE_KINDS

DATASETS = ("deeplesion", "luna", "lits", "nihln")
NORMS = ("batch", "group")
AFP_TRUNKS = ("per_dataset", "shared")  # lens_core.model.afp's


@dataclass
class TrainConfig:
    datasets: list[str] = field(default_factory=lambda: list(DATASETS))
    # label_kind values that count as lesions (positives) and as ignored regions (Sec. V-C);
    # rows of any other label_kind are dropped.
    gt_kinds: list[str] = field(default_factory=lambda: list(GT_LIKE_KINDS))
    ignore_kinds: list[str] = field(default_factory=lambda: list(IGNORE_KINDS))
    preset: str = "cpu"
    slices: int = 6  # config.yaml's: two groups of 3 (the paper: 9, three groups; a registered deviation)
    weights_path: str | None = None  # local ImageNet densenet121 state_dict for the paper preset
    # The paper preset starts from ImageNet weights (Sec. VI-B); without weights_path it trains from scratch
    # only when this says so (a recorded deviation), not silently.
    paper_from_scratch: bool = False
    epochs: int = 8
    lr: float = 1e-4
    lr_steps: list[int] = field(default_factory=lambda: [4, 6])  # lr / 10 after these epochs
    r_c: float = 0.2
    r_i: float = 0.5
    lambda1: float = 0.1
    lambda2: float = 10.0
    batch_size: int = 4
    pos_neg_ratio: float = 2.0
    # Up to this many slices of each 3D lesion are positives per epoch (None = all of them). The paper samples
    # one positive slice per 3D ground truth (Table IV text); mined boxes count as slices of 3D lesions: a
    # cross-slice box joins its key-slice lesion, an intra-patient tracklet is one lesion (data.lesion_groups).
    slices_per_lesion: int | None = 1
    # An epoch is one pass over every dataset's positives (with their negatives), the paper's (Sec. VI-B):
    # adding data adds steps. A number here caps an epoch at that many batches whatever the data: for smoke
    # tests only, since it splits one budget between datasets. lr_steps stay in epochs.
    steps_per_epoch: int | None = None
    # Negative slices keep this distance (in slices) from any labelled box: 2D key-slice boxes
    # (DeepLesion) leave the lesion's other slices unlabelled, so their neighbours are not negatives.
    neg_gap_2d: int = 4
    neg_gap_3d: int = 0
    # Slices of a key-slice-labelled (DeepLesion-like) dataset that hold no lesion label are sampled as
    # negatives (their uncertain regions ignored) only when this is on. The paper's round 1 trains on the
    # labelled slices alone; unlabelled slices join in round 2 (Table IV, "+ Unlabeled"). Fully labelled
    # (single-type, 3D) datasets keep their negatives either way.
    unlabeled_slices: bool = False
    augment: bool = True
    scale_range: list[float] = field(default_factory=lambda: [0.8, 1.2])
    max_shift: float = 8.0
    # For 3D labels the x/y box is shrunk toward the lesion's ends like an ellipsoid's cross-section,
    # but never below this fraction of its size (1.0 = the full box on every slice).
    min_end_scale: float = 0.5
    # Train on random crop_size x crop_size windows that keep one of the slice's lesions whole
    # (None = whole slices): cheaper steps, so more of them in the same time.
    crop_size: int | None = None
    # Linear lr warmup over the first steps (from lr / 10), for training from scratch.
    warmup_steps: int = 0
    # Clip the gradient's global L2 norm (None = no clipping). Without it a single batch whose
    # focal sum is divided by very few centre pixels can throw the shared backbone off for good.
    grad_clip: float | None = 10.0
    fc_dim: int | None = None
    # The cpu preset's normalisation layers: "batch" (BatchNorm) or "group" (GroupNorm, 8 groups). Batches hold
    # one dataset each (Sec. VI-B), so BatchNorm's running statistics, used at inference, mix the datasets'
    # domains; the paper's backbone starts from ImageNet statistics, a from-scratch one has no such anchor.
    norm: str = "batch"
    # The AFPs: "per_dataset" (each its own network, the paper's) or "shared" (one 3x3 layer per branch for all,
    # each AFP its own 1x1 output layer, as the experts share the head's FC layers): issue 22's cheaper model.
    afp_trunk: str = "per_dataset"
    # The model's size where the paper gives no number (issue 22; docs/speed.md, "The lean model"): the FPN's width
    # (None: the preset's, 64 cpu / 256 paper), each AFP's best cells entering its NMS and its boxes kept, and the
    # pooled boxes (after the AFPs' proposals are pooled and NMS'd) that the head scores on each slice.
    fpn_channels: int | None = None
    afp_pre_nms: int = 100
    proposals_per_afp: int = 50
    pool_top_n: int = 50
    # Start from these LENS weights (a lens.pt of the same experts) instead of at random: round 2 from round 1
    # (mining.round2_init). None = from scratch.
    init_from: str | None = None
    # Score the validation split every this many epochs (0 = never): the first dataset's average sensitivity
    # on its fully annotated validation boxes (test3d.parquet, split val), written to val_curve.parquet.
    val_every: int = 0
    rois_per_image: int = 32
    fuse_experts: list[str] | None = None  # experts fused in `lens propose` (None = all datasets)
    # Train on this fraction of a dataset's training volumes (paper Fig. 7); datasets not named keep
    # all of them. The subset is fixed per dataset (not by the seed) and nested across fractions.
    volume_fraction: dict[str, float] = field(default_factory=dict)
    # Data pooling (paper Table V): these datasets' training slices join the FIRST dataset's task, as
    # if they were its own (its one AFP and expert; their negatives count as its negatives too).
    pool: list[str] = field(default_factory=list)
    # Positive-only data pooling (Table V): the pooled datasets contribute their lesion slices alone.
    pool_positive_only: bool = False
    # How the CPU computes (issue 22; README "Speed"): kernels "fast" (the same functions in a cheaper
    # order) or "exact" (d879e6b's arithmetic); precision "fp32" or "bf16" (autocast). Neither is the paper's
    # concern, both change the float rounding: named switches, recorded with the model.
    kernels: str = "fast"
    precision: str = "fp32"
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known: {sorted(names)}")
        c = cls(**cfg)
        c.validate()
        return c

    def validate(self) -> None:
        if not self.datasets:
            raise ValueError("config 'datasets' is empty")
        if not 0 < self.r_c < self.r_i < 1:
            raise ValueError(f"need 0 < r_c < r_i < 1 (Sec. IV-B), got r_c={self.r_c}, r_i={self.r_i}")
        if set(self.gt_kinds) & set(self.ignore_kinds):
            raise ValueError(f"label kinds both gt and ignore: {sorted(set(self.gt_kinds) & set(self.ignore_kinds))}")
        if self.slices % 3:
            raise ValueError(f"slices must be a multiple of 3, got {self.slices}")
        if self.crop_size is not None and (self.crop_size < 16 or self.crop_size % 16):
            raise ValueError(f"crop_size must be a multiple of 16 (the coarsest stride), got {self.crop_size}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {self.grad_clip}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.steps_per_epoch is not None and (isinstance(self.steps_per_epoch, bool) or self.steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be >= 1 or null, got {self.steps_per_epoch!r}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")
        if self.fuse_experts is not None and not set(self.fuse_experts) <= set(self.datasets):
            raise ValueError(f"fuse_experts {self.fuse_experts} not all in datasets {self.datasets}")
        if len(set(self.pool)) != len(self.pool) or set(self.pool) & set(self.datasets):
            raise ValueError(f"pool {self.pool} must name distinct datasets not in datasets {self.datasets}")
        if self.pool_positive_only and not self.pool:
            raise ValueError("pool_positive_only needs datasets to pool (pool is empty)")
        if self.preset == "paper" and not self.weights_path and not self.paper_from_scratch:
            raise ValueError("preset paper starts from ImageNet DenseNet-121 weights (Sec. VI-B): set weights_path "
                             "to a local densenet121 state_dict, or paper_from_scratch: true to train it from "
                             "scratch (recorded as a deviation)")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        for k in ("fpn_channels", "afp_pre_nms", "proposals_per_afp", "pool_top_n"):
            v = getattr(self, k)
            if not (v is None and k == "fpn_channels") and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                null = " or null" if k == "fpn_channels" else ""
                raise ValueError(f"{k} must be a positive integer{null}, got {v!r}")
        if self.proposals_per_afp > self.afp_pre_nms:
            raise ValueError(f"proposals_per_afp ({self.proposals_per_afp}) exceeds afp_pre_nms ({self.afp_pre_nms}), "
                             "the cells it keeps them from")
        if self.afp_trunk not in AFP_TRUNKS:
            raise ValueError(f"afp_trunk must be one of {AFP_TRUNKS}, got {self.afp_trunk!r}")
        if self.norm != "batch" and self.preset != "cpu":
            raise ValueError(f"norm {self.norm!r} is for the cpu preset; the paper preset keeps DenseNet's BatchNorm")
        if isinstance(self.val_every, bool) or not isinstance(self.val_every, int) or self.val_every < 0:
            raise ValueError(f"val_every must be an integer >= 0, got {self.val_every!r}")
        if self.slices_per_lesion is not None and (isinstance(self.slices_per_lesion, bool)
                                                   or self.slices_per_lesion < 1):
            raise ValueError(f"slices_per_lesion must be >= 1 or null, got {self.slices_per_lesion!r}")
        if self.kernels not in ("fast", "exact"):
            raise ValueError(f"kernels must be fast or exact, got {self.kernels!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if not isinstance(self.volume_fraction, dict):
            raise ValueError(f"volume_fraction must map dataset -> fraction, got {self.volume_fraction!r}")
        for name, f in self.volume_fraction.items():
            if name not in self.datasets and name not in self.pool:
                raise ValueError(f"volume_fraction names {name!r}, not in datasets {self.datasets}")
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
                raise ValueError(f"volume_fraction of {name!r} must be in (0, 1], got {f!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def load_config_file(path: str | Path, section: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """A YAML or JSON file (optionally one top-level ``section`` of it, with ``overrides`` on top) -> TrainConfig."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read training config: {e}") from e
    if section is None and isinstance(data, dict) and isinstance(data.get("train"), dict):
        section = "train"  # a whole workflow config (config.yaml): its train: section, as the workflow passes it
    if section:
        if not isinstance(data, dict) or section not in data:
            raise ValueError(f"{path}: no section {section!r}")
        data = data[section]
    return config_from_mapping(data, str(path), overrides)


def load_config_json(text: str, overrides: dict | None = None) -> TrainConfig:
    """The training config given inline as JSON (the workflow passes Snakemake's `config["train"]` so)."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--config-json: not valid JSON: {e}") from None
    return config_from_mapping(data, "--config-json", overrides)


def config_from_mapping(data, where: str, overrides: dict | None = None) -> TrainConfig:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: training config must be a mapping")

    data = deep_merge(data, overrides)  # a dotted --set key (volume_fraction.lits=1) keeps its siblings
    try:
        return TrainConfig.from_config(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e
