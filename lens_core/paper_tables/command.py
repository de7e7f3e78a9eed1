"""`lens ablation-table` (Tables II, IV, V), `lens fig5-table` (Fig. 5) and `lens fig7-table` (Fig. 7): the
paper's tables over seeds, built from the evaluated runs of each experiment."""
from __future__ import annotations

import argparse
from pathlib import Path

from lens_core.arguments import non_negative_int
from lens_core.paper_tables import ablation, fig5, fig7


def add_parser(sub) -> None:
    p = sub.add_parser("ablation-table", help="the paper's ablation rows: mean ± sd over seeds, paper beside")
    p.add_argument("--spec", required=True,
                   help="JSON: row -> {stage, paper, exps: [experiment per seed], "
                        "vs: reference row or list of rows (optional)}")
    p.add_argument("--eval-dir", type=Path, default=Path("results/eval"))
    p.add_argument("--out", type=Path, required=True, help="folder for table.md, table.parquet, froc.png")
    p.add_argument("--bootstrap", type=non_negative_int, default=2000,
                   help="bootstrap draws (test patients resampled) for the intervals; 0: none")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (the same seed draws the same patients)")
    p.add_argument("--val", action="store_true",
                   help="also the validation split (<eval-dir>/<exp>/<stage>/val/), beside the test split")
    p.set_defaults(func=run_ablation_table)

    p = sub.add_parser("fig5-table", help="Fig. 5: sensitivity against each swept mining setting (val, test)",
                       description="The paper's Fig. 5 on our data (lens_core.paper_tables.fig5).")
    p.add_argument("--spec", required=True,
                   help="JSON: setting -> {default: value, stage, runs: [{value, exp}, ...]}")
    p.add_argument("--eval-dir", type=Path, default=Path("results/eval"))
    p.add_argument("--out", type=Path, required=True, help="folder for table.md, table.parquet, fig5.png")
    p.add_argument("--bootstrap", type=non_negative_int, default=2000,
                   help="bootstrap draws (patients resampled) for the intervals; 0: none")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=run_fig5_table)

    p = sub.add_parser("fig7-table", help="Fig. 7: each single-type dataset alone vs joint, by training fraction",
                       description="The paper's Fig. 7 on our data (lens_core.paper_tables.fig7).")
    p.add_argument("--spec", required=True,
                   help="JSON list of runs: {dataset, mode (alone|joint), fraction, seed, summary (summary.parquet)}")
    p.add_argument("--scored-on", default="validation split",
                   help="what the runs were scored on, for the title (e.g. 'held-out cohort, 24 scans per dataset')")
    p.add_argument("--out", type=Path, required=True, help="folder for table.md, table.parquet, fig7.png")
    p.add_argument("--bootstrap", type=non_negative_int, default=2000,
                   help="bootstrap draws (patients resampled) for the intervals, from the matches.parquet beside "
                        "each summary; 0: none")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (the same seed draws the same patients)")
    p.set_defaults(func=run_fig7_table)


def run_ablation_table(args: argparse.Namespace) -> int:
    return ablation.run(args)


def run_fig5_table(args: argparse.Namespace) -> int:
    return fig5.run(args)


def run_fig7_table(args: argparse.Namespace) -> int:
    return fig7.run(args)
