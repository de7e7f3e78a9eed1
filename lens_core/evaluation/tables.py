"""Summary tables: sensitivity at each FP rate and their average, per variant and stratum
(the layout of the paper's Table II), as a DataFrame and as Markdown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lens_core.evaluation.froc import interpolate_sensitivity
from lens_core.io import InputError, read_table

KEYS = ["variant", "protocol", "stratum_by", "stratum"]


def overall_row(path, missing: str = "") -> pd.Series:
    """The overall ('all') row of a `lens evaluate` summary.parquet. A missing file (``missing``: what it
    is the evaluation of), a table without that row or without an average is an error naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: evaluation{' of ' + missing if missing else ''} missing")
    s = read_table(path, {"stratum_by": "text", "average": "number?"}, "evaluation summary of lens evaluate")
    overall = s[s["stratum_by"] == "all"]
    if len(overall) != 1:
        raise InputError(f"{path}: {len(overall)} overall ('all') rows, expected one; was it written by "
                         "`lens evaluate`?")
    return overall.iloc[0]


def rate_label(rate: float) -> str:
    return f"FP@{rate:g}"


def summarize(froc: pd.DataFrame, fp_rates) -> pd.DataFrame:
    """One row per (variant, protocol, stratum_by, stratum) of a ``froc.parquet`` table:
    ``n_gt, n_units, n_fp`` (FPs of the whole list), ``FP@<rate>`` sensitivities and ``average``."""
    rows = []
    for key, curve in froc.groupby(KEYS, sort=False):
        sens = interpolate_sensitivity(curve["fp_rate"], curve["sensitivity"], fp_rates)
        if curve["n_gt"].iloc[0] == 0:
            sens = np.full(len(fp_rates), np.nan)
        row = dict(zip(KEYS, key))
        row.update(n_gt=int(curve["n_gt"].iloc[0]), n_units=int(curve["n_units"].iloc[0]), n_fp=int(curve["n_fp"].max()))
        row.update({rate_label(r): float(s) for r, s in zip(fp_rates, sens)})
        row["average"] = float(np.mean(sens))
        rows.append(row)
    return pd.DataFrame(rows)


def ci_text(low, high) -> str:
    """A 95 % interval in percent, as the tables print it ('–' when there is none)."""
    return "–" if pd.isna(low) or pd.isna(high) else f"[{100 * low:.1f}, {100 * high:.1f}]"


def to_markdown(summary: pd.DataFrame, title: str | None = None, paper: dict[str, float] | None = None) -> str:
    """Markdown table with sensitivities in percent (one decimal, as in the paper); with ``paper``
    (variant -> the paper's average sensitivity, %) a column of those beside ours.

    A summary with ``average_low``/``average_high`` (the bootstrap interval) gets a "95 % CI" column;
    one with ``val_average`` (the same variant on the validation split) gets that average, its interval
    and lesion count beside the test columns."""
    rate_cols = [c for c in summary.columns if c.startswith("FP@")] + ["average"]
    has_ci = "average_low" in summary.columns
    has_val = "val_average" in summary.columns
    head = ["variant", "stratum", "n_gt"] + rate_cols + (["95 % CI"] if has_ci else [])
    head += ["val average", "val 95 % CI", "val n_gt"] if has_val else []
    head += ["paper (average)"] if paper is not None else []
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for _, r in summary.iterrows():
        stratum = "all" if r["stratum_by"] == "all" else f"{r['stratum_by']}={r['stratum']}"
        cells = [str(r["variant"]), stratum, str(r["n_gt"])]
        cells += ["–" if pd.isna(r[c]) else f"{100 * r[c]:.1f}" for c in rate_cols]
        if has_ci:
            cells.append(ci_text(r["average_low"], r["average_high"]))
        if has_val:
            cells += ["–" if pd.isna(r["val_average"]) else f"{100 * r['val_average']:.1f}",
                      ci_text(r.get("val_average_low"), r.get("val_average_high")),
                      "–" if pd.isna(r["val_n_gt"]) else str(int(r["val_n_gt"]))]
        if paper is not None:
            cells.append(f"{paper[r['variant']]:.1f}" if r["variant"] in paper else "–")
        lines.append("| " + " | ".join(cells) + " |")
    if has_ci or has_val:
        notes = ["95 % CI: percentile bootstrap of the average over patients (resampled with all their units)"] if has_ci else []
        notes += ["val: the same variant and protocol on the validation split"] if has_val else []
        lines += ["", "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"
