"""One entry point over the three protocols: match, stratify, summarise, write."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lens_core.evaluation import inputs
from lens_core.evaluation.deeplesion2d import match_deeplesion2d
from lens_core.evaluation.froc import DEEPLESION_FP_RATES, LENS_FP_RATES, Matching
from lens_core.evaluation.lens3d import match_lens3d
from lens_core.evaluation.bootstrap import bootstrap_average, from_matching, matches_table
from lens_core.evaluation.luna import match_luna
from lens_core.evaluation.plots import plot_froc
from lens_core.evaluation.stratify import LESION_STRATA, UNIT_STRATA, froc_table
from lens_core.evaluation.tables import summarize, to_markdown

PROTOCOLS = {
    "lens3d": {"fp_rates": LENS_FP_RATES, "threshold": 0.3},
    "deeplesion2d": {"fp_rates": DEEPLESION_FP_RATES, "threshold": 0.5},
    "luna": {"fp_rates": LENS_FP_RATES, "threshold": None},
}


def match(pred: pd.DataFrame, truth: pd.DataFrame, protocol: str, *, units=None, unit_info=None,
          threshold: float | None = None, fp_rates=None, unit: str | None = None,
          max_marks: int = 100) -> Matching:
    """Dispatch to :func:`match_lens3d`, :func:`match_deeplesion2d` or :func:`match_luna`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {sorted(PROTOCOLS)}")
    spec = PROTOCOLS[protocol]
    fp_rates = tuple(fp_rates or spec["fp_rates"])
    thr = spec["threshold"] if threshold is None else threshold
    if protocol == "lens3d":
        if unit is None:
            unit = "subvolume" if "subvolume" in truth.columns else "volume_id"
        return match_lens3d(pred, truth, units, iobb_threshold=thr, unit=unit, fp_rates=fp_rates, unit_info=unit_info)
    if protocol == "deeplesion2d":
        return match_deeplesion2d(pred, truth, units, iou_threshold=thr, fp_rates=fp_rates, unit_info=unit_info)
    return match_luna(pred, truth, units, max_marks=max_marks, fp_rates=fp_rates, unit_info=unit_info)


def evaluate(pred, truth, protocol: str, variant: str = "model", *, strata=LESION_STRATA + UNIT_STRATA,
             bootstrap: int = 0, seed: int = 0, level: float = 0.95, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(froc, summary)`` of one variant: the curves of every stratum and their summary rows.

    ``bootstrap > 0`` adds a percentile interval of the average sensitivity to the overall row
    (columns ``average_low``, ``average_high``): patients resampled with replacement
    (:mod:`lens_core.evaluation.bootstrap`; ``unit_info``'s ``patient_id``, else each unit alone).
    """
    return evaluate_matching(match(pred, truth, protocol, **kwargs), variant, strata=strata,
                             bootstrap=bootstrap, seed=seed, level=level)


def evaluate_matching(m: Matching, variant: str = "model", *, strata=LESION_STRATA + UNIT_STRATA,
                      bootstrap: int = 0, seed: int = 0, level: float = 0.95,
                      patients=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`evaluate` of a matching already made; ``patients``: the patient of each unit, the unit of
    resampling (default: :func:`~lens_core.evaluation.bootstrap.unit_patients`)."""
    froc = froc_table(m, variant, strata)
    summary = summarize(froc, m.fp_rates)
    if bootstrap:
        ci = bootstrap_average(from_matching(m, patients), n_boot=bootstrap, seed=seed, level=level)
        summary["average_low"] = summary["average_high"] = float("nan")
        overall = summary["stratum_by"] == "all"
        summary.loc[overall, "average_low"] = ci["low"]
        summary.loc[overall, "average_high"] = ci["high"]
        summary.attrs["bootstrap"] = {k: ci[k] for k in ("n_boot", "seed", "level", "n_patients")}
    froc.attrs["fp_rates"] = list(m.fp_rates)
    return froc, summary


def write_outputs(out_dir, froc: pd.DataFrame, summary: pd.DataFrame, fp_rates, title: str | None = None,
                  plot: bool = True, matching: Matching | None = None, patients=None) -> dict[str, Path]:
    """Write ``froc.parquet``, ``summary.parquet``, ``summary.md`` and ``froc.png`` (each atomically);
    with ``matching``, also ``matches.parquet`` (:func:`~lens_core.evaluation.bootstrap.matches_table`:
    what a later pooled or paired bootstrap over several runs needs)."""
    out = Path(out_dir)
    paths = {k: out / k for k in ("froc.parquet", "summary.parquet", "summary.md", "froc.png")}
    meta = {"fp_rates": list(fp_rates)}
    if matching is not None:
        paths["matches.parquet"] = out / "matches.parquet"
        inputs.write_parquet(matches_table(matching, patients), paths["matches.parquet"], {**meta, "protocol": matching.protocol})
    inputs.write_parquet(froc, paths["froc.parquet"], meta)
    inputs.write_parquet(summary, paths["summary.parquet"], {**meta, **summary.attrs})
    inputs.write_text(to_markdown(summary, title), paths["summary.md"])
    if plot:
        plot_froc(froc, fp_rates, paths["froc.png"], title=title or "FROC")
    else:
        del paths["froc.png"]
    return paths
