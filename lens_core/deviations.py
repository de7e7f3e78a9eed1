"""Where a run departs from the paper: every such setting is a named config.yaml key, listed here once with
the paper's value and the reason. docs/deviations.md shows this registry as a table (a test keeps the two and
config.yaml in step), and the trained models and proposal tables record the deviations in effect for them
(`in_effect`), so a number can always be traced to the settings that produced it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Deviation:
    key: str  # dotted config.yaml key: section.name
    paper: object  # the paper's setting (None: the paper has no such step or threshold)
    reason: str

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]


REGISTRY: tuple[Deviation, ...] = (
    Deviation("corpus.builtin", False,
              "no public data in CI: a synthetic corpus shaped like DeepLesion, LUNA16, LiTS and NIH-LN stands in "
              "(set false and point datasets.*.root at the releases)"),
    Deviation("preprocess.pixel_mm", 0.8, "coarser in-plane sampling so the pipeline runs in minutes on two cores"),
    Deviation("preprocess.slice_mm", 2.0, "coarser slice sampling, for the same reason"),
    Deviation("preprocess.storage", "float32",
              "the paper rescales to floating-point numbers in [0, 255]; uint8 rounds them to whole levels (16 HU), "
              "float16 to 1-2 HU: smaller files and reads"),
    Deviation("preprocess.deeplesion_box_pad_px", 5,
              "the release pads the RECIST extent by 5 px (~4 mm at 0.8 mm pixels); at the built-in corpus's "
              "~2.3 mm pixels 5 px would outgrow most lesions, so the tight extent is used"),
    Deviation("train.preset", "paper",
              "the paper's backbone is an ImageNet DenseNet-121; the cpu preset is a small network trained from "
              "scratch with the same structure (AFPs, shared FCs, experts)"),
    Deviation("train.paper_from_scratch", False,
              "the paper preset starts from ImageNet weights; true trains it from scratch where no local "
              "DenseNet-121 file is to be had (without weights_path and without this key it is an error)"),
    Deviation("train.slices", 9, "6 slices = two groups of 3: the 3D context fusion runs, one group fewer to fit CPU time"),
    Deviation("train.steps_per_epoch", None,
              "the paper's epoch is a full pass over every dataset (the default); a number caps an epoch at that "
              "many batches, splitting one budget between the datasets: for smoke tests only"),
    Deviation("train.slices_per_lesion", 1,
              "the paper samples one positive slice per 3D lesion per epoch (Table IV text); null samples every "
              "slice of a 3D or mined lesion as its own positive"),
    Deviation("train.norm", "batch",
              "the paper's backbone has BatchNorm (from ImageNet); group (GroupNorm) is an option for the "
              "from-scratch cpu preset, whose one-dataset batches give BatchNorm dataset-mixed running statistics"),
    Deviation("train.afp_trunk", "per_dataset",
              "each dataset's AFP is its own network in the paper; shared gives the AFPs one 3x3 layer per branch "
              "(each keeps its own 1x1 output layer, as each expert keeps its own output layers on the shared FCs): "
              "part of the lean CPU model, 2.40x faster training steps and 5.18x faster proposals than d879e6b "
              "(benchmarks/lens_speed.py --compare), validation as high over three seeds "
              "(docs/speed.md, \"The lean model\")"),
    Deviation("train.fpn_channels", None,
              "null keeps the preset's FPN width (the paper preset's 256; the cpu preset's 64 is already its own); "
              "32 is the lean CPU model's (docs/speed.md, \"The lean model\")"),
    Deviation("train.batch_size", 4, "small crops instead of whole slices: more images per optimizer step"),
    Deviation("train.crop_size", None,
              "whole slices in the paper; random crops that keep a lesion whole make CPU steps cheap"),
    Deviation("train.epochs", 8, "from scratch on a small corpus the cpu preset needs many short epochs"),
    Deviation("train.lr", 0.0001, "from scratch (no ImageNet weights) a larger learning rate trains in the budget"),
    Deviation("train.lr_steps", [4, 6], "lr / 10 late in the longer run (the paper: after 1/2 and 3/4 of it)"),
    Deviation("train.warmup_steps", 0, "training from scratch at the larger learning rate starts with a linear warmup"),
    Deviation("train.grad_clip", None,
              "round 2 (ignored uncertain regions) diverged without clipping: one batch with very few centre "
              "pixels can throw the shared backbone off"),
    Deviation("train.unlabeled_slices", False,
              "the paper's round 1 trains on labelled slices only; true samples DeepLesion's unlabelled slices as "
              "negatives already in round 1 (round 2 follows mining.unlabeled_slices)"),
    Deviation("propose.score", "head",
              "Sec. IV-B scores a proposal by its expert's classifier; two_stage (sqrt(head x AFP centerness)) is "
              "an option with its own ablation row"),
    Deviation("mining.unlabeled_slices", True,
              "round 2 adds DeepLesion's unlabelled slices with their uncertain regions ignored (Table IV, "
              "'+ Unlabeled'); false is the ablation without them"),
    Deviation("mining.round2_init", "scratch",
              "the paper retrains LENS on the mined labels (Sec. V-C) without naming an initialisation, read as "
              "round 1's start; round1 starts round 2 from the experiment's round-1 model"),
    Deviation("mining.tracklet_min_score", 0.0,
              "the paper groups every 2D proposal into tracklets (0: no threshold, the default); a threshold "
              "may only be chosen on the validation split's sensitivity (snakemake fig5), never on the audit"),
    Deviation("mining.extent_ratio", None,
              "a clinical prior the paper does not use: no propagation farther from the key slice than this "
              "fraction of the lesion's long axis"),
    Deviation("mining.delta", 0.15,
              "the paper's value, on the stand-in embedding L2-normalised as LesaNNet's (distances in [0, 2]); "
              "snakemake fig5 sweeps it on the validation split"),
    Deviation("mining.embedding", "LesaNNet",
              "LesaNNet is not available; a small embedding learned on the corpus stands in"),
    Deviation("fpr.preset", "paper",
              "the paper inflates an ImageNet ResNet-18; the cpu preset is a narrower one on smaller patches, from scratch"),
    Deviation("fpr.epochs", 6,
              "from scratch the cpu preset's FPR stayed near the chance loss in 6 epochs; 18 reach its held-out "
              "AUC's plateau (the lr / 10 steps keep the paper's 1/3 and 2/3)"),
    Deviation("fpr.extra_datasets", [],
              "DeepLesion's training proposals alone give too few distinct true lesions, which the FPR memorises; "
              "the single-type sets' round-2 proposals add TP and FP samples"),
)

BY_KEY = {d.key: d for d in REGISTRY}


def same(a, b) -> bool:
    """Config values compared as YAML reads them (1e-4 == 0.0001, a tuple == its list)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def in_effect(settings: dict[str, dict]) -> dict[str, dict]:
    """The registry's deviations among ``settings`` (section -> {name: value}, e.g. {"train": cfg.to_dict()}):
    ``{key: {"value": ours, "paper": the paper's}}`` for every registered key given whose value is not the
    paper's. Keys a section does not give are not judged."""
    out = {}
    for d in REGISTRY:
        values = settings.get(d.section) or {}
        if d.name in values and not same(values[d.name], d.paper):
            out[d.key] = {"value": plain(values[d.name]), "paper": plain(d.paper)}
    return out


