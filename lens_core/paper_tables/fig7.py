"""`lens fig7-table`: the paper's Fig. 7 on our data. Each single-type dataset's own metric (LUNA16 CPM:
mean sensitivity at 1/8 ... 8 FPs per scan, its own expert; on its validation split or a held-out cohort)
of a model trained on that dataset alone vs jointly with every dataset, at several fractions of its
training volumes; mean ± sd over seeds.

Each run is one summary.parquet written by `lens evaluate --protocol luna`; the table reads its `all`
stratum. With a bootstrap, each cell's seed mean gets a 95 % interval (patients resampled, each draw
averaging the cell's seeds; the matches.parquet beside each summary), and joint − alone the paired interval
of the difference: the same scans and draws on both sides, with its verdict against the paper's claim that
joint training beats a single dataset (the sign every Fig. 7 cell has in the paper).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lens_core.evaluation.bootstrap import interval, read_matches, run_averages, seed_mean
from lens_core.evaluation.tables import overall_row
from lens_core.io import save_figure, write_parquet, write_text
from lens_core.paper_tables.ablation import parse_spec, verdict

MODES = ("alone", "joint")
PAPER_SIGN = +1.0  # Fig. 7: "joint training always outperformed single dataset"
TITLES = {"deeplesion": "DeepLesion", "luna": "LUNA", "lits": "LiTS", "nihln": "NIH-LN"}
RUN_KEYS = ("dataset", "mode", "fraction", "seed", "summary")


def collect(spec: list[dict]) -> pd.DataFrame:
    """One row per run: dataset, mode, fraction, seed, the sensitivities at each FP rate and their average."""
    rows = []
    for i, run in enumerate(spec):
        missing = [k for k in RUN_KEYS if k not in run]
        if missing:
            raise ValueError(f"--spec run {i}: missing keys {missing}")
        if run["mode"] not in MODES:
            raise ValueError(f"--spec run {i}: mode must be one of {list(MODES)}, got {run['mode']!r}")
        path = Path(run["summary"])
        r = overall_row(path, f"{run['dataset']} {run['mode']} {run['fraction']:g} seed {run['seed']}")
        if r.get("protocol", "luna") != "luna":
            raise ValueError(f"{path}: protocol {r['protocol']!r}, Fig. 7 reports the luna protocol (CPM)")
        rates = [c for c in r.index if c.startswith("FP@")]
        rows.append({"dataset": run["dataset"], "mode": run["mode"], "fraction": float(run["fraction"]),
                     "seed": int(run["seed"]), **{c: float(r[c]) for c in rates},
                     "average": float(r["average"]), "n_gt": int(r["n_gt"]), "n_units": int(r["n_units"]),
                     "summary": str(path)})
    if not rows:
        raise ValueError("--spec lists no runs")
    return pd.DataFrame(rows)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd (in %) over seeds of every (dataset, fraction, mode)."""
    cols = [c for c in runs.columns if c.startswith("FP@")] + ["average"]
    keys = ["dataset", "fraction", "mode"]
    g = runs.groupby(keys, sort=False)
    mean, sd = g[cols].mean() * 100, g[cols].std(ddof=1).fillna(0) * 100
    out = mean.add_suffix("_mean").join(sd.add_suffix("_sd"))
    out["seeds"] = g.size()
    out["n_gt"] = g["n_gt"].first()
    out["n_units"] = g["n_units"].first()
    out = out.reset_index()
    order = {d: i for i, d in enumerate(pd.unique(runs["dataset"]))}  # datasets as the spec lists them
    out["_order"] = out["dataset"].map(order)
    return out.sort_values(["_order", "fraction", "mode"]).drop(columns="_order").reset_index(drop=True)


