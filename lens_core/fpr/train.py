"""Training the FPR network (paper Sec. VI-B): TPs and FPs of round-2 LENS on the training set, 1:2
per epoch, focal loss, RAdam (paper: lr 2e-4, 6 epochs, / 10 after epochs 2 and 4, batch 32).

Deviations, both because DeepLesion-like training proposals of the built-in corpus hold ~60 TPs of
only ~19 distinct lesions (10 patients), which a network trained from scratch memorises (training
loss -> 0.03, held-out-patient AUC ~0.75; Eq. 4 then ranks worse than LENS alone):

* ``extra_sources``: the proposals of round-2 LENS on the training volumes of the single-type
  datasets (their labels are complete for their lesion type, so the TP / FP rule needs no mined
  or uncertain boxes there) add TPs and FPs (workflow: config ``fpr.extra_datasets``);
* augmentation beyond mirroring: random in-plane shifts and transposes (patches.py).
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata

from lens_core.deviations import in_effect
from lens_core.fpr.model import FprNet, focal_loss, get_preset, save_fpr
from lens_core.fpr.patches import BOX3D, PROPOSALS3D, augment, centre_window, crop_patches
from lens_core.fpr.samples import FP, THETA, THETA_FP, TP, epoch_samples, label_proposals
from lens_core.io import read_table, save_figure
from lens_core.preprocess.schema import prep_meta
from lens_core.runtime import resolve_device
from lens_core.training import engine
from lens_core.training.engine import checkpoint_beside

BOX2D = ["x1", "y1", "x2", "y2"]

log = logging.getLogger(__name__)


@dataclass
class FprTrainConfig:
    preset: str = "cpu"
    weights_path: str | None = None  # local torchvision resnet18 state_dict (paper preset only)
    epochs: int = 6
    lr: float = 2e-4
    lr_steps: list[int] = field(default_factory=lambda: [2, 4])  # lr / 10 after these epochs
    batch_size: int = 32
    fp_per_tp: float = 2.0
    # TP draws per epoch (None: every TP once, the paper); the cpu preset fixes it so that an epoch
    # has the same length whether the corpus yields 30 or 3000 TPs (few TPs repeat, flipped)
    tp_per_epoch: int | None = None
    theta: float = THETA
    theta_fp: float = THETA_FP
    focal_alpha: float = -1.0
    focal_gamma: float = 2.0
    augment: bool = True  # random in-plane shift, x / y / z mirroring, in-plane transpose (patches.py)
    shift: int = 4  # largest random in-plane shift, patch pixels (augment only)
    # FPs of train_fpr's extra_sources too, not only their TPs: with TPs alone the FPR learns to
    # tell the datasets apart (their volumes would be "lesion-like"), not lesions from the rest
    extra_fps: bool = True
    val_fraction: float = 0.0  # patients held out to measure AUC (0: train on all, the paper)
    seed: int = 0

    @classmethod
    def for_preset(cls, preset: str = "cpu", **overrides) -> "FprTrainConfig":
        """The paper's schedule for ``paper``; for ``cpu`` (from scratch, no ImageNet weights, a few
        hundred steps in total) a 10x larger lr and 400 TP draws an epoch, same structure."""
        base = {"preset": preset}
        if preset == "cpu":
            base.update(lr=2e-3, tp_per_epoch=400)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown FPR training options {unknown}; known: {sorted(known)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        if "epochs" in given and "lr_steps" not in given:  # the paper's schedule shape: / 10 after 1/3 and 2/3
            given["lr_steps"] = [round(given["epochs"] / 3), round(2 * given["epochs"] / 3)]
        cfg = cls(**{**base, **given})
        if cfg.epochs < 1:
            raise ValueError(f"FPR epochs must be >= 1, got {cfg.epochs}")
        return cfg


def chance_loss(tp_share: float, alpha: float = -1.0, gamma: float = 2.0) -> float:
    """The focal loss of the best constant prediction when ``tp_share`` of the samples are TPs: a loss at
    this level means the FPR has learnt nothing about the patches (issue 21: report the curve against it)."""
    p = np.linspace(1e-4, 1 - 1e-4, 9999)

    def focal(prob, y):
        pt = prob if y else 1 - prob
        w = (alpha if y else 1 - alpha) if alpha >= 0 else 1.0
        return -w * (1 - pt) ** gamma * np.log(pt)

    return float((tp_share * focal(p, 1) + (1 - tp_share) * focal(p, 0)).min())


def fpr_deviations(cfg: "FprTrainConfig", extra_datasets: list[str]) -> dict:
    """The FPR's departures from the paper (lens_core.deviations): its preset and the single-type datasets
    whose proposals add samples (the paper: DeepLesion's alone)."""
    return in_effect({"fpr": {"preset": cfg.preset, "epochs": cfg.epochs, "extra_datasets": extra_datasets}})


def volume_patches(h5_path: Path, boxes: pd.DataFrame, patch, context: float, margin: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches of every row of ``boxes`` (volume_id + 3D box), read volume by volume, in row order
    (``margin``: see crop_patches)."""
    d, h, w = patch
    out_p = torch.zeros(len(boxes), 1, d, h + 2 * margin, w + 2 * margin)
    out_b = torch.zeros(len(boxes), 6)
    if not len(boxes):
        return out_p, out_b
    try:
        f = h5py.File(h5_path, "r")
    except OSError as e:
        raise ValueError(f"{h5_path}: cannot open volumes file: {e}") from e
    with f:
        for vol, rows in pd.Series(np.arange(len(boxes))).groupby(boxes["volume_id"].to_numpy()).indices.items():
            try:
                image = f[vol]["image"][...]
            except KeyError:
                raise ValueError(f"{h5_path}: no volume {vol!r} (named by the proposal table)") from None
            p, b = crop_patches(image, boxes[BOX3D].to_numpy(np.float64)[rows], patch, context, margin)
            out_p[rows], out_b[rows] = p, b
    return out_p, out_b


def holdout_patients(patients: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for rows whose patient falls in the held-out ``fraction`` (a seeded hash: stable)."""
    if fraction <= 0:
        return np.zeros(len(patients), bool)
    u = {p: int(hashlib.sha1(f"{seed}:{p}".encode()).hexdigest()[:8], 16) / 16**8 for p in set(patients)}
    return np.array([u[p] < fraction for p in patients])


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks); nan without both classes."""
    y = np.asarray(y).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@torch.no_grad()
def predict(model: FprNet, patches: torch.Tensor, boxes: torch.Tensor, device, batch: int = 128) -> np.ndarray:
    """FPR probabilities of prepared patches."""
    model.eval()
    out = []
    for i in range(0, len(patches), batch):
        out.append(torch.sigmoid(model(patches[i:i + batch].to(device), boxes[i:i + batch].to(device))).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


@dataclass(frozen=True)
class SampleSource:
    """One dataset's training proposals and labels: ``prep_dir`` (its volumes), its 3D proposal table
    and its label table (rows: volume_id, z / z1..z2, x1..y2, label_kind)."""
    prep_dir: str | Path
    proposals3d: str | Path | pd.DataFrame
    labels: str | Path | pd.DataFrame


def source_samples(src: SampleSource, split: str | None, theta: float, theta_fp: float
                   ) -> tuple[pd.DataFrame, np.ndarray]:
    """The proposals of ``src`` on its ``split`` volumes (None: all) and their TP / FP / unused labels."""
    prep_dir = Path(src.prep_dir)
    props = src.proposals3d if isinstance(src.proposals3d, pd.DataFrame) else \
        read_table(src.proposals3d, PROPOSALS3D, "3D proposal table", boxes=BOX3D, empty_boxes=True)
    labs = src.labels if isinstance(src.labels, pd.DataFrame) else \
        read_table(src.labels, {"volume_id": "text", "z": "integer", **dict.fromkeys(BOX2D, "number"),
                                "label_kind": "text"}, "label table", boxes=BOX2D, empty_boxes=True)
    vols = read_table(prep_dir / "volumes.parquet", ["volume_id", "split"], "volume table")
    if split is not None:
        vols = vols[vols["split"] == split]
    props = props[props["volume_id"].isin(vols["volume_id"])].reset_index(drop=True)
    labs = labs[labs["volume_id"].isin(vols["volume_id"])]
    return props, label_proposals(props, labs, theta, theta_fp)


def train_fpr(
    cfg: FprTrainConfig,
    prep_dir: str | Path,
    proposals3d: str | Path | pd.DataFrame,
    labels: str | Path | pd.DataFrame,
    out: str | Path,
    device: str = "auto",
    split: str | None = "train",
    progress: bool = False,
    extra_sources: tuple[SampleSource, ...] | list[SampleSource] = (),
    resume: bool = False,
    on_step=None,
) -> dict:
    """Train the FPR network on the TPs / FPs of ``proposals3d`` and write it to ``out``.

    ``prep_dir`` is one dataset's preprocessed folder (the proposals' volumes); only its ``split``
    volumes are used (None: all). ``extra_sources``: other datasets whose labels are complete for
    their lesion type (the single-type datasets); their ``split`` proposals add TPs (and FPs when
    ``cfg.extra_fps``), see FprTrainConfig. Returns statistics (sample counts, seconds, held-out AUC
    when ``cfg.val_fraction > 0``, measured on held-out patients of the main dataset only), also
    stored in the model file's meta. A checkpoint after every epoch (``<out stem>.checkpoint.pt``, removed at the
    end) lets ``resume`` continue a killed run to the bytes of an uninterrupted one (lens_core.training.engine);
    ``on_step(epoch, batch)`` is called after every batch (tests kill there).
    """
    t_start = time.perf_counter()
    prep_dir = Path(prep_dir)
    dev = resolve_device(device)
    sources = [SampleSource(prep_dir, proposals3d, labels), *extra_sources]
    props, y = _all_samples(cfg, sources, split)
    main = props["_src"].to_numpy() == 0
    n_tp, n_fp = int((y == TP).sum()), int((y == FP).sum())
    log.info("FPR samples: %d TP, %d FP, %d unused of %d proposals", n_tp, n_fp, int((y < 0).sum()), len(y))
    patients = props["patient_id"].astype(str).to_numpy() if "patient_id" in props else props["volume_id"].to_numpy()
    # only the main dataset's patients are held out: the AUC is measured where the FPR is used
    held = holdout_patients(patients, cfg.val_fraction, cfg.seed) & main
    y_train = np.where(held, -1, y)
    train_tp, train_fp = int((y_train == TP).sum()), int((y_train == FP).sum())
    if not train_tp or not train_fp:
        hint = "" if train_tp else (
            f": no proposal of the training patients overlaps a label at key-slice IoU > {cfg.theta} (a detector "
            f"trained too briefly?); config fpr.enabled: false ends the default target at round 2")
        raise ValueError(f"{proposals3d if not isinstance(proposals3d, pd.DataFrame) else 'proposals'}: "
                         f"too few training samples ({train_tp} TP, {train_fp} FP) for the FPR network{hint}")

    # every epoch's samples first, so that only the patches some epoch uses are cropped
    plans = [epoch_samples(y_train, e, cfg.seed, cfg.fp_per_tp, cfg.tp_per_epoch) for e in range(cfg.epochs)]
    val_idx = np.flatnonzero(held & (y >= 0))
    need = np.unique(np.concatenate(plans + [val_idx]))
    preset = get_preset(cfg.preset)
    t = time.perf_counter()
    patches, boxes = _crop_patches(sources, props, need, preset, cfg.shift if cfg.augment else 0)
    slot = {int(i): k for k, i in enumerate(need)}
    crop_s = time.perf_counter() - t

    torch.manual_seed(cfg.seed)
    model = FprNet(preset, cfg.weights_path).to(dev).train()
    vi = torch.as_tensor([slot[int(j)] for j in val_idx], dtype=torch.long)
    val_patches = centre_window(patches[vi].float(), boxes[vi], preset.patch)
    chance = chance_loss(float(np.mean([(y[plan] == TP).mean() for plan in plans])), cfg.focal_alpha,
                         cfg.focal_gamma)
    trainer = _FprTrainer(cfg, model, plans, patches, boxes, slot, y, preset, dev,
                          val_patches if len(val_idx) else None, val_idx, chance)
    ckpt = checkpoint_beside(out)
    _, history = engine.run(trainer, checkpoint=ckpt, fingerprint=_fingerprint(cfg, sources, split), resume=resume,
                            progress=progress, desc="FPR epoch", on_step=on_step)
    if len(val_idx):  # the last epoch's held-out scores (a resume at the end has none yet)
        s_val = trainer.val_scores if trainer.val_scores is not None else predict(model, *val_patches, dev)
    stats = {"proposals": int(len(y)), "tp": n_tp, "fp": n_fp, "unused": int((y < 0).sum()),
             "main_tp": int((y[main] == TP).sum()), "main_fp": int((y[main] == FP).sum()),
             "train_tp": train_tp, "train_fp": train_fp,
             "crop_seconds": crop_s, "chance_loss": chance, "final_loss": history[-1]["loss"]}
    if len(val_idx):
        stats.update(_heldout_stats(y[val_idx] == TP, s_val,
                                    props["score"].to_numpy(np.float64)[val_idx] if "score" in props else None))
    stats["seconds"] = time.perf_counter() - t_start
    meta = {"config": asdict(cfg), "prep": prep_meta(prep_dir), "history": history, "stats": stats,
            "deviations": fpr_deviations(cfg, [Path(src.prep_dir).name for src in extra_sources])}
    plot_fpr_loss(history, Path(out).with_name(Path(out).stem + "_loss.png"))
    save_fpr(out, model, meta)  # last: an fpr.pt means the curve beside it is of its run
    ckpt.unlink(missing_ok=True)  # a finished run leaves no checkpoint to "resume" on a forced rerun
    log.info("FPR trained in %.1f s: %s", stats["seconds"], stats)
    return stats


def _all_samples(cfg: FprTrainConfig, sources: list[SampleSource], split: str | None
                 ) -> tuple[pd.DataFrame, np.ndarray]:
    """Every source's proposals (``_src``: its index; 0 = the main dataset) and their TP / FP / unused labels;
    the extra sources' FPs unused unless ``cfg.extra_fps``."""
    parts, ys = [], []
    for k, src in enumerate(sources):
        p, y_k = source_samples(src, split, cfg.theta, cfg.theta_fp)
        if k and not cfg.extra_fps:
            y_k = np.where(y_k == FP, -1, y_k)
        log.info("FPR samples of %s: %d TP, %d FP, %d unused of %d proposals", Path(src.prep_dir).name,
                 int((y_k == TP).sum()), int((y_k == FP).sum()), int((y_k < 0).sum()), len(y_k))
        cols = ["volume_id", *BOX3D] + [c for c in ("score", "patient_id") if c in p]
        parts.append(p[cols].assign(_src=k))
        ys.append(y_k)
    return pd.concat(parts, ignore_index=True), np.concatenate(ys).astype(np.int8)


