"""A plain, obviously-correct FROC: the paper's sentence (Sec. VI-C) turned into a Python loop.

Used by tests/test_evaluation_real_scale.py and benchmarks/froc_speed.py to check the vectorised
evaluator (lens_core.evaluation) on the same input. Deliberately slow and simple: no numpy in the
matching, one prediction at a time, every ground truth of the sub-volume checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).parent / "data" / "deeplesion-manual-3d"
BOX3D = ["x1", "y1", "z1", "x2", "y2", "z2"]


def plain_iobb(pred, gt):
    """Intersection over the predicted box's volume; boxes (x1, y1, z1, x2, y2, z2), x2 exclusive."""
    inter = 1.0
    for a in range(3):
        lo = max(pred[a], gt[a])
        hi = min(pred[a + 3], gt[a + 3])
        if hi <= lo:
            return 0.0
        inter = inter * (hi - lo)
    volume = (pred[3] - pred[0]) * (pred[4] - pred[1]) * (pred[5] - pred[2])
    return inter / volume


def plain_sensitivity_at(curve, rate):
    """Linear interpolation on the curve [(fp_rate, sensitivity), ...]; top of vertical runs."""
    before = [p for p in curve if p[0] <= rate]
    after = [p for p in curve if p[0] > rate]
    if not before:
        return 0.0
    x0, y0 = before[-1]  # the curve rises monotonically: the last such point is the highest
    if not after:
        return y0
    x1, y1 = after[0]
    return y0 + (y1 - y0) * (rate - x0) / (x1 - x0)


def plain_froc(preds, gts, subvolumes, threshold=0.3, fp_rates=(0.125, 0.25, 0.5, 1, 2, 4, 8)):
    """``preds``: list of (subvolume, box, score); ``gts``: list of (subvolume, box).

    Returns ``(curve, sensitivities)``; ``curve`` lists (n_fp, n_hit) after each distinct score.
    """
    gts_of = {sv: [] for sv in subvolumes}
    for sv, box in gts:
        gts_of[sv].append(box)
    already_hit = {sv: [False] * len(boxes) for sv, boxes in gts_of.items()}
    order = sorted(range(len(preds)), key=lambda i: -preds[i][2])  # all predictions ranked by score
    n_fp = n_hit = 0
    curve = [(0, 0)]
    for k, i in enumerate(order):
        sv, box, score = preds[i]
        overlaps = [plain_iobb(box, g) for g in gts_of[sv]]
        if not overlaps or max(overlaps) < threshold:
            n_fp += 1  # no lesion in its sub-volume, or none covered enough: a false positive
        else:
            for j, overlap in enumerate(overlaps):
                if overlap >= threshold and not already_hit[sv][j]:
                    already_hit[sv][j] = True
                    n_hit += 1
        is_last_of_its_score = k + 1 == len(order) or preds[order[k + 1]][2] != score
        if is_last_of_its_score:  # an operating point lies only between distinct scores
            curve.append((n_fp, n_hit))
    points = [(fp / len(subvolumes), hit / len(gts)) for fp, hit in curve]
    return curve, [plain_sensitivity_at(points, r) for r in fp_rates]


def as_lists(pred: pd.DataFrame, truth: pd.DataFrame):
    """DataFrames -> the plain lists :func:`plain_froc` takes."""
    preds = [(r.subvolume, tuple(getattr(r, c) for c in BOX3D), r.score) for r in pred.itertuples()]
    gts = [(r.subvolume, tuple(getattr(r, c) for c in BOX3D)) for r in truth.itertuples()]
    return preds, gts


def synthetic_predictions(truth: pd.DataFrame, subvolumes, subvolumes_csv, per_subvolume: int = 50,
                          seed: int = 0) -> pd.DataFrame:
    """Detections from jittered ground truth plus random false positives, ~``per_subvolume`` each.

    80% of lesions get a jittered box (centre shifted, size scaled), 20% of those a duplicate; the
    rest are random boxes of lesion-like sizes inside the sub-volume. Scores are rounded to 3
    decimals, so ties occur.
    """
    rng = np.random.default_rng(seed)
    subs = pd.read_csv(subvolumes_csv)
    subs = subs.loc[subs["subvolume"].isin(set(subvolumes))]

    found = truth.loc[rng.random(len(truth)) < 0.8]
    found = pd.concat([found, found.loc[rng.random(len(found)) < 0.2]], ignore_index=True)
    lo, hi = found[BOX3D[:3]].to_numpy(), found[BOX3D[3:]].to_numpy()
    size = hi - lo
    centre = (lo + hi) / 2 + rng.normal(0, 0.2, size.shape) * size
    size = size * rng.uniform(0.5, 1.5, size.shape)
    tp = pd.DataFrame(np.hstack([centre - size / 2, centre + size / 2]), columns=BOX3D)
    tp["subvolume"] = found["subvolume"].to_numpy()
    tp["score"] = rng.uniform(0.2, 1.0, len(tp))

    n_fp = max(per_subvolume * len(subs) - len(tp), 0)
    row = rng.integers(0, len(subs), n_fp)
    first = subs["first_slice"].to_numpy()[row].astype(float)
    last = subs["last_slice"].to_numpy()[row].astype(float) + 1
    wh = rng.uniform(5, 60, (n_fp, 2))
    depth = rng.uniform(1, 8, n_fp)
    x1 = rng.uniform(0, 512 - wh[:, 0])
    y1 = rng.uniform(0, 512 - wh[:, 1])
    z1 = first + rng.uniform(0, 1, n_fp) * np.maximum(last - first - depth, 0)
    fp = pd.DataFrame({"x1": x1, "y1": y1, "z1": z1, "x2": x1 + wh[:, 0], "y2": y1 + wh[:, 1], "z2": z1 + depth})
    fp["subvolume"] = subs["subvolume"].to_numpy()[row]
    fp["score"] = rng.uniform(0.0, 0.9, n_fp)

    pred = pd.concat([tp, fp], ignore_index=True)
    pred["score"] = pred["score"].round(3)
    return pred.sample(frac=1.0, random_state=seed).reset_index(drop=True)