def intervals(runs: pd.DataFrame, table: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """``table`` with ``average_low/high`` (each cell's pooled interval, %) and ``delta_low/high`` (the
    paired interval of joint − alone, %, on the joint rows), from each run's matches.parquet."""
    table = table.copy()
    for col in ("average_low", "average_high", "delta_low", "delta_high"):
        table[col] = np.nan
    table["verdict"] = None
    for ds, rows in runs.groupby("dataset", sort=False):
        items = [read_matches(Path(p).with_name("matches.parquet")) for p in rows["summary"]]
        avg = run_averages(items, n_boot=n_boot, seed=seed)  # every run of the dataset on the same draws
        cell = {}
        for (f, mode), idx in rows.reset_index(drop=True).groupby(["fraction", "mode"]).groups.items():
            cell[f, mode] = seed_mean(avg[list(idx)], seed)  # seeds resampled too (two-level)
            ci = interval(cell[f, mode])
            at = (table["dataset"] == ds) & (table["fraction"] == f) & (table["mode"] == mode)
            table.loc[at, ["average_low", "average_high"]] = 100 * ci["low"], 100 * ci["high"]
        for f in rows["fraction"].unique():
            if (f, "alone") in cell and (f, "joint") in cell:
                d = interval(cell[f, "joint"] - cell[f, "alone"])
                at = (table["dataset"] == ds) & (table["fraction"] == f) & (table["mode"] == "joint")
                table.loc[at, ["delta_low", "delta_high"]] = 100 * d["low"], 100 * d["high"]
                table.loc[at, "verdict"] = verdict(d["low"], d["high"], PAPER_SIGN)
    return table


def _ci(low, high) -> str:
    return "" if pd.isna(low) or pd.isna(high) else f" [{low:.1f}, {high:.1f}]"


def _cell(table: pd.DataFrame, dataset: str, fraction: float, mode: str):
    hit = table[(table["dataset"] == dataset) & (table["fraction"] == fraction) & (table["mode"] == mode)]
    return None if hit.empty else hit.iloc[0]


def to_markdown(table: pd.DataFrame, scored_on: str = "validation split", n_boot: int | None = None) -> str:
    has_ci = "average_low" in table.columns
    unit = "mean ± sd over seeds" + (" [95 % CI]" if has_ci else "")
    verdicts = has_ci and "verdict" in table.columns
    lines = [f"## Fig. 7: single dataset vs joint training ({scored_on}, LUNA16 CPM %, {unit})",
             "", "| dataset | training volumes | alone | joint | joint − alone | seeds | lesions / scans |"
             + (" verdict |" if verdicts else ""),
             "|---|---:|---:|---:|---:|---:|---:|" + ("---|" if verdicts else "")]
    for ds in pd.unique(table["dataset"]):
        for f in sorted(table.loc[table["dataset"] == ds, "fraction"].unique()):
            cells = {m: _cell(table, ds, f, m) for m in MODES}
            text = {m: "–" if c is None else f"{c['average_mean']:.1f} ± {c['average_sd']:.1f}"
                    + (_ci(c["average_low"], c["average_high"]) if has_ci else "") for m, c in cells.items()}
            a, j = cells["alone"], cells["joint"]
            delta = "–" if a is None or j is None else f"{j['average_mean'] - a['average_mean']:+.1f}" + (
                _ci(j["delta_low"], j["delta_high"]) if has_ci else "")
            any_cell = a if a is not None else j
            seeds = "/".join(str(int(c["seeds"])) for c in cells.values() if c is not None)
            row = (f"| {TITLES.get(ds, ds)} | {100 * f:g}% | {text['alone']} | {text['joint']} | {delta} "
                   f"| {seeds} | {int(any_cell['n_gt'])} / {int(any_cell['n_units'])} |")
            if verdicts:  # on the joint row; NaN where a cell lacks its partner
                row += f" {j['verdict'] if j is not None and isinstance(j['verdict'], str) else '–'} |"
            lines.append(row)
    lines += ["", "alone: LENS trained on that dataset only; joint: LENS trained on every dataset (the paper's Fig. 7). "
              f"Both are scored with the dataset's own expert on its scans of the {scored_on}."]
    if has_ci:
        lines += ["", f"95 % CI: percentile bootstrap over the scored patients ({n_boot} draws; each draw resamples "
                  "patients, then the cell's seeds, with replacement, and averages them); joint − alone: paired (the "
                  "same draws on both sides). "
                  "A difference whose interval holds 0 is not resolved at this size; one that excludes 0 is "
                  "reproduced when joint is better (the paper's Fig. 7), contradicted when it is worse."]
    return "\n".join(lines + [""])


def plot(table: pd.DataFrame, path: Path, scored_on: str = "validation split") -> None:
    # lazy: matplotlib, for the plot only (not for lens --help)
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on the cluster
    import matplotlib.pyplot as plt

    datasets = list(pd.unique(table["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.6 * len(datasets), 3.4), dpi=120, squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for mode, style in zip(MODES, ("s--", "o-")):
            t = table[(table["dataset"] == ds) & (table["mode"] == mode)].sort_values("fraction")
            if t.empty:
                continue
            ax.errorbar(100 * t["fraction"].to_numpy(), t["average_mean"], yerr=t["average_sd"], fmt=style,
                        ms=4, capsize=2, lw=1.2, label="single dataset" if mode == "alone" else "joint (LENS)")
        x = 100 * np.sort(table.loc[table["dataset"] == ds, "fraction"].unique())
        ax.set_xscale("log", base=2)  # 25 / 50 / 100 % evenly spaced
        ax.set_xticks(x, [f"{v:g}%" for v in x])
        ax.minorticks_off()
        ax.set_xlim(x.min() / 1.3, x.max() * 1.3)
        ax.set_xlabel("training volumes")
        ax.set_ylim(-2, 102)  # a model at 0 % stays visible
        ax.grid(True, alpha=0.3)
        ax.set_title(TITLES.get(ds, ds))
    axes[0][0].set_ylabel("CPM (%)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Single dataset vs joint training: CPM on the {scored_on} (mean ± sd over seeds)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def run(args) -> int:
    spec = parse_spec(args.spec)
    if not isinstance(spec, list):
        raise ValueError("--spec must be a JSON list of runs")
    runs = collect(spec)
    table = aggregate(runs)
    if args.bootstrap:
        table = intervals(runs, table, args.bootstrap, args.seed)
    write_parquet(table, args.out / "table.parquet", {"spec": spec, "scored_on": args.scored_on,
                                                      "bootstrap": args.bootstrap, "seed": args.seed})
    write_text(args.out / "table.md", to_markdown(table, args.scored_on, args.bootstrap))
    plot(table, args.out / "fig7.png", args.scored_on)
    return 0
