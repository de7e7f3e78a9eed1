"""AFP target maps (paper Sec. IV-B): centre region B_ctn -> 1, ignore region B_ign - B_ctn ignored,
elsewhere 0; an uncertain box only has an ignore region B_ign."""
from __future__ import annotations

import torch

from lens_core.model.afp import AfpTargets


def _region(boxes: torch.Tensor, ratio: float, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` bool: cell centres inside each box scaled by ``ratio`` about its centre; the
    cell holding the box centre always counts, so even a box smaller than a cell has a region."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    hw, hh = (boxes[:, 2] - boxes[:, 0]) * ratio / 2, (boxes[:, 3] - boxes[:, 1]) * ratio / 2
    inside_x = (xs[None, :] - cx[:, None]).abs() <= hw[:, None]  # [N, W]
    inside_y = (ys[None, :] - cy[:, None]).abs() <= hh[:, None]  # [N, H]
    reg = inside_y[:, :, None] & inside_x[:, None, :]
    stride = xs[1] - xs[0] if len(xs) > 1 else 2 * xs[0]
    jx = (cx / stride).floor().long().clamp(0, len(xs) - 1)
    jy = (cy / stride).floor().long().clamp(0, len(ys) - 1)
    reg[torch.arange(len(boxes)), jy, jx] = True
    return reg


def afp_target_maps(
    boxes: torch.Tensor,
    uncertain: torch.Tensor,
    feat_hw: tuple[int, int],
    stride: int,
    r_c: float = 0.2,
    r_i: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets of one image on a ``feat_hw`` grid of cells ``stride`` px wide (cell centres at
    ``(j + 0.5) * stride``).

    Args:
        boxes: ``[N, 4]`` lesion boxes (x1, y1, x2, y2) in input pixels.
        uncertain: ``[M, 4]`` uncertain / ignored boxes.
    Returns:
        center ``[H, W]`` float (1 in any lesion's B_ctn), ignore ``[H, W]`` bool (any B_ign that is
        not a centre, lesions' and uncertain boxes' alike), reg ``[4, H, W]`` distances
        (left, top, right, bottom) to the smallest lesion whose B_ctn holds the cell (0 elsewhere).
    """
    h, w = feat_hw
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * stride
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * stride
    boxes = boxes.reshape(-1, 4).float()
    uncertain = uncertain.reshape(-1, 4).float()
    center = torch.zeros(h, w)
    ignore = torch.zeros(h, w, dtype=torch.bool)
    reg = torch.zeros(4, h, w)
    if len(boxes):
        ctn = _region(boxes, r_c, xs, ys)  # [N, H, W]
        ign = _region(boxes, r_i, xs, ys)
        center = ctn.any(0).float()
        ignore |= ign.any(0)
        # Overlapping centres regress the smallest lesion (as FCOS [49] does).
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        masked_area = torch.where(ctn, area[:, None, None], torch.inf)
        owner = masked_area.argmin(0)  # [H, W]
        b = boxes[owner]  # [H, W, 4]
        gx, gy = xs[None, :].expand(h, w), ys[:, None].expand(h, w)
        # A forced centre cell of a box smaller than a cell may sit on its border: keep d > 0.
        d = torch.stack([gx - b[..., 0], gy - b[..., 1], b[..., 2] - gx, b[..., 3] - gy]).clamp(min=0.25)
        reg = torch.where(center.bool()[None], d, torch.zeros_like(d))
    if len(uncertain):
        ignore |= _region(uncertain, r_i, xs, ys).any(0)
    ignore &= ~center.bool()
    return center, ignore, reg


def batch_targets(
    boxes: list[torch.Tensor],
    uncertain: list[torch.Tensor],
    feat_hw: tuple[int, int],
    stride: int,
    r_c: float = 0.2,
    r_i: float = 0.5,
) -> AfpTargets:
    """:func:`afp_target_maps` for each image of a batch, stacked into :class:`AfpTargets`."""
    maps = [afp_target_maps(b, u, feat_hw, stride, r_c, r_i) for b, u in zip(boxes, uncertain)]
    return AfpTargets(
        center=torch.stack([m[0] for m in maps]),
        ignore=torch.stack([m[1] for m in maps]),
        reg=torch.stack([m[2] for m in maps]),
    )
