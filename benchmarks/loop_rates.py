"""Milliseconds per optimizer step of `lens train` in the real loop, from a finished run's logs (issue 22).

    scripts/in-env python benchmarks/loop_rates.py [results] [--exp lens]

A rule's seconds (benchmarks/pipeline_times.py) mix the steps with start-up and the validation passes of
`train.val_every`, and a config that changes the number of steps changes them too. This reads each round's
training log (`results/logs/<exp>/train_lens_<round>.log`: one timestamped line per finished epoch and per
validation pass) and its `losses.parquet` (one row per step), and prints the steps' time alone: from the end of
the first epoch to the end of the last, less the validation passes in between, over the steps of those epochs.
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path

import pandas as pd

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*epoch (\d+): (\{|validation)")


def rate(log: Path, losses: Path) -> dict:
    """Steps timed, their seconds and ms per step, and the validation passes' seconds, of one training log."""
    epochs, vals = {}, {}  # 1-based epoch -> time its steps ended / its validation ended
    for line in log.read_text().splitlines():
        m = STAMP.match(line)
        if m:
            t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            (epochs if m.group(3) == "{" else vals)[int(m.group(2))] = t
    if len(epochs) < 2:
        raise SystemExit(f"{log}: fewer than two finished epochs logged")
    first, last = min(epochs), max(epochs)
    val_s = {e: (vals[e] - epochs[e]).total_seconds() for e in vals if e in epochs}
    steps_s = (epochs[last] - epochs[first]).total_seconds() - sum(s for e, s in val_s.items() if first <= e < last)
    per_epoch = pd.read_parquet(losses, columns=["epoch"])["epoch"] + 1  # 0-based in the table
    steps = int(((per_epoch > first) & (per_epoch <= last)).sum())
    return {"steps": steps, "seconds": steps_s, "ms_per_step": 1000 * steps_s / steps,
            "validation_s": sum(val_s.values()), "validation_passes": len(val_s)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="?", type=Path, default=Path("results"))
    p.add_argument("--exp", default="lens", help="the experiment (results/<exp>/round1, round2)")
    a = p.parse_args()
    rows = {}
    for log in sorted((a.results / "logs" / a.exp).glob("train_lens_*.log")):
        rnd = log.stem.removeprefix("train_lens_")
        losses = a.results / a.exp / rnd / "losses.parquet"
        if losses.exists():
            rows[rnd] = rate(log, losses)
    if not rows:
        sys.exit(f"{a.results}: no training log with its losses.parquet under logs/{a.exp}/ (run the pipeline first)")
    print(pd.DataFrame(rows).T.to_string(float_format=lambda v: f"{v:.1f}"))


if __name__ == "__main__":
    main()