def _crop_patches(sources: list[SampleSource], props: pd.DataFrame, need: np.ndarray, preset, margin: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The patches (float16, ``margin`` voxels of room for the shift augmentation) and boxes of rows ``need``."""
    d, h, w = preset.patch
    patches = torch.zeros(len(need), 1, d, h + 2 * margin, w + 2 * margin, dtype=torch.float16)
    boxes = torch.zeros(len(need), 6)
    src_of = props["_src"].to_numpy()[need]
    for k, src in enumerate(sources):
        rows = np.flatnonzero(src_of == k)
        p, b = volume_patches(Path(src.prep_dir) / "volumes.h5", props.iloc[need[rows]], preset.patch,
                              preset.context, margin)
        # held for the whole run: half the memory, ample precision for 8-bit images
        patches[rows], boxes[rows] = p.half(), b
    return patches, boxes


def _heldout_stats(is_tp: np.ndarray, s: np.ndarray, lens_score: np.ndarray | None) -> dict:
    """AUC and accuracy of the FPR's held-out scores ``s``; with the detector's scores, theirs and Eq. 4's."""
    stats = {"val_tp": int(is_tp.sum()), "val_fp": int((~is_tp).sum()), "val_auc": roc_auc(is_tp, s),
             "val_accuracy": float(((s >= 0.5) == is_tp).mean())}
    if lens_score is not None:
        stats["val_auc_lens"] = roc_auc(is_tp, lens_score)
        stats["val_auc_fused"] = roc_auc(is_tp, (lens_score + s) / 2)
    return stats


class _FprTrainer:
    """The FPR's epochs for :func:`lens_core.training.engine.run`: each epoch's TP / FP draws are fixed up front
    (``plans``), its augmentation stream is a function of (seed, epoch)."""

    def __init__(self, cfg, model, plans, patches, boxes, slot, y, preset, dev, val_patches, val_idx, chance):
        self.cfg, self.model, self.plans, self.patches, self.boxes = cfg, model, plans, patches, boxes
        self.slot, self.y, self.preset, self.dev = slot, y, preset, dev
        self.val_patches, self.val_idx, self.chance = val_patches, val_idx, chance
        self.epochs = cfg.epochs
        self.val_scores = None  # the held-out scores of the last epoch trained in this process
        self.opt = torch.optim.RAdam(model.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, milestones=list(cfg.lr_steps), gamma=0.1)

    def batches(self, epoch):
        self.model.train()
        self.rng = np.random.default_rng([self.cfg.seed, epoch, 1])
        plan = self.plans[epoch]
        return [plan[i:i + self.cfg.batch_size] for i in range(0, len(plan), self.cfg.batch_size)]

    def step(self, epoch, index, chunk):
        cfg = self.cfg
        idx = torch.as_tensor([self.slot[int(j)] for j in chunk])
        if len(idx) < 2:  # BatchNorm needs two samples
            return None
        if cfg.augment:
            p, b = augment(self.patches[idx].float(), self.boxes[idx], self.preset.patch, self.rng)
        else:
            p, b = self.patches[idx].float(), self.boxes[idx]
        target = torch.as_tensor(self.y[chunk] == TP, dtype=torch.float32)
        loss = focal_loss(self.model(p.to(self.dev), b.to(self.dev)), target.to(self.dev), cfg.focal_alpha,
                          cfg.focal_gamma)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite FPR loss at epoch {epoch} batch {index}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"epoch": epoch, "loss": float(loss.detach())}

    def end_epoch(self, epoch, rows):
        plan = self.plans[epoch]
        h = {"epoch": epoch, "loss": float(np.mean([r["loss"] for r in rows])) if rows else float("nan"),
             "chance_loss": self.chance, "lr": self.opt.param_groups[0]["lr"], "samples": int(len(plan))}
        if self.val_patches is not None:  # the held-out AUC after every epoch shows when the FPR starts to memorise
            self.val_scores = predict(self.model, *self.val_patches, self.dev)
            h["val_auc"] = roc_auc(self.y[self.val_idx] == TP, self.val_scores)
        log.info("FPR epoch %d: loss %.4f (chance %.4f; lr %.1e, %d samples)%s", epoch, h["loss"], self.chance,
                 h["lr"], len(plan), f", held-out AUC {h['val_auc']:.3f}" if "val_auc" in h else "")
        self.sched.step()
        return h

    def state_dict(self):
        return engine.optimizer_state(self.model, self.opt, self.sched)

    def load_state_dict(self, state):
        engine.load_optimizer_state(state, self.model, self.opt, self.sched)


