"""The LUNA16 protocol [14] for the single-type datasets (paper Sec. VI-E), as its official script.

- at most 100 marks (the highest scores) per scan are kept;
- a mark hits a nodule when its distance to the nodule centre is below the nodule's radius;
  a nodule hit by several marks takes the best score, the other marks are neither TP nor FP;
- a mark on an excluded finding (``annotations_excluded.csv``; diameter < 0 means 10 mm, as in the
  script) counts as neither TP nor FP; a missed nodule still counts in the denominator;
- CPM = mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8 FPs per scan; optional bootstrap interval
  (scans resampled with replacement).

Marks: ``scan, x, y, z, score`` (mm, any frame shared with the nodules); nodules: ``scan, x, y, z,
diameter_mm`` and optionally ``excluded`` (bool) or ``label_kind`` (``excluded`` rows). Box tables
(pixel coordinates) become points with :func:`points_from_boxes`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lens_core.evaluation import inputs
from lens_core.evaluation.bootstrap import bootstrap_average, from_matching
from lens_core.evaluation.froc import (
    LENS_FP_RATES,
    Matching,
    collect_hits,
    pair_candidates,
)
from lens_core.evaluation.matching import excluded_mask, resolve_units

MAX_MARKS_PER_SCAN = 100
EXCLUDED_DEFAULT_DIAMETER_MM = 10.0
POINT = ["x", "y", "z"]


def points_from_boxes(table: pd.DataFrame, volumes: pd.DataFrame, what: str = "boxes") -> pd.DataFrame:
    """3D pixel boxes (``volume_id``, x1..z2) -> centres and diameters in mm (``scan, x, y, z,
    diameter_mm``), using ``volumes``' ``spacing_x/y/z`` (volumes.parquet). The diameter is the mean
    in-plane extent, the inverse of how the LUNA16 reader builds a box from centre +- diameter/2."""
    inputs.require_columns(volumes, ["volume_id", "spacing_x", "spacing_y", "spacing_z"], "volumes")
    b = inputs.boxes(table, inputs.BOX3D, what)
    sp = volumes.set_index("volume_id")[["spacing_x", "spacing_y", "spacing_z"]]
    inputs.require_columns(table, ["volume_id"], what)
    s = sp.reindex(table["volume_id"].to_numpy()).to_numpy(dtype=np.float64)
    if np.isnan(s).any():
        row = int(np.flatnonzero(np.isnan(s).any(axis=1))[0])
        raise ValueError(f"{inputs.where(table, what)}: row {row}: volume {table['volume_id'].iloc[row]!r} has no spacing")
    centre = (b[:, :3] + b[:, 3:]) / 2 * s
    extent = (b[:, 3:] - b[:, :3]) * s
    out = table.drop(columns=[c for c in inputs.BOX3D if c in table.columns]).copy()
    out["scan"] = table["volume_id"].to_numpy()
    out["x"], out["y"], out["z"] = centre[:, 0], centre[:, 1], centre[:, 2]
    out["diameter_mm"] = extent[:, :2].mean(axis=1)
    return out


def top_marks(marks: pd.DataFrame, max_marks: int = MAX_MARKS_PER_SCAN) -> pd.DataFrame:
    """The ``max_marks`` highest-scoring marks of each scan (ties kept in input order)."""
    ranked = marks.sort_values("score", ascending=False, kind="stable")
    return ranked.loc[ranked.groupby("scan", sort=False).cumcount() < max_marks].sort_index()


def match_luna(
    marks: pd.DataFrame,
    nodules: pd.DataFrame,
    scans=None,
    *,
    max_marks: int = MAX_MARKS_PER_SCAN,
    fp_rates=LENS_FP_RATES,
    unit_info: pd.DataFrame | None = None,
) -> Matching:
    """Match marks to nodules by distance; ``scans`` lists every evaluated scan."""
    inputs.require_columns(marks, ["scan", "score"] + POINT, "marks")
    inputs.require_columns(nodules, ["scan", "diameter_mm"] + POINT, "nodules")
    inputs.numeric(marks, ["score"] + POINT, "marks")
    inputs.numeric(nodules, POINT + ["diameter_mm"], "nodules")
    marks = top_marks(marks, max_marks)
    units, m_code, n_code = resolve_units(marks, nodules, "scan", scans)
    marks, m_code = marks.loc[m_code >= 0], m_code[m_code >= 0]
    nodules, n_code = nodules.loc[n_code >= 0], n_code[n_code >= 0]
    mp = marks[POINT].to_numpy(dtype=np.float64)
    score = marks["score"].to_numpy(dtype=np.float64)
    npnt = nodules[POINT + ["diameter_mm"]].to_numpy(dtype=np.float64)
    excluded = excluded_mask(nodules)
    diameter = npnt[:, 3].copy()
    bad = (diameter <= 0) & ~excluded
    if bad.any():
        raise ValueError(f"{inputs.where(nodules, 'nodules')}: row {int(np.flatnonzero(bad)[0])}: diameter must be positive")
    diameter[(diameter < 0) & excluded] = EXCLUDED_DEFAULT_DIAMETER_MM

    pi, ni = pair_candidates(m_code, n_code)
    dist2 = ((mp[pi] - npnt[ni, :3]) ** 2).sum(axis=1)
    is_match = dist2 < (diameter[ni] / 2) ** 2
    hit, is_fp = collect_hits(len(marks), len(nodules), pi, ni, is_match, score, excluded)

    gt = nodules.loc[~excluded].reset_index(drop=True).assign(unit_index=n_code[~excluded], hit_score=hit[~excluded])
    fps = pd.DataFrame({"unit_index": m_code[is_fp], "score": score[is_fp]})
    return Matching(
        protocol="luna",
        truth=gt,
        false_positives=fps,
        units=units,
        fp_rates=tuple(fp_rates),
        unit_info=unit_info,
        meta={"max_marks": max_marks, "n_predictions": int(len(marks))},
    )


def bootstrap_cpm(matching: Matching, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """CPM with a percentile bootstrap interval over scans (each scan its own patient; resampled with
    replacement): ``low``, ``high`` and each rate's ``rate_low``, ``rate_high``. Grouping scans by patient:
    :func:`lens_core.evaluation.bootstrap.bootstrap_average`."""
    return bootstrap_average(from_matching(matching, patients=matching.units), n_boot=n_boot, seed=seed, level=level)
