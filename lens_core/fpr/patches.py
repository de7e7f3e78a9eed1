"""3D patches centred on 3D proposals, the FPR network's input (paper Sec. IV-D: "a 3D image patch
whose center is the center of a 3D box").

A patch is ``D x H x W`` voxels of the preprocessed grid around the box centre: ``D`` whole slices,
and in-plane a window of ``max(H, context * box height)`` x ``max(W, context * box width)`` pixels
resampled to ``H x W`` (ROIAlign, which averages when it shrinks), so a lesion larger than the patch
still fits with some context. Intensities: the preprocessed 0..255 window as ``v / 64 - 1`` (air -1,
water 0; the scale of LENS's ``normalize``); outside the volume is air.

Training augmentation (:func:`augment`): a random in-plane shift (patches cropped with a ``margin``,
then a random ``D x H x W`` window of them; the centred window is exactly the scoring patch), x / y /
z mirroring and an in-plane transpose (with the mirrors, all 8 in-plane right-angle symmetries).
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import roi_align

BOX3D = ["x1", "y1", "z1", "x2", "y2", "z2"]
# A 3D proposal table as the FPR reads it: finite boxes (a NaN z was an IndexError deep in patch cropping),
# none inverted (one was trained on anyway)
PROPOSALS3D = {"volume_id": "text", **dict.fromkeys(BOX3D, "number")}


def crop_patches(volume: np.ndarray, boxes: np.ndarray, patch: tuple[int, int, int], context: float = 2.0,
                 margin: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches around ``boxes [N, 6]`` (x1, y1, z1, x2, y2, z2; preprocessed voxels) of one preprocessed
    ``volume [z, y, x]`` (0..255, any storage).

    Returns ``patches [N, 1, D, H, W]`` (float32) and the boxes in patch voxels ``[N, 6]``, clipped
    to the patch. ``margin > 0`` adds that many patch pixels on each in-plane side (same scale and
    centre: ``[N, 1, D, H + 2m, W + 2m]``, the scoring patch in its middle) for shift augmentation.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 6)
    d, h0, w0 = patch
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    h, w = h0 + 2 * margin, w0 + 2 * margin
    n = len(boxes)
    if n == 0:
        return torch.zeros(0, 1, d, h, w), torch.zeros(0, 6)
    if volume.ndim != 3:
        raise ValueError(f"volume must be [z, y, x], got shape {volume.shape}")
    depth = volume.shape[0]
    bw, bh = boxes[:, 3] - boxes[:, 0], boxes[:, 4] - boxes[:, 1]
    scale = np.maximum(1.0, np.maximum(context * bw / w0, context * bh / h0))  # source px per patch px
    cx, cy = (boxes[:, 0] + boxes[:, 3]) / 2, (boxes[:, 1] + boxes[:, 4]) / 2
    x0, y0 = cx - scale * w / 2, cy - scale * h / 2
    z0 = np.floor((boxes[:, 2] + boxes[:, 5]) / 2 - d / 2 + 0.5).astype(np.int64)  # first slice
    zz = z0[:, None] + np.arange(d)[None]  # [N, D] volume slice of each patch slice
    valid = (zz >= 0) & (zz < depth)
    used = np.unique(zz[valid])
    # only the slices some patch needs, as float with air = 0 so that ROIAlign's zero padding is air
    src = torch.from_numpy(np.ascontiguousarray(volume[used], dtype=np.float32) / 64.0)[:, None]
    slot = np.searchsorted(used, np.clip(zz, 0, depth - 1))
    ni, di = np.nonzero(valid)
    rois = np.stack([slot[ni, di], x0[ni], y0[ni], x0[ni] + scale[ni] * w, y0[ni] + scale[ni] * h], 1)
    out = torch.zeros(n * d, 1, h, w)
    if len(rois):
        # aligned=True: pixel i spans [i, i + 1), the project's convention (docs/artifacts.md)
        crops = roi_align(src, torch.from_numpy(rois).float(), (h, w), spatial_scale=1.0, sampling_ratio=-1,
                          aligned=True)
        out[torch.from_numpy(ni * d + di)] = crops
    patches = (out - 1.0).reshape(n, d, 1, h, w).transpose(1, 2).contiguous()
    local = np.stack([(boxes[:, 0] - x0) / scale, (boxes[:, 1] - y0) / scale, boxes[:, 2] - z0,
                      (boxes[:, 3] - x0) / scale, (boxes[:, 4] - y0) / scale, boxes[:, 5] - z0], 1)
    local = np.clip(local, 0, np.array([w, h, d, w, h, d], np.float64))
    return patches, torch.from_numpy(local).float()


def flip(patches: torch.Tensor, boxes: torch.Tensor, axes: tuple[bool, bool, bool]
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror patches ``[N, 1, D, H, W]`` and their boxes along (x, y, z) where ``axes`` says so
    (training augmentation: a lesion mirrored is still a lesion)."""
    d, h, w = patches.shape[2:]
    boxes = boxes.clone()
    dims = []
    for flag, dim, lo, hi, size in ((axes[0], 4, 0, 3, w), (axes[1], 3, 1, 4, h), (axes[2], 2, 2, 5, d)):
        if flag:
            dims.append(dim)
            boxes[:, [lo, hi]] = size - boxes[:, [hi, lo]]
    return (patches.flip(dims) if dims else patches), boxes


