"""Box arithmetic as numba scalar kernels, inlined into the compiled loops that call them (2D->3D stacking in
:mod:`lens_core.tracklets`, FROC matching in :mod:`lens_core.evaluation.matching`): numba cannot call the
vectorised numpy forms (:mod:`.ops_np`) inside a hot loop without allocating. float64 arithmetic in the
numpy forms' order, so that kernels and references agree bit for bit at a threshold."""
from __future__ import annotations

from numba import njit


@njit(cache=True, inline="always")
def iou_2d(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2):
    """IoU of two 2D boxes given by their coordinates (0 when they do not overlap)."""
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union


@njit(cache=True, inline="always")
def row_volume(boxes, i, d):
    """Area (d = 2) or volume (d = 3) of row ``i`` of ``boxes [N, 2d]``."""
    vol = boxes[i, d] - boxes[i, 0]
    for a in range(1, d):
        vol *= boxes[i, a + d] - boxes[i, a]
    return vol


@njit(cache=True, inline="always")
def row_intersection(a_boxes, i, b_boxes, j, d):
    """Intersection of row ``i`` of ``a_boxes`` with row ``j`` of ``b_boxes`` (0 when disjoint)."""
    inter = 1.0
    for a in range(d):
        lo = max(a_boxes[i, a], b_boxes[j, a])
        hi = min(a_boxes[i, a + d], b_boxes[j, a + d])
        if hi <= lo:
            return 0.0
        inter *= hi - lo
    return inter
