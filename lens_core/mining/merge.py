"""Round-2 labels (paper Sec. V-C, Table IV): annotations + mined boxes as ground truth + uncertain
boxes as ignore regions, in one table whose ``label_kind`` tells training what each box is.

``label_kind`` in GT_LIKE_KINDS (gt, mined_cross_slice, mined_intra_patient) is trained as a lesion;
IGNORE_KINDS (uncertain, excluded) are left out of the loss.

A reviewer's verdicts (review.parquet, :mod:`lens_core.review`) change the mined boxes before the merge
(:func:`apply_review`): an accepted box is a lesion, a fixed box is a lesion with the reviewer's box, a
rejected box is dropped, and a box without a verdict is merged as without review.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from lens_core.mining.overlap import overlaps_any, same_slice_iou
from lens_core.label_kinds import GT_LIKE_KINDS, IGNORE_KINDS
from lens_core.mining.schema import conform
from lens_core.mining.verdicts import mined_box_ids

__all__ = ["GT_LIKE_KINDS", "IGNORE_KINDS", "UnknownVerdict", "apply_review", "merge_round2", "training_slices"]


class UnknownVerdict(ValueError):
    """A verdict names a box that no mining table of this merge holds."""


def _drop_self_duplicates(df: pd.DataFrame, iou_threshold: float) -> pd.DataFrame:
    """Drop a box that duplicates an earlier row of the same table on its slice (IoU > threshold)."""
    pairs = same_slice_iou(df, df)
    dup = pairs[(pairs["a_row"] > pairs["b_row"]) & (pairs["iou"] > iou_threshold)]["a_row"].unique()
    return df.drop(index=df.index[dup]).reset_index(drop=True)


def apply_review(mined: Sequence[pd.DataFrame], uncertain: pd.DataFrame | None, review: pd.DataFrame
                 ) -> tuple[pd.DataFrame | None, list[pd.DataFrame], pd.DataFrame | None]:
    """(reviewed lesions, mined tables, uncertain table) after the verdicts of ``review`` (REVIEW_SCHEMA:
    ``box_id, decision`` and the corrected ``x1..y2`` of a fix).

    Accepted and fixed boxes of every strategy leave their table and become reviewed lesions:
    ``label_kind = gt`` (a person's annotation now; ``source_rule`` still says which strategy mined it),
    a fix with the reviewer's box on the same slice. Rejected boxes are dropped: a mined lesion that is
    not one is no longer trained as a lesion, and a rejected uncertain box is no longer an ignore region,
    so its area trains as background (a negative region) wherever its slice is trained, and the FPR can
    take it as a false positive. Boxes without a verdict stay where they were. A verdict whose box id
    is none of these tables' boxes is an UnknownVerdict (a ValueError): it was made on another mining output.
    """
    tables = [conform(t) for t in mined] + ([conform(uncertain)] if uncertain is not None else [])
    ids = [mined_box_ids(t) for t in tables]
    verdict = review.drop_duplicates("box_id", keep="last").set_index("box_id")
    unknown = verdict.index.difference(pd.Index(np.concatenate(ids) if ids else []))
    if len(unknown):
        raise UnknownVerdict(f"verdict for box {unknown[0]}: no mined box has this id ({len(unknown)} such verdicts; "
                         "they were made on another mining output: review the new page and import again)")
    reviewed, kept = [], []
    for t, tid in zip(tables, ids):
        d = verdict["decision"].reindex(tid).to_numpy()
        fix = d == "fix"
        if fix.any():
            t = t.copy()
            t.loc[fix, ["x1", "y1", "x2", "y2"]] = verdict.loc[tid[fix], ["x1", "y1", "x2", "y2"]].to_numpy(float)
        yes = (d == "accept") | fix
        reviewed.append(t[yes].assign(label_kind="gt"))
        kept.append(t[pd.isna(d)].reset_index(drop=True))
    reviewed = pd.concat(reviewed, ignore_index=True) if reviewed else None
    if uncertain is not None:
        return reviewed, kept[:-1], kept[-1]
    return reviewed, kept, None


def merge_round2(annotations: pd.DataFrame, mined: Sequence[pd.DataFrame], uncertain: pd.DataFrame | None = None,
                 iou_threshold: float = 0.5, review: pd.DataFrame | None = None) -> pd.DataFrame:
    """labels_round2: one MINING_SCHEMA table, sorted by (volume_id, z).

    annotations: the dataset's own lesions table (kept unchanged). mined: mining tables in priority
    order (cross_slice before intra_patient: its evidence, spatial continuity on the same scan, is the
    stronger one); a mined box that duplicates an annotation or a higher-priority mined box on its
    slice (IoU > iou_threshold) is dropped, so one lesion is not trained twice on a slice. uncertain:
    cross-dataset boxes; any that overlaps a ground-truth-like box is dropped (an ignore region must
    not take a lesion out of the loss). review: a reviewer's verdicts (:func:`apply_review`); the
    reviewed lesions come before every mined table.
    """
    if review is not None and len(review):
        reviewed, mined, uncertain = apply_review(mined, uncertain, review)
        mined = [reviewed, *mined] if reviewed is not None else mined
    kept = conform(annotations)
    if not kept["label_kind"].isin(GT_LIKE_KINDS + IGNORE_KINDS).all():
        bad = kept.loc[~kept["label_kind"].isin(GT_LIKE_KINDS + IGNORE_KINDS), "label_kind"].iloc[0]
        raise ValueError(f"unknown label_kind {bad!r} in the annotations")
    for table in mined:
        t = conform(table)
        if not t["label_kind"].isin(GT_LIKE_KINDS).all():
            raise ValueError(f"a mined table holds label_kind {sorted(set(t['label_kind']) - set(GT_LIKE_KINDS))}")
        t = t[~overlaps_any(t, kept, iou_threshold)].reset_index(drop=True) if len(kept) else t
        kept = pd.concat([kept, _drop_self_duplicates(t, iou_threshold)], ignore_index=True)
    if uncertain is not None and len(uncertain):
        u = conform(uncertain)
        if not (u["label_kind"] == "uncertain").all():
            raise ValueError("the uncertain table holds boxes whose label_kind is not 'uncertain'")
        gt_like = kept[kept["label_kind"].isin(GT_LIKE_KINDS)].reset_index(drop=True)
        u = u[~overlaps_any(u, gt_like, 0.0)] if len(gt_like) else u
        kept = pd.concat([kept, u], ignore_index=True)
    return conform(kept.sort_values(["volume_id", "z"], kind="stable"))


def training_slices(labels: pd.DataFrame) -> pd.DataFrame:
    """One row per (volume_id, z) that holds a box: ``n_gt`` ground-truth-like boxes, ``n_ignore``
    ignore boxes, and ``unlabeled`` (no ground-truth-like box: a slice that only cross-dataset mining
    brings into training, Table IV last row). Uses each box's slice ``z``."""
    gt = labels["label_kind"].isin(GT_LIKE_KINDS).to_numpy()
    ign = labels["label_kind"].isin(IGNORE_KINDS).to_numpy()
    out = (pd.DataFrame({"volume_id": labels["volume_id"].to_numpy(), "z": labels["z"].to_numpy(np.int64),
                         "n_gt": gt.astype(np.int64), "n_ignore": ign.astype(np.int64)})
           .groupby(["volume_id", "z"], as_index=False, sort=True).sum())
    out["unlabeled"] = out["n_gt"] == 0
    return out