def _fingerprint(cfg: FprTrainConfig, sources, split) -> dict:
    """What a checkpoint resumes onto: the settings and the samples' tables (sha256 of each file or table)."""
    def digest(x):
        if isinstance(x, pd.DataFrame):
            return hashlib.sha256(pd.util.hash_pandas_object(x, index=False).to_numpy().tobytes()).hexdigest()
        return hashlib.sha256(Path(x).read_bytes()).hexdigest()

    return {"config": asdict(cfg), "split": split,
            "sources": [[digest(s.proposals3d), digest(s.labels), digest(Path(s.prep_dir) / "volumes.parquet")]
                        for s in sources]}


def plot_fpr_loss(history: list[dict], path: Path) -> None:
    """The FPR's training loss per epoch against the chance level (:func:`chance_loss`)."""
    # lazy: matplotlib, for this plot only; importing the module leaves the backend alone
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on the cluster
    import matplotlib.pyplot as plt

    h = pd.DataFrame(history)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(h["epoch"] + 1, h["loss"], "o-", label="training loss")
    if "val_auc" in h:
        ax2 = ax.twinx()
        ax2.plot(h["epoch"] + 1, h["val_auc"], "s--", color="tab:green", label="held-out AUC")
        ax2.set_ylabel("held-out AUC")
    ax.axhline(h["chance_loss"].iloc[0], color="tab:red", ls=":", label="chance (best constant)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("focal loss")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
