"""`lens report`: one self-contained HTML page of a pipeline run, the DAG's final artifact, so that
`snakemake --cores all` ends with something to open.

One source for each thing on the page: tables are rendered from the Parquet tables the steps wrote (never
parsed back out of their Markdown twins), plots are the steps' PNGs, and every caption is read from the
`workflow/report/*.rst` file that `snakemake --report` shows beside the same artifact.
"""
from __future__ import annotations

import base64
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from ..io import atomic_path, read_meta

log = logging.getLogger("lens.report")

# the .rst caption (workflow/report/) of each item on the page, as the rules' report() calls name them
CAPTIONS = {"table": "table.rst", "froc": "froc_all.rst", "audit": "audit.rst", "montage": "montage.rst",
            "delta": "delta.rst", "losses": "losses.rst"}
# main-table columns not shown: the stratum is always `all`, FPs and units are in the FROC plot
MAIN_HIDDEN = ("protocol", "stratum_by", "stratum", "n_units", "n_fp")
# what each protocol scored, said above the main table (a real run without DeepLesion's manual 3D set falls
# back to the official key-slice protocol: its numbers are not the paper's Table II)
PROTOCOLS = {
    "lens3d": "Scored with the paper's 3D protocol: IoBB >= 0.3 against full 3D annotations, FPs per sub-volume.",
    "deeplesion2d": "Scored with DeepLesion's official key-slice protocol: IoU >= 0.5 on the test split's annotated "
                    "key slices, FPs per image, each 3D detection by its cross-section. No manual 3D test set was "
                    "found (lens import-manual-3d), so these numbers are not comparable with the paper's Table II.",
    "luna": "Scored with the LUNA16 protocol (CPM).",
}
AUDIT_PERCENT = ("precision", "duplicate_rate", "recall_missing", "recall_missing_cum")


@dataclass
class ReportInputs:
    """The artifacts of a run that the page shows; a missing optional item leaves its section out."""

    table: Path                      # results/eval/table.parquet (lens froc-plot --table)
    captions: Path                   # workflow/report
    froc: Path | None = None         # results/eval/froc.png
    audit: Path | None = None        # results/<exp>/mining/audit.parquet
    montage: Path | None = None      # results/<exp>/mining/montage.png
    delta: Path | None = None        # results/<exp>/mining/delta_audit.png (an audit: built-in corpus)
    losses: list[Path] = field(default_factory=list)  # results/<exp>/<round>/losses.png
    benchmarks: Path | None = None   # results/benchmarks


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


def caption(captions: Path, item: str) -> str:
    """The caption of ``item`` from its .rst file, as HTML paragraphs (the files are plain prose)."""
    path = Path(captions) / CAPTIONS[item]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: caption of the report's {item} missing")
    paras = [p.strip() for p in path.read_text().split("\n\n") if p.strip()]
    return "".join(f"<p>{html.escape(' '.join(p.split()))}</p>" for p in paras)


def _percent(v) -> str:
    return "–" if pd.isna(v) else f"{100 * v:.1f}"


