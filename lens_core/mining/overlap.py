"""Same-slice box overlap between two box tables (the join every mining rule needs).

Tables are joined on (volume_id, slice) first, so only boxes that can overlap are compared; the IoU
itself is :func:`lens_core.boxes.iou` on the candidate pairs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lens_core.boxes import iou

BOX_COLS = ["x1", "y1", "x2", "y2"]


def slice_rows(df: pd.DataFrame, span: bool = False) -> pd.DataFrame:
    """``(volume_id, z, row)`` per box, ``row`` its position in ``df``.

    span=False: the box lies on slice ``z`` only (a 2D box or a key slice). span=True: a labelled box
    covers every slice in ``[z1, z2)`` (exclusive bound, docs/artifacts.md), so a 3D annotation is
    compared on all of its slices; rows without z1/z2 fall back to ``z``.
    """
    pos = np.arange(len(df), dtype=np.int64)
    z = df["z"].to_numpy(dtype=np.int64)
    if not span or "z1" not in df.columns or "z2" not in df.columns:
        return pd.DataFrame({"volume_id": df["volume_id"].to_numpy(), "z": z, "row": pos})
    z1 = df["z1"].to_numpy(dtype=np.float64)
    z2 = df["z2"].to_numpy(dtype=np.float64)
    have = np.isfinite(z1) & np.isfinite(z2) & (z2 > z1)
    lo = np.where(have, np.floor(np.nan_to_num(z1)), z).astype(np.int64)
    hi = np.where(have, np.ceil(np.nan_to_num(z2)), z + 1).astype(np.int64)
    hi = np.maximum(hi, lo + 1)
    n = hi - lo
    row = np.repeat(pos, n)
    offset = np.arange(n.sum(), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
    return pd.DataFrame({"volume_id": df["volume_id"].to_numpy()[row], "z": np.repeat(lo, n) + offset,
                         "row": row})


def same_slice_iou(a: pd.DataFrame, b: pd.DataFrame, *, a_span: bool = False, b_span: bool = False) -> pd.DataFrame:
    """Every pair of boxes of ``a`` and ``b`` on a common slice of a common volume, with their IoU.

    Returns ``a_row, b_row`` (positions in ``a`` and ``b``), ``z`` and ``iou`` (float64); a pair that
    shares several slices (3D spans) appears once per shared slice.
    """
    if len(a) == 0 or len(b) == 0:
        return pd.DataFrame({"a_row": np.zeros(0, np.int64), "b_row": np.zeros(0, np.int64),
                             "z": np.zeros(0, np.int64), "iou": np.zeros(0)})
    pairs = slice_rows(a, a_span).merge(slice_rows(b, b_span), on=["volume_id", "z"], suffixes=("_a", "_b"))
    ia = pairs["row_a"].to_numpy(dtype=np.int64)
    ib = pairs["row_b"].to_numpy(dtype=np.int64)
    boxes_a = a[BOX_COLS].to_numpy(dtype=np.float64)[ia]
    boxes_b = b[BOX_COLS].to_numpy(dtype=np.float64)[ib]
    values = iou(boxes_a, boxes_b) if len(ia) else np.zeros(0)
    return pd.DataFrame({"a_row": ia, "b_row": ib, "z": pairs["z"].to_numpy(dtype=np.int64), "iou": values})


def overlaps_any(a: pd.DataFrame, b: pd.DataFrame, iou_threshold: float, *, b_span: bool = True) -> np.ndarray:
    """Boolean [len(a)]: does box ``a[i]`` overlap some box of ``b`` on its slice with IoU > threshold."""
    pairs = same_slice_iou(a, b, b_span=b_span)
    hit = np.zeros(len(a), dtype=bool)
    hit[pairs["a_row"].to_numpy()[pairs["iou"].to_numpy() > iou_threshold]] = True
    return hit


def one_box_per_slice(cand: pd.DataFrame) -> pd.DataFrame:
    """A lesion has one box on a slice: of a tracklet's boxes on the same slice keep the highest-scoring
    (then the first, by ``_row``). Used by cross-slice propagation and intra-patient matching alike."""
    score = cand["score"] if "score" in cand.columns else pd.Series(np.nan, index=cand.index)
    return (cand.assign(_score=score.fillna(-np.inf))
            .sort_values(["tracklet_id", "z", "_score", "_row"], ascending=[True, True, False, True], kind="stable")
            .drop_duplicates(["tracklet_id", "z"]).reset_index(drop=True))
