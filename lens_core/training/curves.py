"""Loss curves of a training run: the per-step table (Parquet) and a PNG."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lens_core.io import atomic_path, save_figure

LOSS_TERMS = ["center", "size", "class", "box", "total"]


def write_loss_table(rows: list[dict], path: Path) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["epoch", "step", "dataset", *LOSS_TERMS, "lr", "grad_norm"])
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return df


def plot_losses(df: pd.DataFrame, path: Path) -> None:
    """Each Eq. 3 term per step, smoothed, one line per dataset (the per-dataset AFPs side by side)."""
    # lazy: matplotlib, for the plots only; importing the module leaves the backend alone
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on the cluster
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LOSS_TERMS), figsize=(4 * len(LOSS_TERMS), 3.2))
    if len(df):
        for ds, g in df.groupby("dataset"):
            for ax, term in zip(axes, LOSS_TERMS):
                ax.plot(g["step"], g[term].rolling(max(1, len(g) // 25), min_periods=1).mean(), label=ds, lw=1)
    for ax, term in zip(axes, LOSS_TERMS):
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def write_val_curve(rows: list[dict], path: Path) -> pd.DataFrame:
    """The learning curve: validation average sensitivity after each scored epoch (``train.val_every``)."""
    df = pd.DataFrame(rows, columns=["epoch", "step", "val_average", "n_gt"])
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return df


def plot_val_curve(df: pd.DataFrame, path: Path, title: str = "") -> None:
    # lazy: matplotlib, for the plots only; importing the module leaves the backend alone
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on the cluster
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(df["epoch"], 100 * df["val_average"], "o-")
    ax.set_xlabel("epoch (one pass over every dataset's positives)")
    ax.set_ylabel("validation average sensitivity, %")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
