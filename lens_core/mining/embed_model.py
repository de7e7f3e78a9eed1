"""The appearance half of the lesion embedding (paper Sec. V-B stand-in for LesaNNet [55]).

A small CNN maps a context-padded crop of a 2D lesion box (3 adjacent slices as channels, resized to
``CROP_PX`` x ``CROP_PX``) to a unit vector. It is trained self-supervised with NT-Xent (SimCLR's
contrastive loss): two views of the same *group* are positives, views of other groups in the batch
negatives. A group is what a user knows to be one lesion without any extra labels: a tracklet (its
boxes on different slices, Sec. V-A) or an annotated lesion under augmentation (size change as
between follow-up studies, shift, contrast/noise as between series). Never the hidden truth.

Shapes: patches ``[N, 3, PATCH_PX, PATCH_PX]`` float32 in [0, 1] (the box centred, spanning
``PATCH_PX / CROP_PX`` times the crop side, so augmentation can shift and rescale inside them);
the encoder reads ``[N, 3, CROP_PX, CROP_PX]`` crops and returns ``[N, dim]`` L2-normalised.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from lens_core.io import atomic_path
from lens_core.training import engine

CROP_PX = 32
PATCH_PX = 64  # a patch spans twice the crop: room for the shift/scale augmentation


class LesionEncoder(nn.Module):
    """(Conv-BN-ReLU-pool) x 3, global average pool, linear head; output L2-normalised."""

    def __init__(self, dim: int = 32, width: int = 16):
        super().__init__()
        self.dim, self.width = dim, width

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, width // 2), block(width // 2, width), block(width, 2 * width))
        self.head = nn.Sequential(nn.Linear(2 * width, 2 * width), nn.ReLU(inplace=True), nn.Linear(2 * width, dim))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """crops [N, 3, CROP_PX, CROP_PX] in [0, 1] -> [N, dim] unit vectors."""
        x = self.features((crops - 0.5) / 0.25)  # [N, 2w, 4, 4]
        return F.normalize(self.head(x.mean(dim=(2, 3))), dim=1)


def centre_crops(patches: torch.Tensor, out_px: int = CROP_PX) -> torch.Tensor:
    """The un-augmented crop of each patch (its central half): [N, 3, P, P] -> [N, 3, out, out]."""
    p = patches.shape[-1]
    q = p / 4.0
    boxes = torch.tensor([[q, q, p - q, p - q]], dtype=patches.dtype).expand(len(patches), 4)
    return _crop(patches, boxes, out_px)


def _crop(patches: torch.Tensor, boxes: torch.Tensor, out_px: int) -> torch.Tensor:
    rois = torch.cat([torch.arange(len(patches), dtype=patches.dtype)[:, None], boxes], dim=1)
    return roi_align(patches, rois, output_size=out_px, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def augment(patches: torch.Tensor, gen: torch.Generator, out_px: int = CROP_PX, scale: float = 0.25,
            shift: float = 0.1, contrast: float = 0.2, brightness: float = 0.06, noise: float = 0.04) -> torch.Tensor:
    """A random view of each patch: crop rescaled by up to +-scale (lesions grow or shrink ~25% between
    studies), shifted by up to +-shift of the crop side (box jitter), intensity x (1 +- contrast)
    + (+-brightness) and Gaussian noise up to ``noise`` (series differ in contrast phase and noise)."""
    n, _, p, _ = patches.shape
    u = lambda *s: torch.rand(*s, generator=gen) * 2 - 1  # noqa: E731  uniform [-1, 1)
    half = (p / 4.0) * (1 + scale * u(n))
    cx = p / 2.0 + shift * (p / 2.0) * u(n)
    cy = p / 2.0 + shift * (p / 2.0) * u(n)
    boxes = torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1)
    crops = _crop(patches, boxes, out_px)
    crops = crops * (1 + contrast * u(n, 1, 1, 1)) + brightness * u(n, 1, 1, 1)
    crops = crops + noise * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(crops.shape, generator=gen)
    return crops


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """NT-Xent (SimCLR) over 2B unit vectors: row i's positive is its other view.

    exclude: bool [B, B], True where item j must not serve as a negative of item i (unknown pairs:
    two groups of one patient in different volumes may be the same lesion instance, Sec. V-B).
    """
    b = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)  # [2B, d]
    sim = z @ z.T / temperature  # [2B, 2B]
    mask = torch.eye(2 * b, dtype=torch.bool)
    if exclude is not None:
        ex = exclude.repeat(2, 2) & ~torch.eye(b, dtype=torch.bool).repeat(2, 2)
        mask = mask | ex
    sim = sim.masked_fill(mask, float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return F.cross_entropy(sim, target)


@dataclass
class EncoderTraining:
    """Settings of :func:`train_encoder` (kept with the weights and in embeddings.h5's attributes)."""

    dim: int = 32
    width: int = 16
    steps: int = 300
    batch: int = 64
    lr: float = 3e-3
    temperature: float = 0.1
    seed: int = 0
    threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def train_encoder(patches: np.ndarray, group: np.ndarray, patient: np.ndarray, volume: np.ndarray,
                  cfg: EncoderTraining = EncoderTraining(), log=None, checkpoint: Path | None = None,
                  resume: bool = False, progress: bool = False, on_step=None) -> tuple[LesionEncoder, list[dict]]:
    """Train a :class:`LesionEncoder` with NT-Xent on grouped patches.

    patches: uint8 or float [N, 3, P, P]; group: int [N] (same value = same lesion, e.g. a tracklet);
    patient, volume: int [N] codes, used only to keep same-patient/other-volume groups out of each
    other's negatives. Each step draws ``batch`` distinct groups, two members of each (the same one
    twice for a single-box group), and augments both views independently. Returns the model (eval
    mode) and a per-step loss history. In the one training loop (lens_core.training.engine): a ``checkpoint``
    every CHECKPOINT_EVERY steps, from which ``resume`` continues a killed run to the same weights.
    """
    group = np.asarray(group)
    if not (len(patches) == len(group) == len(patient) == len(volume)):
        raise ValueError("patches, group, patient and volume must have one length")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    x = torch.as_tensor(np.asarray(patches), dtype=torch.float32)
    if np.asarray(patches).dtype == np.uint8:
        x = x / 255.0
    codes, inv = np.unique(group, return_inverse=True)
    members = np.split(np.argsort(inv, kind="stable"), np.cumsum(np.bincount(inv))[:-1])
    g_patient = np.asarray(patient)[[m[0] for m in members]]
    g_volume = np.asarray(volume)[[m[0] for m in members]]
    model = LesionEncoder(cfg.dim, cfg.width)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.1)
    b = min(cfg.batch, len(codes))
    trainer = _EncoderTrainer(model, opt, sched, x, members, g_patient, g_volume, b, rng, gen, cfg, log)
    fingerprint = {"config": cfg.to_dict(), "inputs": hashlib.sha256(b"".join(
        np.ascontiguousarray(a).tobytes() for a in (patches, group, patient, volume))).hexdigest()}
    model.train()
    try:
        history, _ = engine.run(trainer, checkpoint=checkpoint, fingerprint=fingerprint, resume=resume,
                                progress=progress, desc="encoder steps", on_step=on_step)
    finally:
        torch.set_num_threads(old_threads)
    model.eval()
    return model, history


