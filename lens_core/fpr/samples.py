"""TP / FP samples for training the FPR network (paper Sec. VI-B, Sec. IV-D).

A 3D proposal of round-2 LENS on the training set is a

* TP when its key-slice IoU (Sec. V-A: on some slice it spans, its x/y box against a 2D label box on
  that slice) with an annotation or a mined box is > theta (0.5);
* FP when its IoU is < theta_FP (0.3) with every annotation, mined box and uncertain box on every
  slice it spans -- in a partially labelled set a hard negative may be a missed lesion, so anything
  a label or the mining flagged is never a negative;
* neither (not used) otherwise.

Each epoch uses every TP once (or a fixed number of TP draws) and twice as many FPs (1:2), see
:func:`epoch_samples`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lens_core.boxes import pairwise_iou
from lens_core.label_kinds import GT_LIKE_KINDS

TP, FP, UNUSED = 1, 0, -1
THETA, THETA_FP = 0.5, 0.3


def label_spans(labels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Slice range ``[z1, z2)`` of every label row: a 2D row (kind ``2d`` or no z1/z2) covers its
    slice ``z``; a 3D row every slice of its range, with its x/y box."""
    z = labels["z"].to_numpy(np.float64)
    if "z1" in labels and "z2" in labels:
        z1 = labels["z1"].to_numpy(np.float64)
        z2 = labels["z2"].to_numpy(np.float64)
        missing = ~(np.isfinite(z1) & np.isfinite(z2))
        if "kind" in labels:
            missing |= labels["kind"].to_numpy() == "2d"
        z1, z2 = np.where(missing, z, z1), np.where(missing, z + 1, z2)
    else:
        z1, z2 = z, z + 1
    return z1, z2


def key_slice_iou(proposals: pd.DataFrame, labels: pd.DataFrame) -> np.ndarray:
    """``[N, M]``: the best IoU of proposal i's x/y box with label j's box over the slices both span
    (0 where they share no slice or no volume). ``proposals``: 3D boxes (x1, y1, z1, x2, y2, z2);
    ``labels``: label rows (x1, y1, x2, y2 on slice z, or a z1..z2 range)."""
    out = np.zeros((len(proposals), len(labels)))
    if not len(proposals) or not len(labels):
        return out
    lz1, lz2 = label_spans(labels)
    pv = proposals["volume_id"].to_numpy()
    lv = labels["volume_id"].to_numpy()
    xy = ["x1", "y1", "x2", "y2"]
    pb, lb = proposals[xy].to_numpy(np.float64), labels[xy].to_numpy(np.float64)
    pz1, pz2 = proposals["z1"].to_numpy(np.float64), proposals["z2"].to_numpy(np.float64)
    lab_rows = pd.Series(np.arange(len(labels))).groupby(lv).indices
    for vol, pi in pd.Series(np.arange(len(proposals))).groupby(pv).indices.items():
        li = lab_rows.get(vol)
        if li is None:
            continue
        iou = pairwise_iou(pb[pi], lb[li])  # the same x/y box on every slice the proposal spans
        share = (np.maximum(pz1[pi, None], lz1[None, li]) < np.minimum(pz2[pi, None], lz2[None, li]))
        out[np.ix_(pi, li)] = np.where(share, iou, 0.0)
    return out


def label_proposals(proposals: pd.DataFrame, labels: pd.DataFrame, theta: float = THETA,
                    theta_fp: float = THETA_FP, gt_kinds=GT_LIKE_KINDS) -> np.ndarray:
    """TP (1), FP (0) or unused (-1) for every proposal (module doc). Label rows whose ``label_kind``
    is in ``gt_kinds`` (annotations and mined boxes) make TPs; every label row, whatever its kind
    (uncertain, excluded, ...), blocks FPs."""
    if not 0 <= theta_fp <= theta <= 1:
        raise ValueError(f"need 0 <= theta_fp <= theta <= 1, got theta={theta}, theta_fp={theta_fp}")
    iou = key_slice_iou(proposals, labels)
    gt_like = labels["label_kind"].isin(list(gt_kinds)).to_numpy() if len(labels) else np.zeros(0, bool)
    best_gt = np.where(gt_like[None], iou, 0.0).max(1, initial=0.0)
    best_any = iou.max(1, initial=0.0)
    out = np.full(len(proposals), UNUSED, np.int8)
    out[best_any < theta_fp] = FP
    out[best_gt > theta] = TP
    return out


def _draw(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` items of ``pool``: without replacement when it is large enough, else whole shuffled
    passes over it (every item used equally often, +-1)."""
    reps = -(-n // len(pool)) if len(pool) else 0
    return np.concatenate([rng.permutation(pool) for _ in range(reps)])[:n] if reps else pool[:0]


def epoch_samples(y: np.ndarray, epoch: int, seed: int = 0, fp_per_tp: float = 2.0,
                  tp_per_epoch: int | None = None) -> np.ndarray:
    """Indices of one epoch's samples, shuffled: ``tp_per_epoch`` TPs (None: every TP once, the
    paper) and ``fp_per_tp`` times as many FPs (Sec. VI-B: 1:2). A pool smaller than its share is
    repeated (augmentation makes the repeats differ). Deterministic in (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    tp, fp = np.flatnonzero(y == TP), np.flatnonzero(y == FP)
    if not len(tp) or not len(fp):
        raise ValueError(f"need both TP and FP samples, got {len(tp)} TP and {len(fp)} FP")
    n_tp = len(tp) if tp_per_epoch is None else int(tp_per_epoch)
    n_fp = int(round(n_tp * fp_per_tp))
    return rng.permutation(np.concatenate([_draw(tp, n_tp, rng), _draw(fp, n_fp, rng)]))
