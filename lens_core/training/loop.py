"""LENS training (paper Sec. VI-B): RAdam, lr / 10 steps, one dataset per batch, in the one training loop
(lens_core.training.engine): a checkpoint every epoch from which a killed run resumes with the same result as
an uninterrupted one."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from lens_core.deviations import training_deviations
from lens_core.errors import InputError
from lens_core.io import read_table
from lens_core.model.lens import LATER_ARGS, LENS, load_lens, save_lens, total_loss
from lens_core.preprocess.schema import prep_meta
from lens_core.runtime import autocast, resolve_device
from lens_core.training import engine
from lens_core.training.config import TrainConfig
from lens_core.training.curves import plot_losses, plot_val_curve, write_loss_table, write_val_curve
from lens_core.training.data import SliceReader, build_index, load_batch
from lens_core.training.sampler import DatasetHomogeneousSampler
from lens_core.training.validation import ValidationSet

log = logging.getLogger(__name__)


def build_model(cfg: TrainConfig) -> tuple[LENS, dict]:
    meta = {
        "datasets": list(cfg.datasets), "preset": cfg.preset, "n_slices": cfg.slices,
        "fc_dim": cfg.fc_dim, "rois_per_image": cfg.rois_per_image,
        "fuse_experts": list(cfg.fuse_experts or cfg.datasets), "config": cfg.to_dict(),
        **{k: getattr(cfg, k) for k in LATER_ARGS},
    }
    return LENS(cfg.datasets, cfg.preset, cfg.slices, cfg.weights_path, cfg.fc_dim, cfg.rois_per_image,
                kernels=cfg.kernels, **{k: getattr(cfg, k) for k in LATER_ARGS}), meta


def make_optimizer(model: torch.nn.Module, lr: float, kernels: str = "fast") -> torch.optim.Optimizer:
    """RAdam [57] (Sec. VI-B); with the fast kernels in its multi-tensor form, one update over all parameters
    instead of a Python loop of small ones (~9 % of a CPU training step; the same update up to rounding)."""
    return torch.optim.RAdam(model.parameters(), lr=lr, foreach=kernels == "fast")


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup from 1/10 of the lr to the full lr over ``warmup_steps`` optimizer steps."""
    if step >= warmup_steps:
        return 1.0
    return 0.1 + 0.9 * step / warmup_steps


def input_fingerprint(cfg: TrainConfig, prep_dir: Path, labels: Path | None) -> dict[str, str]:
    """sha256 of the tables that define the training samples: each dataset's volumes and lesions tables and
    the round-2 label table. A checkpoint resumes only onto the same inputs: after a mining step reruns,
    round 2 must train on the new labels, not continue the old ones. (The images are not hashed: re-running
    preprocessing rewrites the tables too.)"""
    paths = {f"{d}/{n}": Path(prep_dir) / d / n for d in [*cfg.datasets, *cfg.pool]
             for n in ("volumes.parquet", "lesions.parquet")}
    if labels is not None:
        paths["labels"] = Path(labels)
    if cfg.init_from:
        paths["init_from"] = Path(cfg.init_from)
    return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in paths.items() if p.exists()}


def load_initial_weights(model: LENS, path: str | Path) -> None:
    """``train.init_from``: another run's lens.pt (round 2 from round 1) with the same experts and layers."""
    try:
        start, meta = load_lens(path)  # an InputError naming the file when it is not a LENS model file
    except InputError as e:
        raise ValueError(f"init_from: {e}") from e
    if meta["datasets"] != model.datasets:
        raise ValueError(f"{path}: init_from: its experts {meta['datasets']} are not this training's {model.datasets}")
    try:
        model.load_state_dict(start.state_dict())
    except RuntimeError as e:
        raise ValueError(f"{path}: init_from: other layers than this training's ({' '.join(str(e).split())[:200]})") \
            from e

