"""`lens report`: the run's one HTML page (lens_core.report.page)."""
from __future__ import annotations

import logging
from pathlib import Path

from .page import ReportInputs, build_report

log = logging.getLogger("lens")


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page of a run: plots, tables, per-rule times",
                       description="Render a run's page from its Parquet tables and PNG plots, with the "
                                   "captions of workflow/report/*.rst.")
    p.add_argument("--table", type=Path, required=True, help="the main table: table.parquet of `lens froc-plot`")
    p.add_argument("--froc", type=Path, help="the FROC plot of every variant (froc.png of `lens froc-plot`)")
    p.add_argument("--audit", type=Path, help="audit.parquet of `lens audit-mining`")
    p.add_argument("--montage", type=Path, help="montage.png of `lens audit-mining`")
    p.add_argument("--delta", type=Path, nargs="?", help="delta_audit.png of `lens audit-delta` (built-in corpus)")
    p.add_argument("--losses", type=Path, nargs="*", default=[], help="losses.png of each `lens train`")
    p.add_argument("--benchmarks", type=Path, help="Snakemake's benchmark folder: the per-rule times")
    p.add_argument("--captions", type=Path, default=Path("workflow/report"),
                   help="folder of the .rst captions (those of `snakemake --report`)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_report)


def _report(args) -> int:
    build_report(ReportInputs(table=args.table, captions=args.captions, froc=args.froc, audit=args.audit,
                              montage=args.montage, delta=args.delta, losses=args.losses,
                              benchmarks=args.benchmarks), args.out)
    log.info("wrote %s", args.out)
    return 0