def transpose_xy(patches: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap the in-plane axes of square patches ``[N, 1, D, S, S]`` and their boxes (with the mirrors
    of :func:`flip`: every in-plane right-angle rotation)."""
    if patches.shape[3] != patches.shape[4]:
        raise ValueError(f"transposing needs square patches, got {tuple(patches.shape[3:])}")
    return patches.transpose(3, 4), boxes[:, [1, 0, 2, 4, 3, 5]]


def augment(patches: torch.Tensor, boxes: torch.Tensor, patch: tuple[int, int, int], rng: np.random.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random augmentation of patches cropped with a margin (``[N, 1, D, H + 2m, W + 2m]``,
    :func:`crop_patches`): a random ``patch``-sized in-plane window (a shift of up to ``m`` pixels;
    its box clipped to the window), then random x / y / z mirroring and an in-plane transpose.
    Returns ``[N, 1, D, H, W]`` patches and their boxes."""
    n = len(patches)
    d, h, w = patch
    mh, mw = patches.shape[3] - h, patches.shape[4] - w
    if patches.shape[2] != d or mh < 0 or mw < 0:
        raise ValueError(f"patches {tuple(patches.shape[2:])} cannot hold a {patch} window")
    oy, ox = rng.integers(0, mh + 1, n), rng.integers(0, mw + 1, n)
    iy = torch.as_tensor(oy[:, None] + np.arange(h)[None])  # [N, H] rows of each window
    ix = torch.as_tensor(ox[:, None] + np.arange(w)[None])
    out = patches[torch.arange(n)[:, None, None], :, :, iy[:, :, None], ix[:, None, :]]  # [N, H, W, 1, D]
    out = out.permute(0, 3, 4, 1, 2)
    b = _window_boxes(boxes, torch.as_tensor(ox, dtype=boxes.dtype)[:, None],
                      torch.as_tensor(oy, dtype=boxes.dtype)[:, None], patch)
    flips = rng.integers(0, 2, (n, 4)).astype(bool)
    for k, axes in enumerate(((True, False, False), (False, True, False), (False, False, True))):
        sel = torch.as_tensor(np.flatnonzero(flips[:, k]))
        if len(sel):
            out[sel], b[sel] = flip(out[sel], b[sel], axes)
    if h == w:
        sel = torch.as_tensor(np.flatnonzero(flips[:, 3]))
        if len(sel):
            out[sel], b[sel] = transpose_xy(out[sel], b[sel])
    return out.contiguous(), b


def centre_window(patches: torch.Tensor, boxes: torch.Tensor, patch: tuple[int, int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The middle ``patch``-sized window of patches cropped with a margin: the scoring patch."""
    _, h, w = patch
    my, mx = (patches.shape[3] - h) // 2, (patches.shape[4] - w) // 2
    return patches[:, :, :, my:my + h, mx:mx + w], _window_boxes(boxes, mx, my, patch)


def _window_boxes(boxes: torch.Tensor, ox, oy, patch: tuple[int, int, int]) -> torch.Tensor:
    """Boxes of margin-cropped patches in a ``patch``-sized window at in-plane offset ``(ox, oy)``
    (numbers, or per-box ``[N, 1]`` tensors), clipped to the window."""
    d, h, w = patch
    b = boxes.clone()
    b[:, [0, 3]] -= ox
    b[:, [1, 4]] -= oy
    return torch.minimum(b.clamp(min=0), torch.tensor([w, h, d, w, h, d], dtype=b.dtype))
