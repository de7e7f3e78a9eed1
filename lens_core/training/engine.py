"""One training loop for the pipeline's three networks: LENS (Sec. VI-B), the FPR (Sec. IV-D) and the lesion
encoder of intra-patient matching (Sec. V-B). A network's training is a :class:`Trainer` (its batches, its
step, what ends an epoch, its state); :func:`run` drives it, with what every training here gets:

* a progress bar per epoch;
* a checkpoint after every epoch (atomic), from which a killed run resumes to the same bytes as a run that was
  never killed: the trainer's state (weights, optimizer, schedule, its own random streams) and torch's global
  random state are saved, and each epoch's batches are a function of (seed, epoch);
* a checkpoint of other settings or other inputs (its ``fingerprint``) is not resumed: that run trains anew;
* loss rows per step and per epoch, returned for the trainer's curves.

Checkpoints are read with ``weights_only=True`` and hold plain data: tensors, numbers, strings, lists, dicts.
"""
from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from lens_core.io import atomic_path

log = logging.getLogger(__name__)


class Trainer(Protocol):
    epochs: int

    def batches(self, epoch: int) -> Iterable:
        """The epoch's batches in order: a function of (seed, epoch) alone, so a resumed epoch replays."""

    def step(self, epoch: int, index: int, batch) -> dict | None:
        """One optimizer step on ``batch``; its loss row (floats), or None for a skipped batch."""

    def end_epoch(self, epoch: int, rows: list[dict]) -> dict:
        """After the epoch's steps (``rows``: their loss rows): the schedule, a validation; the epoch's row."""

    def state_dict(self) -> dict:
        """Everything the next epoch depends on: weights, optimizer, schedule, random streams of its own."""

    def load_state_dict(self, state: dict) -> None:
        ...


KEYS = ("trainer", "epoch", "steps", "epochs", "fingerprint", "torch_rng")


def load_checkpoint(path: Path) -> dict | None:
    """A checkpoint written by :func:`run`; None for a readable file of another format (an older release's
    checkpoint: not resumed, like one of other settings); an unreadable file is a one-line ValueError naming it."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:  # a truncated file is an OSError
        raise ValueError(f"{path}: cannot resume: {' '.join(str(e).split())[:300]}; remove it to train from "
                         f"scratch") from e
    return ckpt if isinstance(ckpt, dict) and all(k in ckpt for k in KEYS) else None


def run(trainer: Trainer, *, checkpoint: Path | None, fingerprint: dict, resume: bool = False,
        progress: bool = False, desc: str = "epoch", on_step: Callable[[int, int], None] | None = None
        ) -> tuple[list[dict], list[dict]]:
    """Train ``trainer`` for its epochs; returns (step rows, epoch rows). ``checkpoint``: the file written after
    every epoch (None: none), resumed from when ``resume`` and its fingerprint equals ``fingerprint``; the caller
    removes it once the trained model is written. ``on_step(epoch, index)`` after every batch (tests kill there)."""
    steps: list[dict] = []
    epochs: list[dict] = []
    start = 0
    if checkpoint is not None and resume and Path(checkpoint).exists():
        ckpt = load_checkpoint(Path(checkpoint))
        if ckpt is None:
            log.warning("%s: not resumed (a checkpoint of another format, e.g. an older release's); training from "
                        "scratch", checkpoint)
        elif ckpt["fingerprint"] != fingerprint:
            # Snakemake always passes --resume: a checkpoint of other settings or inputs is another training
            other = [k for k in fingerprint if ckpt["fingerprint"].get(k) != fingerprint[k]] or ["settings"]
            log.warning("%s: not resumed (other %s); training from scratch", checkpoint, " and ".join(other))
        else:
            try:
                trainer.load_state_dict(ckpt["trainer"])
            except (KeyError, RuntimeError, ValueError) as e:
                raise ValueError(f"{checkpoint}: cannot resume: {e}") from e
            torch.set_rng_state(ckpt["torch_rng"])
            start, steps, epochs = int(ckpt["epoch"]), [dict(r) for r in ckpt["steps"]], [dict(r) for r in ckpt["epochs"]]
            log.info("resuming from %s at epoch %d", checkpoint, start)
    for epoch in range(start, trainer.epochs):
        rows = []
        bar = tqdm(trainer.batches(epoch), desc=f"{desc} {epoch + 1}/{trainer.epochs}", disable=not progress,
                   leave=False)
        for index, batch in enumerate(bar):
            row = trainer.step(epoch, index, batch)
            if row is not None:
                rows.append(row)
                if "loss" in row or "total" in row:  # LENS's loss row names its sum "total"
                    bar.set_postfix(loss=f"{row.get('loss', row.get('total')):.3f}")
            if on_step is not None:
                on_step(epoch, index)
        steps += rows
        epochs.append(trainer.end_epoch(epoch, rows))
        if checkpoint is not None:
            state = {"trainer": trainer.state_dict(), "torch_rng": torch.get_rng_state(), "epoch": epoch + 1,
                     "steps": steps, "epochs": epochs, "fingerprint": fingerprint}
            with atomic_path(Path(checkpoint)) as tmp:
                torch.save(state, tmp)
    return steps, epochs


def optimizer_state(model, opt, sched) -> dict:
    """The state every trainer saves: weights, optimizer and schedule (a trainer adds its own streams)."""
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}


def load_optimizer_state(state: dict, model, opt, sched) -> None:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])


def checkpoint_beside(model_path: str | Path) -> Path:
    """Where a training writing ``model_path`` keeps its checkpoint: ``<stem>.checkpoint.pt`` beside it."""
    p = Path(model_path)
    return p.with_name(f"{p.stem}.checkpoint.pt")
