"""`lens ablation-table`: the paper's Table II / V rows on our data, mean +- sd over seeds, paper beside.

Each row names one evaluated stage of one experiment per seed (results/eval/<exp>/<stage>/summary.parquet,
written by `lens evaluate`); the table reads the `all` stratum of each. Every row's mean over seeds gets a
95 % interval from a patient bootstrap pooled over its seeds (each draw resamples the test patients once
and averages the seeds' averages; the runs' matches.parquet), and a row with a reference (`vs`) gets the
paired interval of its difference to that row: the same patients and draws on both sides. A difference
counts as reproduced only when that interval excludes 0 (and has the paper's sign); otherwise it is not
resolved at this size. With `--val`, the validation split's mean and interval stand beside the test's
(results/eval/<exp>/<stage>/val/).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lens_core.evaluation.bootstrap import interval, read_matches, run_averages, seed_mean
from lens_core.evaluation.tables import overall_row
from lens_core.io import atomic_path, save_figure, write_parquet


def run_dir(eval_dir: Path, exp: str, stage: str, split: str = "test") -> Path:
    """Where `lens evaluate` wrote one run: results/eval/<exp>/<stage>/ (test) or .../val/."""
    d = Path(eval_dir) / exp / stage
    return d if split == "test" else d / split


def collect(spec: dict, eval_dir: Path, split: str = "test") -> pd.DataFrame:
    """One row per (ablation row, seed run): the seven sensitivities and their average."""
    rows = []
    for label, r in spec.items():
        for exp in r["exps"]:
            s = overall_row(run_dir(eval_dir, exp, r["stage"], split) / "summary.parquet", f"row {label!r}")
            rates = [c for c in s.index if c.startswith("FP@")]
            rows.append({"row": label, "exp": exp, "stage": r["stage"], "paper": r.get("paper"),
                         **{c: float(s[c]) for c in rates}, "average": float(s["average"]),
                         "n_gt": int(s["n_gt"])})
    return pd.DataFrame(rows)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in runs.columns if c.startswith("FP@")] + ["average"]
    g = runs.groupby("row", sort=False)
    mean, sd = g[cols].mean() * 100, g[cols].std(ddof=1).fillna(0) * 100
    out = mean.add_suffix("_mean").join(sd.add_suffix("_sd"))
    out["seeds"] = g.size()
    out["paper_average"] = g["paper"].first()
    out["n_gt"] = g["n_gt"].first()
    return out.reset_index()


def _row_items(spec: dict, eval_dir: Path, split: str) -> dict:
    return {label: [read_matches(run_dir(eval_dir, exp, r["stage"], split) / "matches.parquet") for exp in r["exps"]]
            for label, r in spec.items()}


def verdict(low: float, high: float, paper_delta: float | None) -> str:
    """Reproduced only when the paired interval excludes 0 with the paper's sign; contradicted when it
    excludes 0 with the other sign; otherwise not resolved at this size."""
    if not (low > 0 or high < 0):
        return "not resolved at this size"
    if paper_delta is None or pd.isna(paper_delta) or paper_delta == 0:
        return "resolved (no paper difference to compare)"
    return "reproduced" if (low > 0) == (paper_delta > 0) else "contradicted"


def intervals(spec: dict, table: pd.DataFrame, eval_dir: Path, n_boot: int, seed: int, split: str = "test",
              prefix: str = "") -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """``table`` with each row's pooled interval (``{prefix}average_low/high``, %), the paired differences
    of the rows that name a reference (``vs``), and the number of patients resampled.

    Every run of every row is scored on the same draws (one :func:`run_averages` call): a row's interval is
    that of its seeds' mean, a difference's that of the two rows' means (:func:`pooled_average` and
    :func:`paired_difference`, computed once per run), the seeds resampled in each draw too
    (:func:`seed_mean`: two-level, seeds then patients)."""
    items = _row_items(spec, eval_dir, split)
    labels = [label for label, runs in items.items() for _ in runs]
    avg = run_averages([r for runs in items.values() for r in runs], n_boot=n_boot, seed=seed)
    row_mean = {label: seed_mean(avg[[i for i, lab in enumerate(labels) if lab == label]], seed) for label in items}
    low, high = {}, {}
    for label, samples in row_mean.items():
        ci = interval(samples)
        low[label], high[label] = 100 * ci["low"], 100 * ci["high"]
    table = table.assign(**{f"{prefix}average_low": table["row"].map(low),
                            f"{prefix}average_high": table["row"].map(high)})
    means = table.set_index("row")[f"{prefix}average_mean"]
    diffs = []
    for label, r in spec.items():
        for ref in references(r):
            d = interval(row_mean[label] - row_mean[ref])
            pa, pb = r.get("paper"), spec[ref].get("paper")
            paper_delta = pa - pb if pa is not None and pb is not None else None
            diffs.append({"row": label, "vs": ref, "split": split, "delta": means[label] - means[ref],
                          "delta_low": 100 * d["low"], "delta_high": 100 * d["high"], "paper_delta": paper_delta,
                          "verdict": verdict(d["low"], d["high"], paper_delta)})
    return table, pd.DataFrame(diffs, columns=DIFF_COLUMNS), next(iter(items.values()))[0].n_patients


DIFF_COLUMNS = ["row", "vs", "split", "delta", "delta_low", "delta_high", "paper_delta", "verdict"]


def check_spec(spec) -> dict:
    """The --spec mapping: row -> {stage, exps: [...], paper?, vs?}; every `vs` (a label or a list of them)
    names a row of the table."""
    if not isinstance(spec, dict) or not spec:
        raise ValueError("--spec: expected a JSON mapping of row -> {stage, exps, paper, vs}")
    for label, r in spec.items():
        if not isinstance(r, dict) or "stage" not in r or not r.get("exps"):
            raise ValueError(f"--spec row {label!r}: expected {{stage, exps: [experiment per seed], ...}}")
        for ref in references(r):
            if ref not in spec:
                raise ValueError(f"--spec row {label!r}: reference row {ref!r} is not a row of the table")
    return spec


def references(row: dict) -> list[str]:
    """A row's reference rows: `vs` is one row's label or a list of them (Table V compares one method with
    both the single-dataset baseline and the proposed framework)."""
    vs = row.get("vs")
    if not vs:
        return []
    if isinstance(vs, str):
        return [vs]
    if isinstance(vs, list) and all(isinstance(v, str) for v in vs):
        return vs
    raise ValueError(f"--spec: `vs` must be a row's label or a list of labels, not {vs!r}")


def _ci(low, high) -> str:
    return "–" if pd.isna(low) or pd.isna(high) else f"[{low:.1f}, {high:.1f}]"


def to_markdown(table: pd.DataFrame, runs: pd.DataFrame, diffs: pd.DataFrame | None = None,
                n_boot: int | None = None, n_patients: int | None = None) -> str:
    rates = [c.removesuffix("_mean") for c in table.columns if c.startswith("FP@") and c.endswith("_mean")]
    has_ci = "average_low" in table.columns
    has_val = "val_average_mean" in table.columns
    head = ("| row | " + " | ".join(rates) + " | average (ours) |" + (" 95 % CI |" if has_ci else "")
            + (" val average | val 95 % CI |" if has_val else "") + " average (paper) | seeds |")
    n_cols = len(rates) + 4 + (1 if has_ci else 0) + (2 if has_val else 0)
    lines = ["## Ablation on the built-in corpus (LENS 3D protocol, test split; sensitivity %, mean ± sd over seeds)",
             "", head, "|" + "---|" * n_cols]
    for _, r in table.iterrows():
        cells = [f"{r[c + '_mean']:.1f} ± {r[c + '_sd']:.1f}" for c in rates]
        paper = "–" if pd.isna(r["paper_average"]) else f"{r['paper_average']:.1f}"
        extra = f" {_ci(r['average_low'], r['average_high'])} |" if has_ci else ""
        if has_val:
            extra += f" {r['val_average_mean']:.1f} | {_ci(r.get('val_average_low'), r.get('val_average_high'))} |"
        lines.append(f"| {r['row']} | " + " | ".join(cells)
                     + f" | **{r['average_mean']:.1f} ± {r['average_sd']:.1f}** |{extra} {paper} | {int(r['seeds'])} |")
    if has_ci:
        lines += ["", f"95 % CI: two-level percentile bootstrap ({n_boot} draws): each draw resamples the "
                  f"{n_patients} test patients with all their sub-volumes, then the row's seeds with replacement, "
                  "and averages them. It covers what other patients and another seed would change."]
    if diffs is not None and len(diffs):
        lines += ["", "Differences to a reference row (mean over seeds; paired bootstrap: the same patients and "
                  "seed draws on both sides). Reproduced only when the interval excludes 0 with the paper's sign.", "",
                  "| row | vs | split | Δ average (ours) | 95 % CI | Δ (paper) | verdict |",
                  "|---|---|---|---:|---:|---:|---|"]
        for _, d in diffs.iterrows():
            paper = "–" if pd.isna(d["paper_delta"]) else f"{d['paper_delta']:+.1f}"
            lines.append(f"| {d['row']} | {d['vs']} | {d['split']} | {d['delta']:+.1f} | "
                         f"{_ci(d['delta_low'], d['delta_high'])} | {paper} | {d['verdict']} |")
    base = table.iloc[0]
    lines += ["", f"Ratio of each row's mean average sensitivity to the first row's ({base['row']}):", ""]
    for _, r in table.iterrows():
        ratio = r["average_mean"] / base["average_mean"] if base["average_mean"] > 0 else float("nan")
        lines.append(f"- {r['row']}: {ratio:.2f}×")
    lines += ["", "Runs: " + ", ".join(f"{a}/{b}" for a, b in runs[["exp", "stage"]].drop_duplicates().to_numpy()), ""]
    return "\n".join(lines)


def plot(table: pd.DataFrame, path: Path) -> None:
    # lazy: matplotlib, for the plot only (not for lens --help)
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on the cluster
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
    save_figure(fig, path)


def parse_spec(text: str):
    """The --spec of a paper-table step (the workflow's JSON); not JSON is a one-line error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--spec: not JSON ({e})") from None


def run(args) -> int:
    spec = check_spec(parse_spec(args.spec))
    runs = collect(spec, args.eval_dir)
    table = aggregate(runs)
    diffs, n_patients = None, None
    if args.val:
        val = aggregate(collect(spec, args.eval_dir, "val"))
        table = table.join(val.set_index("row")[["average_mean", "average_sd", "n_gt"]].add_prefix("val_"), on="row")
    if args.bootstrap:
        table, diffs, n_patients = intervals(spec, table, args.eval_dir, args.bootstrap, args.seed)
        if args.val:
            table, val_diffs, _ = intervals(spec, table, args.eval_dir, args.bootstrap, args.seed, "val", "val_")
            diffs = pd.concat([diffs, val_diffs], ignore_index=True)
    write_parquet(table, args.out / "table.parquet", {"spec": spec, "bootstrap": args.bootstrap, "seed": args.seed})
    # always written (empty without a bootstrap): the rule declares it, and an old one must not survive
    write_parquet(diffs if diffs is not None else pd.DataFrame(columns=DIFF_COLUMNS),
                  args.out / "differences.parquet", {"spec": spec, "bootstrap": args.bootstrap, "seed": args.seed})
    with atomic_path(args.out / "table.md") as tmp:
        tmp.write_text(to_markdown(table, runs, diffs, args.bootstrap, n_patients))
    plot(table, args.out / "froc.png")
    return 0
