"""ROIAlign [29] as two matrix products, for training on the CPU.

torchvision's ``roi_align`` (``aligned=True``, adaptive ``sampling_ratio=0``) averages bilinear samples on a
grid in each output bin. Bilinear interpolation and the grid are both separable in y and x, so every RoI's
output is ``Wy @ feature @ Wx.T`` with per-RoI weight matrices ``Wy [P, H]``, ``Wx [P, W]``: the same
function (equal up to float rounding, tests/test_model_lens.py compares them), whose backward is two more
matrix products. torchvision's CPU backward scatters every sample one by one and took ~20 % of a training
step on 48 px crops. On whole slices (inference, no gradient) torchvision's forward is the cheaper one: the
products then span the whole map for every RoI.
"""
from __future__ import annotations

import torch


def _axis_weights(lo: torch.Tensor, hi: torch.Tensor, size: int, bins: int, scale: float) -> torch.Tensor:
    """``[R, bins, size]``: row ``p`` averages the 1D bilinear weights of bin ``p``'s sample points along one
    axis, as torchvision's roi_align places them (aligned: -0.5 px; ceil(extent / bins) samples per bin;
    a sample outside [-1, size] counts as zero; one below 0 is read at 0, one past size - 1 at size - 1)."""
    start = lo * scale - 0.5
    extent = hi * scale - 0.5 - start
    width = extent / bins
    grid = torch.ceil(extent / bins).clamp(min=0).long()  # [R]
    g = int(grid.max()) if len(grid) else 0
    g = max(g, 1)
    p = torch.arange(bins, dtype=lo.dtype, device=lo.device)[None, :, None]
    i = torch.arange(g, dtype=lo.dtype, device=lo.device)[None, None, :]
    n = grid.clamp(min=1).to(lo.dtype)[:, None, None]
    pos = start[:, None, None] + p * width[:, None, None] + (i + 0.5) * width[:, None, None] / n  # [R, P, G]
    valid = (i < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(pos), pos - low.to(pos.dtype))
    w_low, w_high = (1.0 - frac) * valid, frac * valid
    out = torch.zeros(len(lo), bins, size, dtype=lo.dtype, device=lo.device)
    out.scatter_add_(2, low, w_low)
    out.scatter_add_(2, high, w_high)
    return out / n


def roi_align_separable(feat: torch.Tensor, rois: list[torch.Tensor], output_size: int,
                        spatial_scale: float) -> torch.Tensor:
    """``roi_align(feat, rois, output_size, spatial_scale, sampling_ratio=0, aligned=True)``:
    ``feat [B, C, H, W]``, per-image boxes ``[Ni, 4]`` (x1, y1, x2, y2) -> ``[sum Ni, C, P, P]``."""
    b, c, h, w = feat.shape
    out = []
    for i, r in enumerate(rois):
        if not len(r):
            out.append(feat.new_zeros(0, c, output_size, output_size))
            continue
        r = r.to(feat.dtype)
        wy = _axis_weights(r[:, 1], r[:, 3], h, output_size, spatial_scale)  # [R, P, H]
        wx = _axis_weights(r[:, 0], r[:, 2], w, output_size, spatial_scale)  # [R, Q, W]
        rows = (wy.reshape(-1, h) @ feat[i].transpose(0, 1).reshape(h, c * w))  # [R * P, C * W]
        rows = rows.reshape(len(r), output_size * c, w)
        pooled = torch.bmm(rows, wx.transpose(1, 2))  # [R, P * C, Q]
        out.append(pooled.reshape(len(r), output_size, c, output_size).transpose(1, 2))
    return torch.cat(out)