def plain(value):
    """A JSON-able copy (tuples -> lists) for model metadata."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def training_deviations(cfg_dict: dict, prep: dict | None = None, round2: bool = False) -> dict[str, dict]:
    """Deviations of one `lens train` run: its training config and its preprocessing (``prep``: pixel_mm /
    slice_mm recorded in volumes.h5). ``unlabeled_slices`` is judged against round 1's paper value, or
    round 2's (mining.unlabeled_slices) when the run trains on mined labels."""
    train = {k: v for k, v in cfg_dict.items() if not (round2 and k == "unlabeled_slices")}
    settings = {"train": train, "preprocess": dict(prep or {})}
    if round2:  # a round-2 model started from other weights is mining.round2_init: round1
        settings["mining"] = {"unlabeled_slices": cfg_dict.get("unlabeled_slices"),
                              "round2_init": "round1" if cfg_dict.get("init_from") else "scratch"}
    return in_effect(settings)


def fmt(value) -> str:
    """A value as config.yaml writes it (docs table cells)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def markdown_table(config: dict) -> str:
    """The registry as docs/deviations.md's table, with ``config``'s (config.yaml's) values."""
    lines = ["| config key | paper | this repository's default | default run deviates | reason |",
             "|---|---|---|---|---|"]
    for d in REGISTRY:
        ours = lookup(config, d.key)
        lines.append(f"| `{d.key}` | {fmt(d.paper)} | {fmt(ours)} | {'yes' if not same(ours, d.paper) else 'no'} "
                     f"| {d.reason} |")
    return "\n".join(lines) + "\n"


def lookup(config: dict, key: str):
    """config[section][name] of a dotted key; KeyError names the key."""
    section, name = key.split(".", 1)
    try:
        return config[section][name]
    except (KeyError, TypeError):
        raise KeyError(f"config.yaml has no {key}") from None
