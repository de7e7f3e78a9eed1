"""Box algebra on numpy arrays, shared by the whole pipeline.

Convention (docs/artifacts.md): continuous 0-based pixel coordinates with exclusive upper bounds,
i.e. torchvision's. A 2D box is ``(x1, y1, x2, y2)``, a 3D box ``(x1, y1, z1, x2, y2, z2)`` (the
column order of every box table). Under this convention integer boxes measure pixel counts
exactly, so "IoBB with inclusive pixel extents" (paper Sec. VI-C) is IoBB after converting the
inclusive extents with :func:`inclusive_to_exclusive`.

Torch code should call ``torchvision.ops.box_iou`` directly; it agrees with :func:`pairwise_iou`
for 2D boxes (tests/test_boxes.py checks this).

``pairwise_*`` functions return an ``[N, M]`` matrix for ``a: [N, D]`` and ``b: [M, D]``; the
unprefixed functions compare row ``i`` of ``a`` with row ``i`` of ``b`` (``[N]``), which is what an
evaluator needs after it has listed the candidate pairs itself.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "as_boxes",
    "box_volume",
    "inclusive_to_exclusive",
    "intersection",
    "iou",
    "iobb",
    "pairwise_intersection",
    "pairwise_iou",
    "pairwise_iobb",
]


def as_boxes(boxes, ndim: int | None = None) -> np.ndarray:
    """Return ``boxes`` as a float64 ``[N, 4]`` or ``[N, 6]`` array (one box ``[D]`` -> ``[1, D]``).

    ``ndim`` (2 or 3) pins the dimensionality. Raises ``ValueError`` on any other shape.
    """
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0 and ndim is not None:
        return arr.reshape(0, 2 * ndim)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] not in (4, 6):
        raise ValueError(f"boxes must have shape [N, 4] or [N, 6], got {arr.shape}")
    if ndim is not None and arr.shape[1] != 2 * ndim:
        raise ValueError(f"expected {ndim}D boxes ([N, {2 * ndim}]), got {arr.shape}")
    return arr


def _split(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = boxes.shape[-1] // 2
    return boxes[..., :d], boxes[..., d:]


def _positive_product(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """prod_k max(hi[..., k] - lo[..., k], 0), multiplied axis by axis (x, y, z).

    Explicit products instead of ``np.prod(axis=-1)``: much faster on a short last axis, and the
    rounding is that of the plain ``dx * dy * dz`` a reader would write.
    """
    out = np.maximum(hi[..., 0] - lo[..., 0], 0.0)
    for k in range(1, lo.shape[-1]):
        out = out * np.maximum(hi[..., k] - lo[..., k], 0.0)
    return out


def box_volume(boxes) -> np.ndarray:
    """Area (2D) or volume (3D) of each box, ``[N]``; inverted extents count as 0."""
    return _positive_product(*_split(as_boxes(boxes)))


def inclusive_to_exclusive(boxes) -> np.ndarray:
    """Inclusive integer pixel extents (``x2`` is the last pixel) -> exclusive upper bounds (+1)."""
    arr = as_boxes(boxes).copy()
    d = arr.shape[1] // 2
    arr[:, d:] += 1.0
    return arr


def intersection(a, b) -> np.ndarray:
    """Intersection area/volume of ``a[i]`` and ``b[i]``, ``[N]``."""
    a, b = as_boxes(a), as_boxes(b)
    if a.shape != b.shape:
        raise ValueError(f"paired boxes need equal shapes, got {a.shape} and {b.shape}")
    (alo, ahi), (blo, bhi) = _split(a), _split(b)
    return _positive_product(np.maximum(alo, blo), np.minimum(ahi, bhi))


def pairwise_intersection(a, b) -> np.ndarray:
    """Intersection area/volume of every ``a[i]`` with every ``b[j]``, ``[N, M]``."""
    a, b = as_boxes(a), as_boxes(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"cannot compare {a.shape[1] // 2}D and {b.shape[1] // 2}D boxes")
    (alo, ahi), (blo, bhi) = _split(a[:, None, :]), _split(b[None, :, :])
    return _positive_product(np.maximum(alo, blo), np.minimum(ahi, bhi))  # [N, M]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # A degenerate (empty) box overlaps nothing: define the ratio as 0 instead of nan.
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape))
    np.divide(num, den, out=out, where=den > 0)
    return out


def iou(a, b) -> np.ndarray:
    """Intersection over union of ``a[i]`` and ``b[i]``, ``[N]``."""
    inter = intersection(a, b)
    return _ratio(inter, box_volume(a) + box_volume(b) - inter)


def iobb(pred, gt) -> np.ndarray:
    """IoBB of ``pred[i]`` with ``gt[i]``: intersection over the *predicted* box's volume (Sec. VI-C).

    A detection covering a part of a large lesion scores high even when its IoU is low.
    """
    return _ratio(intersection(pred, gt), box_volume(pred))


def pairwise_iou(a, b) -> np.ndarray:
    """IoU of every ``a[i]`` with every ``b[j]``, ``[N, M]`` (``torchvision.ops.box_iou`` in 2D)."""
    inter = pairwise_intersection(a, b)
    return _ratio(inter, box_volume(a)[:, None] + box_volume(b)[None, :] - inter)


def pairwise_iobb(pred, gt) -> np.ndarray:
    """IoBB of every ``pred[i]`` with every ``gt[j]``, ``[N, M]``: intersection / volume of pred."""
    return _ratio(pairwise_intersection(pred, gt), box_volume(pred)[:, None])
