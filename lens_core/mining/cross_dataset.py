"""Cross-dataset lesion mining (paper Sec. V-C, Fig. 4d): uncertain lesions from single-type experts.

The LUNA, LiTS and NIH-LN experts of LENS are trained on fully labelled single-type datasets and
find lesions of their type that DeepLesion left unlabelled (Sec. IV-C, Fig. 3). A proposal of one of
them with score > sigma that overlaps no existing or mined annotation is an *uncertain* lesion: it
may be a real unlabelled lesion or a false positive, so round-2 training ignores its region instead
of calling it either. Run over every slice, including unlabelled ones, it also makes those slices
usable as training data (Table IV, last row).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lens_core.io import InputError
from lens_core.mining.overlap import overlaps_any
from lens_core.mining.schema import conform

__all__ = ["SINGLE_TYPE_EXPERTS", "mine_uncertain"]

SINGLE_TYPE_EXPERTS = ("score_luna", "score_lits", "score_nihln")


def mine_uncertain(proposals: pd.DataFrame, labels: pd.DataFrame,
                   expert_cols: tuple[str, ...] = SINGLE_TYPE_EXPERTS, sigma: float = 0.5,
                   overlap_iou: float = 0.0) -> pd.DataFrame:
    """Uncertain 2D boxes (``label_kind = uncertain``), MINING_SCHEMA columns.

    proposals: 2D proposals with per-expert score columns (docs/artifacts.md). labels: existing
    annotations and mined boxes (any label_kind; a box with a z1..z2 span counts on all its slices).

    A proposal is uncertain when its best single-type expert score exceeds ``sigma`` and its IoU with
    every label on the same slice is <= ``overlap_iou``. The default 0.0 reads the paper's "does not
    overlap" literally (any shared area counts as overlap): a nodule-sized expert box inside a large
    annotated mass has a tiny IoU yet shows the annotated lesion, and ignoring a region inside a
    ground-truth box would take positives out of the loss. ``source_rule`` names the expert
    (``cross_dataset_luna`` ...), ``score`` is its score.
    """
    present = [c for c in expert_cols if c in proposals.columns]
    if not present:
        src = f"{proposals.attrs['source']}: " if proposals.attrs.get("source") else ""
        raise InputError(f"{src}proposal table has none of the single-type expert columns {list(expert_cols)}")
    if not 0.0 <= overlap_iou < 1.0:
        raise ValueError(f"overlap_iou must be in [0, 1), got {overlap_iou}")
    props = proposals.reset_index(drop=True)
    scores = props[present].to_numpy(dtype=np.float64)
    if len(props) and not np.isfinite(scores).all():
        row = int(np.flatnonzero(~np.isfinite(scores).all(axis=1))[0])
        raise InputError(f"proposal row {row} has a non-finite expert score")
    best = scores.argmax(axis=1) if len(props) else np.zeros(0, np.int64)
    best_score = scores[np.arange(len(props)), best] if len(props) else np.zeros(0)
    keep = best_score > sigma
    cand = props[keep].reset_index(drop=True)
    expert = np.asarray(present, dtype=object)[best[keep]]
    cand_score = best_score[keep]
    free = ~overlaps_any(cand, labels.reset_index(drop=True), overlap_iou) if len(labels) else np.ones(len(cand), bool)

    out = cand[free].drop(columns=[c for c in cand.columns if c.startswith("score")]).reset_index(drop=True)
    out["score"] = cand_score[free]
    out["source_rule"] = ["cross_dataset_" + e.removeprefix("score_") for e in expert[free]]
    out["kind"] = "2d"
    out["label_kind"] = "uncertain"
    return conform(out)