def main_table(path: Path) -> pd.DataFrame:
    """The main table (the paper's Table II analogue) for display, from ``lens froc-plot``'s table.parquet:
    sensitivities in percent, the paper's average beside ours when froc-plot was given it.

    Columns are shown in the table's own order, so columns a later step adds (a bootstrap interval of the
    average, say ``average_ci_low`` / ``average_ci_high``) appear without a change here; every column named
    ``FP@...`` or ``average...`` (``val_...`` on the validation split) is a sensitivity, shown in percent."""
    df = pd.read_parquet(path)
    missing = [c for c in ("variant", "average") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; is it lens froc-plot's table.parquet?")
    paper = read_meta(path).get("paper")
    out = df[[c for c in df.columns if c not in MAIN_HIDDEN]].copy()
    for c in out.columns:
        if c.removeprefix("val_").startswith(("FP@", "average")):  # validation beside test, both in %
            out[c] = [_percent(v) for v in out[c]]
    # an interval's two ends as one column, "[low, high]", as table.md shows them (the page was too wide)
    for low in [c for c in out.columns if c.endswith("_low")]:
        base, high = low.removesuffix("_low"), low.removesuffix("_low") + "_high"
        if high in out.columns:
            ci = [f"[{a}, {b}]" if a != "–" else "–" for a, b in zip(out[low], out[high])]
            out = out.drop(columns=[high]).rename(columns={low: f"{base} 95 % CI"})
            out[f"{base} 95 % CI"] = ci
    if paper is not None:
        out["paper (average)"] = [f"{paper[v]:.1f}" if v in paper else "–" for v in out["variant"]]
    return out


def audit_table(path: Path) -> tuple[pd.DataFrame, dict]:
    """The mining audit (``lens audit-mining``'s audit.parquet) for display, and its settings."""
    df = pd.read_parquet(path)
    for c in AUDIT_PERCENT:
        if c in df.columns:
            df[c] = [("–" if pd.isna(v) else f"{100 * v:.1f}%") for v in df[c]]
    return df, read_meta(path)


def _img(path: Path, alt: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing report input")
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _html_table(df: pd.DataFrame) -> str:
    # in a box of its own that scrolls sideways: a wide table (the main one, with its validation columns)
    # was cut at the page's right edge
    table = df.to_html(index=False, na_rep="–", float_format=lambda v: f"{v:.1f}", border=0)
    return f"<div class='table'>{table}</div>"


def build_report(inp: ReportInputs, out: Path) -> None:
    parts = ["<!doctype html><meta charset='utf-8'><title>LENS pipeline report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}h2{border-bottom:1px solid #888}"
             ".table{overflow-x:auto;margin-bottom:1em}td:first-child{white-space:nowrap}"
             # two training figures a row: five in one row were thumbnails nobody could read
             ".row{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:12px}"
             ".row>.wide{grid-column:1/-1}</style>",  # the loss plots: a strip of five panels each
             "<h1>LENS pipeline report</h1>"]

    protocols = pd.read_parquet(inp.table, columns=["protocol"])["protocol"].dropna().unique() \
        if "protocol" in pq.read_schema(inp.table).names else []
    said = "".join(f"<p><b>{html.escape(PROTOCOLS.get(p, f'Scored with the {p} protocol.'))}</b></p>" for p in protocols)
    parts.append("<h2>Evaluation</h2>" + caption(inp.captions, "table") + said + _html_table(main_table(inp.table)))
    if inp.froc is not None:
        parts.append(caption(inp.captions, "froc") + _img(inp.froc, "FROC of every variant"))

    if inp.audit is not None or inp.montage is not None or inp.delta is not None:
        parts.append("<h2>Mining</h2>")
    if inp.audit is not None:
        audit, meta = audit_table(inp.audit)
        facts = ", ".join(f"{k.replace('_', ' ')} {meta[k]}" for k in ("split", "truth_lesions", "missing_lesion_slices")
                          if k in meta)
        parts.append(caption(inp.captions, "audit") + (f"<p>{html.escape(facts)}.</p>" if facts else "")
                     + _html_table(audit))
    if inp.montage is not None:
        parts.append(caption(inp.captions, "montage") + _img(inp.montage, "mined lesions for review"))
    if inp.delta is not None:
        parts.append(caption(inp.captions, "delta") + _img(inp.delta, "delta audit"))

    if inp.losses:
        parts.append("<h2>Training</h2>" + caption(inp.captions, "losses") + "<div class='row'>"
                     + "".join(f"<div{' class=wide' if Path(p).stem == 'losses' else ''}>"
                               f"<p>{html.escape(str(Path(p).parent / Path(p).stem))}</p>"
                               f"{_img(p, 'training curves')}</div>" for p in inp.losses) + "</div>")

    times = rule_times(inp.benchmarks) if inp.benchmarks is not None and Path(inp.benchmarks).is_dir() else None
    if times is not None and len(times):
        by = times_by_rule(times)
        parts.append("<h2>Per-rule times</h2><p>Wall time of every rule (sum over its jobs) from the "
                     f"Snakemake benchmark files; total {times['seconds'].sum():.0f} s of job time.</p>")
        parts.append(_html_table(by))
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(parts))
