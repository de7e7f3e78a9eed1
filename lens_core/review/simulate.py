"""A simulated reviewer that answers from the built-in corpus's hidden truth.

An audit and ablation device only (what is a review of the mined boxes worth to round 2?): the review
page never sees the truth, and on real data there is none. It answers a seeded random ``fraction`` of
the mined boxes the way a careful reader would: a box on a true lesion that fits (IoU >= accept_iou
with the lesion's box on that slice) is accepted; a box on a true lesion that fits badly (IoU >=
fix_iou) is fixed to the lesion's box; anything else is rejected. The lesion's box on a slice is its
cross-section padded like the dataset's annotations (:func:`lens_core.mining.audit.truth_slices`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lens_core.mining.audit import match_truth, truth_slices
from lens_core.review.verdicts import FORMAT

SIMULATED = "simulated reviewer (hidden truth)"
# one fixed stamp: the same boxes, truth and seed give a byte-identical verdict file
TIME = "2000-01-01T00:00:00+00:00"


def simulate_verdicts(boxes: pd.DataFrame, truth: pd.DataFrame, fraction: float, *, pad_px=0.0, seed: int = 0,
                      accept_iou: float = 0.5, fix_iou: float = 0.1) -> dict:
    """A verdict document (the page's export format) answering ``round(fraction * len(boxes))`` of
    ``boxes`` (review_boxes rows); the others are left undecided (null)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if not 0.0 < fix_iou <= accept_iou <= 1.0:
        raise ValueError(f"need 0 < fix_iou <= accept_iou <= 1, got {fix_iou}, {accept_iou}")
    b = boxes.reset_index(drop=True)
    n = int(round(fraction * len(b)))
    answered = np.zeros(len(b), bool)
    answered[np.random.default_rng(seed).permutation(len(b))[:n]] = True
    slices = truth_slices(truth[truth["volume_id"].isin(set(b["volume_id"]))], pad_px)
    m = match_truth(b, slices, iou_threshold=fix_iou - 1e-9)
    s, iou = m["slice_row"].to_numpy(), m["iou"].to_numpy()
    rows = []
    for i, r in enumerate(b.itertuples(index=False)):
        v = {"box_id": str(r.box_id), "decision": None, "box": None, "reviewer": None, "time": None}
        if answered[i]:
            v.update(reviewer=SIMULATED, time=TIME)
            if s[i] >= 0 and iou[i] >= accept_iou:
                v["decision"] = "accept"
            elif s[i] >= 0 and _fits(box := _lesion_box(slices.iloc[s[i]], r)):
                v.update(decision="fix", box=box)
            else:
                v["decision"] = "reject"
        rows.append(v)
    return {"format": FORMAT, "version": 1, "page": {"id": "simulated", "fraction": fraction, "seed": seed},
            "verdicts": rows}


def _lesion_box(t, r) -> list[float]:
    """The truth lesion's box on the slice, clipped to the image (the page clips a dragged box alike)."""
    return [round(c, 3) for c in (max(float(t["x1"]), 0.0), max(float(t["y1"]), 0.0),
                                  min(float(t["x2"]), float(r.width)), min(float(t["y2"]), float(r.height)))]


def _fits(box: list[float]) -> bool:
    return box[2] > box[0] and box[3] > box[1]
