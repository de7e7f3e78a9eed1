"""What review is worth: round 2 trained with a (simulated) reviewer's verdicts on 0 / 25 / 100 % of the
mined boxes, its average sensitivity (LENS 3D FROC, Sec. VI-C) on the validation and test splits, with
the bootstrap interval where the evaluation computed one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lens_core.io import write_parquet, write_text


def _overall(path: str | Path) -> tuple[float, float, float]:
    s = pd.read_parquet(path)
    row = s[s["stratum_by"] == "all"]
    if len(row) != 1:
        raise ValueError(f"{path}: want one overall ('all') row, found {len(row)}")
    r = row.iloc[0]
    return float(r["average"]), float(r.get("average_low", float("nan"))), float(r.get("average_high", float("nan")))


def value_table(rows) -> pd.DataFrame:
    """One row per (percent, review.parquet or '-', val summary.parquet, test summary.parquet)."""
    out = []
    for pct, review, val, test in rows:
        counts = {}
        if review != "-":
            counts = pd.read_parquet(review)["decision"].value_counts().to_dict()
        rec = {"reviewed_pct": float(pct), "accepted": int(counts.get("accept", 0)),
               "fixed": int(counts.get("fix", 0)), "rejected": int(counts.get("reject", 0))}
        for split, path in (("val", val), ("test", test)):
            avg, lo, hi = _overall(path)
            rec.update({f"{split}_average": avg, f"{split}_low": lo, f"{split}_high": hi})
        out.append(rec)
    return pd.DataFrame(out).sort_values("reviewed_pct", kind="stable").reset_index(drop=True)


def _cell(avg: float, lo: float, hi: float) -> str:
    if pd.isna(avg):
        return "–"
    ci = "" if pd.isna(lo) or pd.isna(hi) else f" ({100 * lo:.1f}–{100 * hi:.1f})"
    return f"{100 * avg:.1f}{ci}"


def write_value_table(table: pd.DataFrame, out: str | Path) -> None:
    out = Path(out)
    lines = ["## Round 2 with reviewed mined boxes (simulated reviewer answering from the hidden truth)", "",
             "Average sensitivity at 1/8 ... 8 FPs per volume, % (95 % bootstrap interval over patients).", "",
             "| reviewed | accepted | fixed | rejected | validation | test |", "|---:|---:|---:|---:|---:|---:|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['reviewed_pct']:.0f} % | {int(r['accepted'])} | {int(r['fixed'])} | {int(r['rejected'])} | "
                     f"{_cell(r['val_average'], r['val_low'], r['val_high'])} | "
                     f"{_cell(r['test_average'], r['test_low'], r['test_high'])} |")
    write_parquet(table, out.with_suffix(".parquet"))
    write_text(out, "\n".join(lines) + "\n")
