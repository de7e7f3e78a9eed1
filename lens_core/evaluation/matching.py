"""Matching predictions to the ground truth of their own unit (image, sub-volume or scan).

Shared by the box protocols (LENS 3D IoBB, DeepLesion 2D IoU). Ground truths are grouped by unit
once; a small numba kernel then compares each prediction with the ground truths of its own unit
only, and keeps, per ground truth, the best score of a prediction matching it and, per prediction,
whether it matched anything. The kernel is the per-pair arithmetic of :mod:`lens_core.boxes`
(tests/test_evaluation_matching.py checks it against ``boxes.pairwise_iobb``/``pairwise_iou``);
the same computation as numpy arrays over all same-unit pairs was 5x slower at the paper's scale
(800 sub-volumes x 50 detections), which the 20x target of benchmarks/froc_speed.py cannot afford.
"""

from __future__ import annotations

import logging

import numba
import numpy as np
import pandas as pd

from lens_core.boxes.ops_nb import row_intersection, row_volume
from lens_core.evaluation import inputs
from lens_core.evaluation.froc import Matching, group_by_unit

log = logging.getLogger(__name__)

OVERLAPS = ("iobb", "iou")


@numba.njit(cache=True)
def _match_kernel(pred_boxes, pred_unit, scores, gt_boxes, gt_order, gt_start, gt_count, use_iou, threshold,
                  hit, is_fp):  # pragma: no cover - compiled; NUMBA_DISABLE_JIT=1 runs it as Python
    """Boxes ``[N, 2D]`` (x2 exclusive). Fills ``hit[G]`` (start -inf) and ``is_fp[N]``."""
    d = pred_boxes.shape[1] // 2
    for i in range(pred_boxes.shape[0]):
        u = pred_unit[i]
        vol = row_volume(pred_boxes, i, d)
        matched = False
        for k in range(gt_start[u], gt_start[u] + gt_count[u]):
            j = gt_order[k]
            inter = row_intersection(pred_boxes, i, gt_boxes, j, d)
            if inter == 0.0:
                continue  # disjoint: overlap 0 is below any (positive) threshold
            if use_iou:
                gvol = row_volume(gt_boxes, j, d)
                ratio = inter / (vol + gvol - inter)
            else:
                ratio = inter / vol  # IoBB: over the predicted box (Sec. VI-C)
            if ratio >= threshold:
                matched = True
                if scores[i] > hit[j]:
                    hit[j] = scores[i]
        is_fp[i] = not matched


def match_pairs(pred_boxes, pred_unit, scores, gt_boxes, gt_unit, n_units: int, overlap: str, threshold: float):
    """Hit score of every ground truth (``-inf`` if none) and FP flag of every prediction.

    A prediction is an FP when no ground truth of its unit overlaps it by ``>= threshold``; a ground
    truth's hit score is the best score of the predictions that do. Boxes are validated
    ``[N, 4]``/``[N, 6]`` float arrays with positive extents; units are codes in ``[0, n_units)``.
    """
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap must be one of {OVERLAPS}, got {overlap!r}")
    if not threshold > 0:
        raise ValueError(f"the {overlap} threshold must be positive, got {threshold}")
    pred_boxes = np.ascontiguousarray(pred_boxes, dtype=np.float64)
    gt_boxes = np.ascontiguousarray(gt_boxes, dtype=np.float64).reshape(-1, pred_boxes.shape[1])
    gt_order, gt_start, gt_count = group_by_unit(gt_unit, n_units)
    hit = np.full(len(gt_boxes), -np.inf)
    is_fp = np.zeros(len(pred_boxes), dtype=np.bool_)
    _match_kernel(pred_boxes, np.asarray(pred_unit, dtype=np.intp), np.asarray(scores, dtype=np.float64),
                  gt_boxes, gt_order, gt_start.astype(np.intp), gt_count.astype(np.intp),
                  overlap == "iou", float(threshold), hit, is_fp)
    return hit, is_fp


