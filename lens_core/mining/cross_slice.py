"""Cross-slice box propagation (paper Sec. V-A, Fig. 4a): recover a lesion's boxes on other slices.

DeepLesion marks each lesion on one key slice only. A tracklet whose box on the key slice overlaps
the annotation (the "key-slice IoU" > theta) follows that lesion through neighbouring slices, so its
boxes on the other slices are missing annotations of the same lesion.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lens_core.io import require_columns
from lens_core.mining.overlap import one_box_per_slice, overlaps_any, same_slice_iou
from lens_core.mining.schema import conform

__all__ = ["mine_cross_slice"]

ID_COLS = ["volume_id", "patient_id", "study_id", "series_id"]


def mine_cross_slice(tracklets: pd.DataFrame, annotations: pd.DataFrame, iou_threshold: float = 0.5) -> pd.DataFrame:
    """Mined 2D boxes (``label_kind = mined_cross_slice``), one row per box, MINING_SCHEMA columns.

    tracklets: 2D proposals with ``tracklet_id`` (:func:`lens_core.tracklets.tracklets_from_table`).
    annotations: the lesions table; only ``label_kind == 'gt'`` rows are key slices (compared on
    their slice ``z``).

    Choices the paper leaves open, made for precision (a wrong mined box is trained as a lesion):
    - a tracklet that matches several annotations takes the one with the highest key-slice IoU (its
      ``lesion_id``, ``lesion_type`` and ``dataset`` are copied);
    - boxes on the matched key slice itself are not mined (the annotation is already there), nor boxes
      that overlap any existing annotation with IoU > theta on their slice (already labelled);
    - a tracklet that branches keeps one box per slice, the highest-scoring one: a lesion has one box
      on a slice.
    """
    require_columns(tracklets, ["tracklet_id", "volume_id", "z", "x1", "y1", "x2", "y2"], "tracklet table")
    require_columns(annotations, ["volume_id", "lesion_id", "z", "x1", "y1", "x2", "y2"], "annotation table")
    trk = tracklets.reset_index(drop=True)
    ann = annotations.reset_index(drop=True)
    gt = ann[ann["label_kind"] == "gt"].reset_index(drop=True) if "label_kind" in ann.columns else ann

    pairs = same_slice_iou(trk, gt)
    pairs = pairs[pairs["iou"].to_numpy() > iou_threshold].copy()
    pairs["tracklet_id"] = trk["tracklet_id"].to_numpy()[pairs["a_row"].to_numpy()]
    # Best annotation per tracklet: highest IoU, then the first annotation row (deterministic).
    best = (pairs.sort_values(["tracklet_id", "iou", "b_row"], ascending=[True, False, True], kind="stable")
            .drop_duplicates("tracklet_id"))
    match = pd.DataFrame({"tracklet_id": best["tracklet_id"].to_numpy(), "ann_row": best["b_row"].to_numpy(),
                          "key_z": gt["z"].to_numpy(dtype=np.int64)[best["b_row"].to_numpy()],
                          "key_iou": best["iou"].to_numpy()})
    # optional prior on the lesion's extent: no mined slice farther from the key slice than max_dz
    max_dz = gt["max_dz"].to_numpy(dtype=float) if "max_dz" in gt.columns else np.full(len(gt), np.inf)
    match["max_dz"] = max_dz[best["b_row"].to_numpy()]

    cand = trk.assign(_row=np.arange(len(trk))).merge(match, on="tracklet_id", how="inner")
    dz = np.abs(cand["z"].to_numpy(dtype=np.int64) - cand["key_z"].to_numpy())
    cand = cand[(dz > 0) & (dz <= cand["max_dz"].to_numpy())].reset_index(drop=True)
    cand = cand[~overlaps_any(cand, ann, iou_threshold)]
    cand = one_box_per_slice(cand)

    a = gt.iloc[cand["ann_row"].to_numpy()].reset_index(drop=True)
    out = pd.DataFrame(index=pd.RangeIndex(len(cand)))
    for c in ID_COLS:  # the proposal's own ids; the annotation's (same volume) if proposals lack them
        src = cand if c in cand.columns else a
        if c in src.columns:
            out[c] = src[c].to_numpy()
    for c in ["dataset", "lesion_id", "lesion_type"]:
        if c in a.columns:
            out[c] = a[c].to_numpy()
    for c in ["z", "x1", "y1", "x2", "y2", "tracklet_id", "key_iou", "score"]:
        if c in cand.columns:
            out[c] = cand[c].to_numpy()
    out["kind"] = "2d"
    out["label_kind"] = "mined_cross_slice"
    out["source_rule"] = "cross_slice"
    return conform(out)
