"""Boxes: the one package for 2D/3D box algebra, in its three forms side by side.

* :mod:`.ops_np`: numpy, vectorised (``iou``, ``iobb``, ``pairwise_*``), re-exported here;
* :mod:`.ops_nb`: numba scalar kernels for the compiled loops (tracklets, FROC matching), the same arithmetic;
* :mod:`.coder`: torch, the detection head's box-delta coding (imported on its own: it needs torch).

Convention (docs/artifacts.md): continuous 0-based pixel coordinates with exclusive upper bounds, columns
``x1, y1[, z1], x2, y2[, z2]``.
"""
from __future__ import annotations

from .ops_np import (as_boxes, box_volume, inclusive_to_exclusive, intersection, iobb, iou, pairwise_intersection,
                     pairwise_iobb, pairwise_iou)

# The paper's theta: the IoU at which 2D boxes on neighbouring slices are one lesion (2D->3D stacking,
# Sec. IV-C; cross-slice mining, Sec. V-A). Every step's default reads it from here.
THETA = 0.5

__all__ = ["THETA", "as_boxes", "box_volume", "inclusive_to_exclusive", "intersection", "iou", "iobb",
           "pairwise_intersection", "pairwise_iou", "pairwise_iobb"]