def excluded_mask(truth: pd.DataFrame) -> np.ndarray:
    """Findings that count as neither positive nor negative (LUNA16 ``annotations_excluded``)."""
    if "label_kind" in truth.columns:
        return (truth["label_kind"] == "excluded").to_numpy()
    if "excluded" in truth.columns:
        return truth["excluded"].fillna(False).to_numpy(dtype=bool)
    return np.zeros(len(truth), dtype=bool)


def resolve_units(pred: pd.DataFrame, truth: pd.DataFrame, unit: str, units=None):
    """The evaluated units and the rows of ``pred``/``truth`` that belong to them.

    Without an explicit list, every unit seen in either table is evaluated (units without findings
    must then be listed explicitly, or they are missing from the FP denominator). With a list,
    rows of other units are dropped (e.g. detections on validation volumes) -- loudly.
    """
    inputs.require_columns(pred, [unit], "predictions")
    inputs.require_columns(truth, [unit], "ground truth")
    if units is None:
        units = pd.unique(pd.concat([truth[unit], pred[unit]], ignore_index=True))
    index = pd.Index(pd.unique(pd.Series(list(units), dtype=object)))
    if len(index) == 0:
        raise ValueError("no units (images / sub-volumes / scans) to evaluate")
    units = index.to_numpy(dtype=object)
    pred_code, gt_code = _codes(index, pred[unit]), _codes(index, truth[unit])
    for name, code, df in (("predictions", pred_code, pred), ("ground truth", gt_code, truth)):
        outside = int((code < 0).sum())
        if outside:
            log.warning("%d %s rows are outside the %d evaluated units; ignored", outside, name, len(units))
            if outside == len(df):
                raise ValueError(
                    f"{inputs.where(df, name)}: none of its {unit!r} values is an evaluated unit "
                    f"(e.g. {df[unit].iloc[0]!r}); check the ids"
                )
    return units, pred_code, gt_code


def _codes(index: pd.Index, values: pd.Series) -> np.ndarray:
    """Position of each value in ``index`` (-1 if absent); hashes each distinct id once."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    lookup = np.append(index.get_indexer(uniques), -1)  # code -1 (missing id) -> -1
    return lookup[codes]


def match_boxes(
    protocol: str,
    pred: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    unit: str,
    box_columns: list[str],
    overlap: str,
    threshold: float,
    fp_rates,
    units=None,
    unit_info: pd.DataFrame | None = None,
) -> Matching:
    """Match box predictions to box ground truth: a pair matches when ``overlap >= threshold``."""
    # validate whole tables first, so that error messages give the row number of the file
    pred_boxes = inputs.boxes(pred, box_columns, "predictions")
    gt_boxes = inputs.boxes(truth, box_columns, "ground truth")
    scores = inputs.numeric(pred, ["score"], "predictions")[:, 0]
    excluded = excluded_mask(truth)
    units, pred_code, gt_code = resolve_units(pred, truth, unit, units)
    keep_p, keep_g = pred_code >= 0, gt_code >= 0
    if not keep_p.all():
        pred_boxes, scores, pred_code = pred_boxes[keep_p], scores[keep_p], pred_code[keep_p]
    if not keep_g.all():
        gt_boxes, excluded, truth, gt_code = gt_boxes[keep_g], excluded[keep_g], truth.loc[keep_g], gt_code[keep_g]

    hit, is_fp = match_pairs(pred_boxes, pred_code, scores, gt_boxes, gt_code, len(units), overlap, threshold)
    hit[excluded] = -np.inf  # excluded findings are never "found"; they only spare their marks

    gt = truth.loc[~excluded] if excluded.any() else truth
    gt = gt.assign(unit_index=gt_code[~excluded], hit_score=hit[~excluded])
    fps = pd.DataFrame({"unit_index": pred_code[is_fp], "score": scores[is_fp]})
    return Matching(
        protocol=protocol,
        truth=gt,
        false_positives=fps,
        units=units,
        fp_rates=tuple(fp_rates),
        unit_info=unit_info,
        meta={"overlap": overlap, "threshold": threshold, "n_predictions": int(len(scores))},
    )
