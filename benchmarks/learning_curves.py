"""Learning curves side by side: the validation average sensitivity by epoch of several `lens train` runs
(their val_curve.parquet, written every train.val_every epochs), one figure and one Markdown table.

    python benchmarks/learning_curves.py --run "(b) BatchNorm=/tmp/b/val_curve.parquet" \
        --run "(b) GroupNorm=/tmp/g/val_curve.parquet" --out docs/learning_curves.png

A label may name several files (comma-separated, one per seed): the figure draws each seed thin and their
mean thick, the table gives mean and sd over seeds at each scored epoch."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def load(spec: str) -> tuple[str, list[pd.DataFrame]]:
    label, _, paths = spec.partition("=")
    if not paths:
        raise SystemExit(f"--run {spec!r}: expected LABEL=PATH[,PATH...]")
    curves = []
    for p in paths.split(","):
        df = pd.read_parquet(p)
        if df.empty:
            raise SystemExit(f"{p}: no scored epoch (train.val_every was 0)")
        curves.append(df[["epoch", "val_average"]])
    return label, curves


def table(runs: dict[str, list[pd.DataFrame]]) -> str:
    epochs = sorted({int(e) for curves in runs.values() for c in curves for e in c["epoch"]})
    lines = ["| epoch | " + " | ".join(runs) + " |", "|---:|" + "---:|" * len(runs)]
    for e in epochs:
        cells = []
        for curves in runs.values():
            v = [float(c.loc[c["epoch"] == e, "val_average"].iloc[0]) * 100 for c in curves if (c["epoch"] == e).any()]
            cells.append("" if not v else f"{np.mean(v):.1f}" + (f" ± {np.std(v, ddof=1):.1f}" if len(v) > 1 else ""))
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, list[pd.DataFrame]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (label, curves) in enumerate(runs.items()):
        color = f"C{i}"
        for c in curves:
            ax.plot(c["epoch"], 100 * c["val_average"], color=color, lw=0.7, alpha=0.45)
        merged = pd.concat([c.set_index("epoch")["val_average"] for c in curves], axis=1).mean(axis=1)
        ax.plot(merged.index, 100 * merged.to_numpy(), "o-", color=color, lw=2, ms=3,
                label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
    ax.set_xlabel("epoch (one pass over every dataset's positives)")
    ax.set_ylabel("validation average sensitivity, %")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=PATH[,PATH...]")
    ap.add_argument("--out", type=Path, required=True, help="the figure (PNG); the table is printed")
    ap.add_argument("--title", default="learning curves on the validation split")
    args = ap.parse_args()
    runs = dict(load(s) for s in args.run)
    plot(runs, args.out, args.title)
    print(table(runs))


if __name__ == "__main__":
    main()
