"""FROC core shared by the three protocols (paper Sec. VI-C; LUNA16 [14]; DeepLesion [9]).

Every protocol of the field reduces to the same two facts once predictions have been matched to
the ground truth of their own image / sub-volume / scan:

- each ground truth's *hit score*: the highest score of a prediction that hits it (``-inf`` when
  none does) -- the lesion is found at every threshold at or below it;
- the scores of the *false positives*: predictions that match no finding at all (a prediction that
  only touches already-found lesions, or an excluded finding, is neither hit nor FP).

Ranking all predictions by score and walking down the list (the paper's description) therefore
gives, at threshold ``t``: ``TP(t) = #{gt: hit_score >= t}``, ``FP(t) = #{fp: score >= t}``. An
operating point exists only between distinct scores, so tied predictions enter the curve together
(as in ``sklearn.metrics.roc_curve`` used by the LUNA16 script) and the result never depends on
the order of rows or sub-volumes.

The curve starts at the operating point "keep nothing" (0 FPs, sensitivity 0). Sensitivity at an
FP rate is the linear interpolation on the curve (the polyline through the operating points in
threshold order); exactly at the FP rate of a vertical run (several lesions found before the next
FP) its top is taken; 0 left of the curve and its last value right of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: The paper's FP rates per sub-volume (Sec. VI-C), also LUNA16's CPM rates per scan.
LENS_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: DeepLesion's official FP rates per image.
DEEPLESION_FP_RATES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

CURVE_COLUMNS = ["threshold", "n_fp", "n_tp", "fp_rate", "sensitivity"]


@dataclass
class Matching:
    """Outcome of matching predictions to ground truth under one protocol.

    ``truth``: the evaluated ground-truth rows (excluded findings removed) with columns
    ``unit_index`` (position in ``units``) and ``hit_score``; ``false_positives``: one row per FP
    prediction (``unit_index``, ``score``); ``units``: every evaluated image / sub-volume / scan,
    including those without findings;
    ``unit_info``: optional per-unit attributes indexed by unit (e.g. ``dataset``).
    """

    protocol: str
    truth: pd.DataFrame
    false_positives: pd.DataFrame
    units: np.ndarray
    fp_rates: tuple[float, ...]
    unit_info: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        return len(self.units)


def _check_scores(gt_hit_scores, fp_scores):
    hit = np.asarray(gt_hit_scores, dtype=np.float64)
    fps = np.asarray(fp_scores, dtype=np.float64)
    if np.isnan(hit).any() or np.isnan(fps).any():
        raise ValueError("scores must not be NaN")
    return hit, fps


def operating_points(gt_hit_scores, fp_scores):
    """``(threshold, n_fp, n_tp)`` at every distinct score (descending), after ``(inf, 0, 0)``.

    Counting, not walking: ``TP(t) = #{hit_score >= t}``, ``FP(t) = #{fp score >= t}``.
    """
    hit, fps = _check_scores(gt_hit_scores, fp_scores)
    tp = np.sort(hit[np.isfinite(hit)])
    fp = np.sort(fps)
    thr = np.unique(np.concatenate([tp, fp]))[::-1]
    n_tp = len(tp) - np.searchsorted(tp, thr, side="left")
    n_fp = len(fp) - np.searchsorted(fp, thr, side="left")
    return np.r_[np.inf, thr], np.r_[0, n_fp].astype(np.float64), np.r_[0, n_tp].astype(np.float64)


def ranked_items(gt_hit_scores, fp_scores, gt_units=None, fp_units=None):
    """Found lesions and FPs merged and ranked by score (descending), for weighted curves.

    Returns ``scores, is_tp, units`` (``units`` only when given) so that a bootstrap draw can
    reweight items by their unit and call :func:`weighted_operating_points` without sorting again.
    """
    hit, fps = _check_scores(gt_hit_scores, fp_scores)
    found = np.isfinite(hit)
    scores = np.concatenate([hit[found], fps])
    is_tp = np.r_[np.ones(found.sum(), bool), np.zeros(len(fps), bool)]
    order = np.argsort(-scores)  # order inside a tie is irrelevant: ties enter the curve together
    units = None
    if gt_units is not None:
        units = np.concatenate([np.asarray(gt_units)[found], np.asarray(fp_units)])[order]
    return scores[order], is_tp[order], units


def weighted_operating_points(scores, tp_weight, fp_weight):
    """:func:`operating_points` of ranked items where each item counts ``weight`` times."""
    last_of_tie = np.ones(len(scores), dtype=bool)
    last_of_tie[:-1] = scores[1:] != scores[:-1]
    thr = np.r_[np.inf, scores[last_of_tie]]
    n_fp = np.r_[0.0, np.cumsum(fp_weight)[last_of_tie]]
    n_tp = np.r_[0.0, np.cumsum(tp_weight)[last_of_tie]]
    return thr, n_fp, n_tp


def froc_curve(gt_hit_scores, fp_scores, n_units: int) -> pd.DataFrame:
    """The FROC curve: one row per operating point, columns :data:`CURVE_COLUMNS`.

    ``gt_hit_scores``: ``[G]`` hit score of every ground truth (``-inf`` if never hit);
    ``fp_scores``: ``[F]`` scores of the false positives; ``n_units``: number of images /
    sub-volumes / scans FPs are averaged over. Sensitivity is NaN when there is no ground truth.
    """
    if n_units <= 0:
        raise ValueError(f"n_units must be positive, got {n_units}")
    n_gt = len(np.asarray(gt_hit_scores))
    thr, n_fp, n_tp = operating_points(gt_hit_scores, fp_scores)
    sens = n_tp / n_gt if n_gt > 0 else np.full(len(n_tp), np.nan)
    return pd.DataFrame(
        {"threshold": thr, "n_fp": n_fp, "n_tp": n_tp, "fp_rate": n_fp / n_units, "sensitivity": sens}
    )


def interpolate_sensitivity(fp_rate, sensitivity, fp_rates) -> np.ndarray:
    """Sensitivity at each of ``fp_rates`` by linear interpolation on a curve (module docstring).

    ``fp_rate``/``sensitivity`` are the curve's points in threshold order (non-decreasing).
    """
    x = np.asarray(fp_rate, dtype=np.float64)
    y = np.asarray(sensitivity, dtype=np.float64)
    q = np.asarray(fp_rates, dtype=np.float64)
    if len(x) == 0:
        return np.zeros(len(q))
    if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
        raise ValueError("a FROC curve must be non-decreasing in FP rate and sensitivity")
    # A vertical run (same FP rate) is entered at its bottom point and left from its top point.
    first = np.ones(len(x), dtype=bool)
    first[1:] = x[1:] != x[:-1]
    last = np.ones(len(x), dtype=bool)
    last[:-1] = x[1:] != x[:-1]
    ux, bottom, top = x[first], y[first], y[last]
    j = np.searchsorted(ux, q, side="right") - 1  # the last distinct FP rate <= q
    inside = (j >= 0) & (j < len(ux) - 1)
    out = np.where(j < 0, 0.0, top[np.clip(j, 0, None)])  # 0 left of the curve, top at/after a point
    ji = j[inside]
    x0, x1 = ux[ji], ux[ji + 1]
    out[inside] = top[ji] + (bottom[ji + 1] - top[ji]) * (q[inside] - x0) / (x1 - x0)
    return out


def sensitivity_at(curve: pd.DataFrame, fp_rates=LENS_FP_RATES) -> np.ndarray:
    """Sensitivity of ``curve`` (from :func:`froc_curve`) at each FP rate."""
    return interpolate_sensitivity(curve["fp_rate"], curve["sensitivity"], fp_rates)


def average_sensitivity(curve: pd.DataFrame, fp_rates=LENS_FP_RATES) -> float:
    """Mean sensitivity over ``fp_rates`` (the paper's "average sensitivity"; LUNA16's CPM)."""
    return float(np.mean(sensitivity_at(curve, fp_rates)))


def group_by_unit(gt_units, n_units: int):
    """Ground truths grouped by unit: ``(order, start, count)`` -- unit ``u``'s ground truths are
    ``order[start[u]:start[u] + count[u]]``."""
    g = np.asarray(gt_units, dtype=np.intp)
    order = np.argsort(g, kind="stable")
    count = np.bincount(g, minlength=n_units)
    return order, np.cumsum(count) - count, count


def pair_candidates(pred_units, gt_units) -> tuple[np.ndarray, np.ndarray]:
    """Every (prediction, ground truth) index pair that shares a unit, listed without a Python loop.

    ``pred_units``/``gt_units``: integer unit codes. Returns ``(pred_idx, gt_idx)``.
    """
    u = np.asarray(pred_units, dtype=np.intp)
    n_units = int(max(u.max(initial=-1), np.max(gt_units, initial=-1))) + 1
    gt_order, gt_start, gt_count = group_by_unit(gt_units, n_units)
    count = gt_count[u]
    pred_idx = np.repeat(np.arange(len(u)), count)
    # pair k of prediction i takes the (k - first pair of i)-th ground truth of its unit
    shift = np.repeat(gt_start[u] - (np.cumsum(count) - count), count)
    gt_idx = gt_order[np.arange(len(pred_idx)) + shift]
    return pred_idx, gt_idx


def collect_hits(
    n_pred: int,
    n_gt: int,
    pred_idx: np.ndarray,
    gt_idx: np.ndarray,
    is_match: np.ndarray,
    pred_scores: np.ndarray,
    gt_excluded: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Hit score of every ground truth and the FP flag of every prediction from matched pairs.

    A prediction matching any finding (an excluded one included) is not an FP; a ground truth's
    hit score is the best score among the predictions matching it.
    """
    p, g = pred_idx[is_match], gt_idx[is_match]
    is_fp = np.bincount(p, minlength=n_pred) == 0
    hit = np.full(n_gt, -np.inf)
    np.maximum.at(hit, g, np.asarray(pred_scores, dtype=np.float64)[p])
    if gt_excluded is not None:
        hit[np.asarray(gt_excluded, dtype=bool)] = -np.inf
    return hit, is_fp
