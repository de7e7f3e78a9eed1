"""`lens ablation-table`: the paper's Table II / V rows on our data, mean +- sd over seeds, paper beside.

Each row names one evaluated stage of one experiment per seed (results/eval/<exp>/<stage>/summary.parquet,
written by `lens evaluate`); the table reads the `all` stratum of each.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lens_core.io import atomic_path, read_table, write_parquet


def collect(spec: dict, eval_dir: Path) -> pd.DataFrame:
    """One row per (ablation row, seed run): the seven sensitivities and their average."""
    rows = []
    for label, r in spec.items():
        for exp in r["exps"]:
            path = Path(eval_dir) / exp / r["stage"] / "summary.parquet"
            if not path.exists():
                raise FileNotFoundError(f"{path}: evaluation of row {label!r} missing")
            s = read_table(path, (), "evaluation summary of lens evaluate")
            overall = s[s["stratum"] == "all"] if "stratum" in s.columns else s.iloc[:0]
            if overall.empty or "average" not in s.columns:
                raise ValueError(f"{path}: no 'all' row with an average; was it written by `lens evaluate`?")
            s = overall.iloc[0]
            rates = [c for c in s.index if c.startswith("FP@")]
            rows.append({"row": label, "exp": exp, "stage": r["stage"], "paper": r.get("paper"),
                         **{c: float(s[c]) for c in rates}, "average": float(s["average"])})
    return pd.DataFrame(rows)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in runs.columns if c.startswith("FP@")] + ["average"]
    g = runs.groupby("row", sort=False)
    mean, sd = g[cols].mean() * 100, g[cols].std(ddof=1).fillna(0) * 100
    out = mean.add_suffix("_mean").join(sd.add_suffix("_sd"))
    out["seeds"] = g.size()
    out["paper_average"] = g["paper"].first()
    return out.reset_index()


def to_markdown(table: pd.DataFrame, runs: pd.DataFrame) -> str:
    rates = [c.removesuffix("_mean") for c in table.columns if c.startswith("FP@") and c.endswith("_mean")]
    head = "| row | " + " | ".join(rates) + " | average (ours) | average (paper) | seeds |"
    lines = ["## Ablation on the built-in corpus (LENS 3D protocol, test split; sensitivity %, mean ± sd over seeds)",
             "", head, "|" + "---|" * (len(rates) + 4)]
    for _, r in table.iterrows():
        cells = [f"{r[c + '_mean']:.1f} ± {r[c + '_sd']:.1f}" for c in rates]
        paper = "–" if pd.isna(r["paper_average"]) else f"{r['paper_average']:.1f}"
        lines.append(f"| {r['row']} | " + " | ".join(cells)
                     + f" | **{r['average_mean']:.1f} ± {r['average_sd']:.1f}** | {paper} | {int(r['seeds'])} |")
    base = table.iloc[0]
    lines += ["", f"Ratio of each row's mean average sensitivity to the first row's ({base['row']}):", ""]
    for _, r in table.iterrows():
        ratio = r["average_mean"] / base["average_mean"] if base["average_mean"] > 0 else float("nan")
        lines.append(f"- {r['row']}: {ratio:.2f}×")
    lines += ["", "Runs: " + ", ".join(f"{a}/{b}" for a, b in runs[["exp", "stage"]].drop_duplicates().to_numpy()), ""]
    return "\n".join(lines)


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [c.removesuffix("_mean") for c in table.columns if c.startswith("FP@") and c.endswith("_mean")]
    x = np.array([float(r.removeprefix("FP@")) for r in rates])
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    # Table II and V together are more rows than a 10-colour cycle: tab20's dark shades, then its light
    # ones, each with its own marker, so no two rows look alike
    colors = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xhp<>"
    for i, (_, r) in enumerate(table.iterrows()):
        y = np.array([r[c + "_mean"] for c in rates])
        e = np.array([r[c + "_sd"] for c in rates])
        ax.errorbar(x, y, yerr=e, marker=markers[i % len(markers)], ms=4, capsize=2, lw=1.2,
                    color=colors[(2 * i) % 20 + (i // 10) % 2], label=f"{r['row']} ({r['average_mean']:.1f})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.set_xlabel("FPs per sub-volume")
    ax.set_ylabel("sensitivity (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Ablation on the built-in corpus (mean ± sd over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def run(args) -> int:
    spec = json.loads(args.spec)
    runs = collect(spec, args.eval_dir)
    table = aggregate(runs)
    write_parquet(table, args.out / "table.parquet", {"spec": spec})
    with atomic_path(args.out / "table.md") as tmp:
        tmp.write_text(to_markdown(table, runs))
    plot(table, args.out / "froc.png")
    return 0