class _LensTrainer:
    """LENS's epochs for :func:`lens_core.training.engine.run`: one dataset per batch, each epoch's batches
    (and their augmentation, ROI sampling) a function of (seed, epoch, batch); the learning curve's validation
    after every ``val_every`` epochs and the last."""

    def __init__(self, cfg, model, opt, sched, sampler, index, reader, dev, valset, meta):
        self.cfg, self.model, self.opt, self.sched, self.sampler = cfg, model, opt, sched, sampler
        self.index, self.reader, self.dev, self.valset, self.meta = index, reader, dev, valset, meta
        self.epochs = cfg.epochs
        self.steps = 0

    def batches(self, epoch):
        return self.sampler.plan(epoch)

    def step(self, epoch, b, batch_keys):
        cfg, model, opt, sampler, dev = self.cfg, self.model, self.opt, self.sampler, self.dev
        name, keys = batch_keys
        step = self.steps
        rng = sampler.rng(epoch, b, 1)
        batch = load_batch(keys, self.index[name], self.reader, cfg, model.stride, rng)
        gen = torch.Generator().manual_seed(int(sampler.rng(epoch, b, 2).integers(2**62)))
        with autocast(dev, cfg.precision):
            losses = model.losses(batch.images.to(dev), name, batch.afp.to(dev),
                                  [t.to(dev) for t in batch.targets], generator=gen)
        loss = total_loss(losses, cfg.lambda1, cfg.lambda2)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at epoch {epoch} batch {b} ({name}): "
                                     f"{ {k: float(v) for k, v in losses.items()} }")
        if cfg.warmup_steps and step <= cfg.warmup_steps:  # warmup on top of the epoch schedule (lr / 10 steps)
            scheduled = cfg.lr * 0.1 ** sum(epoch >= m for m in cfg.lr_steps)
            for g in opt.param_groups:
                g["lr"] = scheduled * warmup_factor(step, cfg.warmup_steps)
        opt.zero_grad(set_to_none=True)  # other datasets' AFP/expert layers keep grad None
        loss.backward()
        clip = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
        opt.step()
        self.steps += 1
        return {"epoch": epoch, "step": step, "dataset": name,
                **{k: float(v.detach()) for k, v in losses.items()}, "total": float(loss.detach()),
                "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm}

    def end_epoch(self, epoch, rows):
        self.sched.step()
        if rows:
            log.info("epoch %d: %s", epoch + 1,
                     pd.DataFrame(rows)[["center", "size", "class", "box", "total"]].mean().round(4).to_dict())
        if self.valset is None or not ((epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == self.cfg.epochs):
            return {}
        row = {"epoch": epoch + 1, "step": self.steps, **self.valset.average(self.model, self.meta["fuse_experts"],
                                                                              self.dev)}
        log.info("epoch %d: validation average sensitivity %.1f%%", epoch + 1, 100 * row["val_average"])
        return row

    def state_dict(self):
        return {**engine.optimizer_state(self.model, self.opt, self.sched), "steps": self.steps}

    def load_state_dict(self, state):
        engine.load_optimizer_state(state, self.model, self.opt, self.sched)
        self.steps = int(state["steps"])


def train(
    cfg: TrainConfig,
    prep_dir: str | Path,
    out_dir: str | Path,
    labels: str | Path | None = None,
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> Path:
    """Train LENS; writes ``lens.pt``, ``losses.parquet``, ``losses.png``, ``val_curve.parquet``/``.png`` (the
    learning curve, ``cfg.val_every``) in ``out_dir`` and returns the path of ``lens.pt``. ``checkpoint.pt`` (every epoch) lives only until then.

    ``on_step(epoch, batch)`` is called after every optimizer step (tests use it to kill a run).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    label_table = None
    if labels is not None:
        label_table = read_table(Path(labels), ["volume_id", "dataset", "z", "x1", "y1", "x2", "y2",
                                                "z1", "z2", "kind", "label_kind"])
    index = build_index(cfg, Path(prep_dir), label_table)
    for name, ds in index.items():
        if not ds.lesion_slices:
            raise ValueError(f"{Path(prep_dir) / name}: no training lesions with label_kind in {cfg.gt_kinds}")
    sampler = DatasetHomogeneousSampler(index, cfg.batch_size, cfg.pos_neg_ratio, cfg.slices_per_lesion, cfg.seed,
                                        cfg.steps_per_epoch)

    torch.manual_seed(cfg.seed)  # the initial weights
    model, meta = build_model(cfg)
    if cfg.init_from:
        load_initial_weights(model, cfg.init_from)
    # the preprocessing the model was trained at: `lens detect` resamples a new scan the same way
    meta["prep"] = prep_meta(Path(prep_dir) / cfg.datasets[0])
    meta["deviations"] = training_deviations(cfg.to_dict(), meta["prep"],
                                             round2=labels is not None)
    model.to(dev).train()
    opt = make_optimizer(model, cfg.lr, cfg.kernels)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.lr_steps), gamma=0.1)
    valset = ValidationSet(Path(prep_dir), cfg.datasets[0]) if cfg.val_every else None
    if valset is not None and not valset:
        log.warning("%s: no validation volumes with 3D boxes: no learning curve", Path(prep_dir) / cfg.datasets[0])
        valset = None
    ckpt_path = out / "checkpoint.pt"
    fingerprint = {"training config": cfg.to_dict(),
                   "input tables": input_fingerprint(cfg, Path(prep_dir), Path(labels) if labels is not None else None)}
    trainer = _LensTrainer(cfg, model, opt, sched, sampler, index, SliceReader(cfg.slices), dev, valset, meta)
    try:
        rows, val_rows = engine.run(trainer, checkpoint=ckpt_path, fingerprint=fingerprint, resume=resume,
                                    progress=progress, desc="epoch", on_step=on_step)
    finally:
        trainer.reader.close()
    val_rows = [r for r in val_rows if r]  # epochs without a validation score have an empty row
    model_path = out / "lens.pt"
    df = write_loss_table(rows, out / "losses.parquet")
    plot_losses(df, out / "losses.png")
    # the learning curve (empty without val_every): the validation score by epoch, to choose the epochs on
    plot_val_curve(write_val_curve(val_rows, out / "val_curve.parquet"), out / "val_curve.png",
                   f"{'+'.join(cfg.datasets)}, seed {cfg.seed}" + ("" if val_rows else ": not scored (val_every 0)"))
    save_lens(model_path, model, meta)  # last: a lens.pt means the curves beside it are of its run
    # a finished run leaves no checkpoint: a forced rerun (say, after a code change) must train, not
    # "resume" at the last epoch and write the old weights again
    ckpt_path.unlink(missing_ok=True)
    return model_path
