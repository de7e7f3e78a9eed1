"""Box-delta coding of the detection head (Faster R-CNN [28] parameterisation, torchvision convention), in torch."""
from __future__ import annotations

import math

import torch

WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_CLAMP = math.log(1000.0 / 16)


def encode(ref: torch.Tensor, gt: torch.Tensor, weights=WEIGHTS) -> torch.Tensor:
    """Deltas ``[N, 4]`` that move boxes ``ref [N, 4]`` onto ``gt [N, 4]`` (x1, y1, x2, y2)."""
    wx, wy, ww, wh = weights
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    rx, ry = ref[:, 0] + 0.5 * rw, ref[:, 1] + 0.5 * rh
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return torch.stack([wx * (gx - rx) / rw, wy * (gy - ry) / rh, ww * torch.log(gw / rw), wh * torch.log(gh / rh)], 1)


def decode(ref: torch.Tensor, deltas: torch.Tensor, weights=WEIGHTS) -> torch.Tensor:
    """Inverse of :func:`encode`."""
    wx, wy, ww, wh = weights
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    rx, ry = ref[:, 0] + 0.5 * rw, ref[:, 1] + 0.5 * rh
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw, dh = (deltas[:, 2] / ww).clamp(max=_CLAMP), (deltas[:, 3] / wh).clamp(max=_CLAMP)
    cx, cy, w, h = rx + dx * rw, ry + dy * rh, rw * torch.exp(dw), rh * torch.exp(dh)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], 1)
