"""`lens report`: one self-contained HTML page of a pipeline run (plots, tables, per-rule times).

`snakemake --report` gives the same figures with their captions (workflow/report/*.rst); this page is
the DAG's final artifact so that `snakemake --cores all` ends with something to open.
"""
from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger("lens.report")


def rule_times(bench_dir: Path) -> pd.DataFrame:
    """Per-rule wall times from Snakemake's `benchmark:` files (one TSV per job)."""
    rows = []
    for f in sorted(Path(bench_dir).rglob("*.tsv")):
        t = pd.read_csv(f, sep="\t")
        rel = f.relative_to(bench_dir)
        rows.append({"rule": rel.parts[0].removesuffix(".tsv"), "job": str(rel.with_suffix("")),
                     "seconds": float(t["s"].iloc[0]), "max_rss_mb": float(t["max_rss"].iloc[0])
                     if "max_rss" in t and pd.notna(t["max_rss"].iloc[0]) else float("nan")})
    return pd.DataFrame(rows, columns=["rule", "job", "seconds", "max_rss_mb"])


def times_by_rule(times: pd.DataFrame) -> pd.DataFrame:
    g = times.groupby("rule", sort=False).agg(jobs=("job", "size"), seconds=("seconds", "sum"),
                                              max_rss_mb=("max_rss_mb", "max"))
    return g.sort_values("seconds", ascending=False).reset_index()


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _md_table(path: Path) -> str:
    """The Markdown tables our steps write -> HTML (pipe tables and paragraphs only)."""
    out, rows = [], []

    def flush():
        if rows:
            head, body = rows[0], [r for r in rows[2:]]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            rows.clear()

    for line in Path(path).read_text().splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        else:
            flush()
            if line.strip():
                out.append(f"<p>{html.escape(line.lstrip('#').strip())}</p>")
    flush()
    return "\n".join(out)


def build_report(results: Path, out: Path, sections: list[tuple[str, str, list[Path]]]) -> None:
    """sections: (title, caption, files) — PNGs become images, .md files tables."""
    from ..io import atomic_path

    parts = ["<!doctype html><meta charset='utf-8'><title>LENS pipeline report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}h2{border-bottom:1px solid #888}</style>",
             "<h1>LENS pipeline report</h1>"]
    for title, caption, files in sections:
        parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(caption)}</p>")
        for f in files:
            f = Path(f)
            if not f.exists():
                raise FileNotFoundError(f"{f}: missing report input")
            parts.append(_img(f, f.name) if f.suffix == ".png" else _md_table(f))
    times = rule_times(results / "benchmarks")
    if len(times):
        by = times_by_rule(times)
        parts.append("<h2>Per-rule times</h2><p>Wall time of every rule (sum over its jobs) from the "
                     f"Snakemake benchmark files; total {times['seconds'].sum():.0f} s of job time.</p>")
        parts.append(by.to_html(index=False, float_format=lambda v: f"{v:.1f}"))
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(parts))
