"""Tracklets: 2D boxes of one volume grouped across adjacent slices (paper Sec. V-A, Sec. IV-C).

Two boxes of the same volume on slices ``z`` and ``z + 1`` whose IoU exceeds ``theta`` show the same
lesion; a tracklet is a connected component of that relation, and a box that joins nothing is a
tracklet of one. The same grouping stacks LENS's 2D detections into 3D boxes (Sec. IV-C, last
sentences), see :func:`stack_to_3d`.

The hot loop is :func:`_tracklet_kernel`, a numba kernel over boxes sorted by (volume, slice); the
public wrapper :func:`build_tracklets` validates, sorts and maps the ids back to input order.
``tests/reference_tracklets.py`` holds the slow, obviously-correct version the kernel must match.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numba import njit

from lens_core.boxes import THETA
from lens_core.boxes.ops_nb import iou_2d
from lens_core.io import InputError, require_columns

__all__ = ["build_tracklets", "tracklets_from_table", "stack_to_3d"]


@njit(cache=True)
def _find(parent, i):
    # Path halving: every visited node skips to its grandparent, so trees stay nearly flat.
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True)
def _tracklet_kernel(volume, z, boxes, iou_threshold):
    """Tracklet ids for boxes already sorted by (volume, z); ids 0.. in order of first box.

    volume, z: int64 [N], sorted lexicographically; boxes: float32 [N, 4] (x1, y1, x2, y2).
    """
    n = volume.shape[0]
    parent = np.arange(n)
    # Slice runs: [start, end) of boxes that share (volume, z).
    s = 0
    while s < n:
        e = s + 1
        while e < n and volume[e] == volume[s] and z[e] == z[s]:
            e += 1
        # Only the next run can be slice z + 1 of the same volume (sorted input).
        if e < n and volume[e] == volume[s] and z[e] == z[s] + 1:
            e2 = e + 1
            while e2 < n and volume[e2] == volume[e] and z[e2] == z[e]:
                e2 += 1
            for i in range(s, e):
                ax1 = np.float64(boxes[i, 0])
                ay1 = np.float64(boxes[i, 1])
                ax2 = np.float64(boxes[i, 2])
                ay2 = np.float64(boxes[i, 3])
                for j in range(e, e2):
                    iou = iou_2d(ax1, ay1, ax2, ay2,
                               np.float64(boxes[j, 0]), np.float64(boxes[j, 1]),
                               np.float64(boxes[j, 2]), np.float64(boxes[j, 3]))
                    if iou > iou_threshold:
                        ri = _find(parent, i)
                        rj = _find(parent, j)
                        # The smaller index becomes the root, so a root is its tracklet's first box.
                        if ri < rj:
                            parent[rj] = ri
                        elif rj < ri:
                            parent[ri] = rj
        s = e
    # Number tracklets in order of their first box: a root is met before any other member.
    label = np.empty(n, dtype=np.int64)
    next_id = 0
    for i in range(n):
        r = _find(parent, i)
        if r == i:
            label[i] = next_id
            next_id += 1
        else:
            label[i] = label[r]
    return label


def _validate(volume_idx, z, boxes, iou_threshold):
    volume_idx = np.asarray(volume_idx)
    z = np.asarray(z)
    boxes = np.asarray(boxes)
    if volume_idx.ndim != 1 or z.ndim != 1:
        raise InputError(f"volume_idx and z must be 1-D, got shapes {volume_idx.shape} and {z.shape}")
    n = volume_idx.shape[0]
    if z.shape[0] != n or boxes.shape != (n, 4):
        raise InputError(f"expected volume_idx [N], z [N], boxes [N, 4] with one N, got "
                         f"{volume_idx.shape}, {z.shape}, {boxes.shape}")
    for name, arr in (("volume_idx", volume_idx), ("z", z)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{name} must be an integer array, got {arr.dtype}")
    if not np.issubdtype(boxes.dtype, np.floating):
        raise InputError(f"boxes must be a float array, got {boxes.dtype}")
    boxes = np.ascontiguousarray(boxes, dtype=np.float32)
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        raise InputError(f"boxes has non-finite coordinates at row {int(np.flatnonzero(bad)[0])}")
    bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"boxes must have x2 > x1 and y2 > y1 (x1, y1, x2, y2); row {i} is {boxes[i].tolist()}")
    if not (0.0 <= float(iou_threshold) < 1.0):
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    return (np.ascontiguousarray(volume_idx, dtype=np.int64), np.ascontiguousarray(z, dtype=np.int64),
            boxes, float(iou_threshold))


def _sort_order(volume_idx, z):
    """Stable order by (volume, z); O(N) when the input is already sorted (proposal tables usually are)."""
    if volume_idx.size < 2:
        return None
    dv = np.diff(volume_idx)
    if ((dv > 0) | ((dv == 0) & (np.diff(z) >= 0))).all():
        return None
    return np.lexsort((z, volume_idx))


def build_tracklets(volume_idx: np.ndarray, z: np.ndarray, boxes: np.ndarray,
                    iou_threshold: float = 0.5) -> np.ndarray:
    """Tracklet id of every box, in input order (paper Sec. V-A).

    volume_idx: int [N] volume of each box; z: int [N] slice index; boxes: float [N, 4] x1, y1, x2, y2
    (continuous pixel coordinates, x2 > x1, y2 > y1). Boxes on slices z and z + 1 of one volume with
    IoU > iou_threshold are linked; tracklets are the connected components. Ids are 0..T-1, numbered
    in order of each tracklet's first box after a stable sort by (volume, z), so they are
    deterministic for a given input.
    """
    volume_idx, z, boxes, iou_threshold = _validate(volume_idx, z, boxes, iou_threshold)
    order = _sort_order(volume_idx, z)
    if order is None:
        return _tracklet_kernel(volume_idx, z, boxes, iou_threshold)
    sorted_ids = _tracklet_kernel(volume_idx[order], z[order], boxes[order], iou_threshold)
    out = np.empty_like(sorted_ids)
    out[order] = sorted_ids
    return out


BOX_COLS = ["x1", "y1", "x2", "y2"]


def tracklets_from_table(df: pd.DataFrame, iou_threshold: float = 0.5) -> pd.DataFrame:
    """A copy of a 2D proposal table (docs/artifacts.md) with an int64 ``tracklet_id`` column."""
    require_columns(df, ["volume_id", "z", *BOX_COLS], "proposal table")
    volume_idx, _ = pd.factorize(df["volume_id"], sort=True)
    ids = build_tracklets(volume_idx.astype(np.int64), df["z"].to_numpy(dtype=np.int64),
                          df[BOX_COLS].to_numpy(dtype=np.float32), iou_threshold)
    out = df.copy()
    out["tracklet_id"] = ids
    return out


def stack_to_3d(df: pd.DataFrame, iou_threshold: float = THETA, score_col: str = "score") -> pd.DataFrame:
    """Stack 2D detections into 3D boxes (paper Sec. IV-C, last sentences).

    Boxes on consecutive slices with IoU > theta form one 3D box (a tracklet). Its x1, y1, x2, y2 are
    the mean of the 2D boxes weighted by their scores (uniform weights if all scores are 0); z1 = min z,
    z2 = max z + 1 (exclusive bound). Its score, and each ``score_<dataset>`` column, is the maximum over
    its 2D boxes: a 3D box is as likely a lesion as its most confident slice, and a mean would punish
    lesions whose first and last slices (small cross-sections) score low. ``z`` is the slice of the
    most confident box (the "key slice"), ``n_slices`` the number of distinct slices. Identifier
    columns (``patient_id``, ``study_id``, ``series_id``) are carried over when present.
    """
    require_columns(df, [score_col], "detection table")
    trk = tracklets_from_table(df, iou_threshold).reset_index(drop=True)
    score_cols = [c for c in trk.columns if c.startswith("score")]
    w = trk[score_col].to_numpy(dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all():
        raise InputError(f"column {score_col!r} must be finite and >= 0 to weight box coordinates")
    g = trk.groupby("tracklet_id", sort=True)
    wsum = g[score_col].transform("sum").to_numpy(dtype=np.float64)
    count = g[score_col].transform("size").to_numpy(dtype=np.float64)
    # Uniform weights inside tracklets whose scores are all zero.
    weight = np.where(wsum > 0, w / np.where(wsum > 0, wsum, 1.0), 1.0 / count)
    coords = trk[BOX_COLS].to_numpy(dtype=np.float64) * weight[:, None]
    weighted = pd.DataFrame(coords, columns=BOX_COLS).groupby(trk["tracklet_id"].to_numpy()).sum()
    out = pd.DataFrame({"tracklet_id": weighted.index.to_numpy(dtype=np.int64)})
    first = g.first()
    for c in ["volume_id", "patient_id", "study_id", "series_id"]:
        if c in trk.columns:
            out[c] = first[c].to_numpy()
    for c in BOX_COLS:
        out[c] = weighted[c].to_numpy(dtype=np.float32)
    out["z1"] = g["z"].min().to_numpy(dtype=np.int64)
    out["z2"] = g["z"].max().to_numpy(dtype=np.int64) + 1
    key_rows = g[score_col].idxmax()
    out["z"] = trk.loc[key_rows.to_numpy(), "z"].to_numpy(dtype=np.int64)
    for c in score_cols:
        out[c] = g[c].max().to_numpy()
    out["n_slices"] = g["z"].nunique().to_numpy(dtype=np.int64)
    front = ["volume_id", "patient_id", "study_id", "series_id", "x1", "y1", "z1", "x2", "y2", "z2"]
    cols = [c for c in front if c in out.columns]
    return out[cols + [c for c in out.columns if c not in cols]]
