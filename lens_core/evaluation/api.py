"""One entry point over the three protocols: match, stratify, summarise, write."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lens_core.evaluation import inputs
from lens_core.evaluation.deeplesion2d import match_deeplesion2d
from lens_core.evaluation.froc import DEEPLESION_FP_RATES, LENS_FP_RATES, Matching
from lens_core.evaluation.lens3d import match_lens3d
from lens_core.evaluation.luna import bootstrap_cpm, match_luna
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
             bootstrap: int = 0, seed: int = 0, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(froc, summary)`` of one variant: the curves of every stratum and their summary rows.

    ``bootstrap > 0`` adds a percentile interval of the average sensitivity (scans / units
    resampled with replacement) to the overall row: columns ``average_low``, ``average_high``.
    """
    m = match(pred, truth, protocol, **kwargs)
    froc = froc_table(m, variant, strata)
    summary = summarize(froc, m.fp_rates)
    if bootstrap:
        ci = bootstrap_cpm(m, n_boot=bootstrap, seed=seed)
        summary["average_low"] = summary["average_high"] = float("nan")
        overall = summary["stratum_by"] == "all"
        summary.loc[overall, "average_low"] = ci["low"]
        summary.loc[overall, "average_high"] = ci["high"]
    froc.attrs["fp_rates"] = list(m.fp_rates)
    return froc, summary


def write_outputs(out_dir, froc: pd.DataFrame, summary: pd.DataFrame, fp_rates, title: str | None = None,
                  plot: bool = True) -> dict[str, Path]:
    """Write ``froc.parquet``, ``summary.parquet``, ``summary.md`` and ``froc.png`` (each atomically)."""
    from lens_core.evaluation.plots import plot_froc

    out = Path(out_dir)
    paths = {k: out / k for k in ("froc.parquet", "summary.parquet", "summary.md", "froc.png")}
    meta = {"fp_rates": list(fp_rates)}
    inputs.write_parquet(froc, paths["froc.parquet"], meta)
    inputs.write_parquet(summary, paths["summary.parquet"], meta)
    inputs.write_text(to_markdown(summary, title), paths["summary.md"])
    if plot:
        plot_froc(froc, fp_rates, paths["froc.png"], title=title or "FROC")
    else:
        del paths["froc.png"]
    return paths