CHECKPOINT_EVERY = 50  # the encoder's steps between checkpoints: its "epochs" in the training loop


class _EncoderTrainer:
    """The encoder's steps for :func:`lens_core.training.engine.run`, CHECKPOINT_EVERY to an epoch. Its random
    streams (numpy's for the draws, torch's for the augmentation) are part of its state."""

    def __init__(self, model, opt, sched, x, members, g_patient, g_volume, b, rng, gen, cfg, log):
        self.model, self.opt, self.sched, self.x, self.members = model, opt, sched, x, members
        self.g_patient, self.g_volume, self.b, self.rng, self.gen, self.cfg, self.log = \
            g_patient, g_volume, b, rng, gen, cfg, log
        self.epochs = -(-cfg.steps // CHECKPOINT_EVERY)
        self.t0 = time.perf_counter()

    def batches(self, epoch):
        return range(epoch * CHECKPOINT_EVERY, min((epoch + 1) * CHECKPOINT_EVERY, self.cfg.steps))

    def step(self, epoch, index, step):
        rng, b, cfg = self.rng, self.b, self.cfg
        gs = rng.choice(len(self.members), size=b, replace=False)
        i1 = np.empty(b, np.int64)
        i2 = np.empty(b, np.int64)
        for k, g in enumerate(gs):
            m = self.members[g]
            pick = rng.choice(len(m), size=2, replace=len(m) < 2)
            i1[k], i2[k] = m[pick[0]], m[pick[1]]
        exclude = torch.as_tensor((self.g_patient[gs][:, None] == self.g_patient[gs][None, :])
                                  & (self.g_volume[gs][:, None] != self.g_volume[gs][None, :]))
        z1 = self.model(augment(self.x[i1], self.gen))
        z2 = self.model(augment(self.x[i2], self.gen))
        loss = nt_xent(z1, z2, cfg.temperature, exclude)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        value = float(loss.detach())
        if self.log is not None and (step % 100 == 0 or step == cfg.steps - 1):
            self.log(f"encoder step {step}: loss {value:.3f} (chance {math.log(2 * b - 1):.3f})")
        return {"step": step, "loss": value, "seconds": time.perf_counter() - self.t0}

    def end_epoch(self, epoch, rows):
        return {"epoch": epoch, "loss": float(np.mean([r["loss"] for r in rows])) if rows else float("nan")}

    def state_dict(self):
        return {**engine.optimizer_state(self.model, self.opt, self.sched), "rng": self.rng.bit_generator.state,
                "generator": self.gen.get_state()}

    def load_state_dict(self, state):
        engine.load_optimizer_state(state, self.model, self.opt, self.sched)
        self.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["generator"])


@torch.no_grad()
def encode(model: LesionEncoder, patches: np.ndarray, batch: int = 512) -> np.ndarray:
    """Appearance embeddings float32 [N, dim] of the centre crops of uint8/float patches [N, 3, P, P]."""
    model.eval()
    out = []
    for s in range(0, len(patches), batch):
        x = torch.as_tensor(np.asarray(patches[s:s + batch]), dtype=torch.float32)
        if np.asarray(patches).dtype == np.uint8:
            x = x / 255.0
        out.append(model(centre_crops(x)).numpy())
    return np.concatenate(out, axis=0) if out else np.zeros((0, model.dim), np.float32)


def save_encoder(model: LesionEncoder, cfg: EncoderTraining, path) -> None:
    """Weights + settings (a plain dict of tensors and numbers: loadable with weights_only=True)."""
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "config": cfg.to_dict()}, tmp)


def load_encoder(path) -> tuple[LesionEncoder, EncoderTraining]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        cfg = EncoderTraining(**blob["config"])
        model = LesionEncoder(cfg.dim, cfg.width)
        model.load_state_dict(blob["state_dict"])
    except Exception as exc:  # noqa: BLE001 - name the file whatever went wrong
        raise ValueError(f"{path}: not a lesion-encoder checkpoint ({exc})") from exc
    model.eval()
    return model, cfg
