"""The LENS training loop (paper Sec. VI-B): RAdam, lr / 10 steps, one dataset per batch, a
checkpoint every epoch from which a killed run resumes with the same result as an uninterrupted one."""
from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from tqdm import tqdm

from lens_core.deviations import training_deviations
from lens_core.errors import InputError
from lens_core.io import atomic_path, read_table
from lens_core.model.lens import LENS, load_lens, save_lens, total_loss
from lens_core.preprocess.schema import prep_meta
from lens_core.runtime import autocast, resolve_device
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
        "fuse_experts": list(cfg.fuse_experts or cfg.datasets), "config": cfg.to_dict(), "norm": cfg.norm,
    }
    return LENS(cfg.datasets, cfg.preset, cfg.slices, cfg.weights_path, cfg.fc_dim, cfg.rois_per_image,
                kernels=cfg.kernels, norm=cfg.norm), meta


def make_optimizer(model: torch.nn.Module, lr: float, kernels: str = "fast") -> torch.optim.Optimizer:
    """RAdam [57] (Sec. VI-B); with the fast kernels in its multi-tensor form, one update over all parameters
    instead of a Python loop of small ones (~9 % of a CPU training step; the same update up to rounding)."""
    return torch.optim.RAdam(model.parameters(), lr=lr, foreach=kernels == "fast")


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup from 1/10 of the lr to the full lr over ``warmup_steps`` optimizer steps."""
    if step >= warmup_steps:
        return 1.0
    return 0.1 + 0.9 * step / warmup_steps


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


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


def _load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:  # a truncated file is an OSError
        raise ValueError(f"{path}: cannot resume: {' '.join(str(e).split())[:300]}; remove it to train from "
                         f"scratch") from e
    missing = [k for k in ("model", "optimizer", "scheduler", "sampler", "losses", "config") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: cannot resume: not a training checkpoint (no {missing})")
    return ckpt


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
    rows: list[dict] = []
    val_rows: list[dict] = []
    valset = ValidationSet(Path(prep_dir), cfg.datasets[0]) if cfg.val_every else None
    if valset is not None and not valset:
        log.warning("%s: no validation volumes with 3D boxes: no learning curve", Path(prep_dir) / cfg.datasets[0])
        valset = None
    start_epoch = 0
    ckpt_path = out / "checkpoint.pt"
    inputs = input_fingerprint(cfg, Path(prep_dir), Path(labels) if labels is not None else None)
    if resume and ckpt_path.exists():
        ckpt = _load_checkpoint(ckpt_path)
        # Snakemake always passes --resume: a checkpoint of another config or other inputs is a finished or
        # killed run of a different training, so train from scratch rather than continue (or fail) on it
        stale = [what for what, same in (("training config", ckpt["config"] == cfg.to_dict()),
                                         ("input tables", ckpt.get("inputs") == inputs)) if not same]
        if stale:
            log.warning("%s: not resumed (other %s); training from scratch", ckpt_path,
                        " and ".join(stale))
        else:
            try:
                model.load_state_dict(ckpt["model"])
                opt.load_state_dict(ckpt["optimizer"])
                sched.load_state_dict(ckpt["scheduler"])
            except (KeyError, RuntimeError, ValueError) as e:
                raise ValueError(f"{ckpt_path}: cannot resume: {e}") from e
            start_epoch = ckpt["sampler"]["epoch"]
            rows = [dict(r) for r in ckpt["losses"]]
            val_rows = [dict(r) for r in ckpt.get("val_curve", [])]
            log.info("resuming %s at epoch %d", out, start_epoch)

    reader = SliceReader(cfg.slices)
    step = len(rows)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            plan = sampler.plan(epoch)
            bar = tqdm(plan, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
            for b, (name, keys) in enumerate(bar):
                rng = sampler.rng(epoch, b, 1)
                batch = load_batch(keys, index[name], reader, cfg, model.stride, rng)
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
                row = {"epoch": epoch, "step": step, "dataset": name,
                       **{k: float(v.detach()) for k, v in losses.items()}, "total": float(loss.detach()),
                       "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm}
                rows.append(row)
                step += 1
                bar.set_postfix(loss=f"{row['total']:.3f}", ds=name)
                if on_step is not None:
                    on_step(epoch, b)
            sched.step()
            if valset is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
                val_rows.append({"epoch": epoch + 1, "step": step,
                                 **valset.average(model, meta["fuse_experts"], dev)})
                log.info("epoch %d: validation average sensitivity %.1f%%", epoch + 1,
                         100 * val_rows[-1]["val_average"])
            _atomic_save({
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "sampler": sampler.state_dict(epoch + 1, 0), "losses": rows, "config": cfg.to_dict(),
                "inputs": inputs, "val_curve": val_rows,
            }, ckpt_path)
            ep = pd.DataFrame([r for r in rows if r["epoch"] == epoch])
            if len(ep):
                log.info("epoch %d: %s", epoch + 1, ep[["center", "size", "class", "box", "total"]].mean().round(4).to_dict())
    finally:
        reader.close()
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
