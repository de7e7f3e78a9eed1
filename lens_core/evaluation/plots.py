"""FROC plot: every variant on one figure, FP rate on a log axis as in the field."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from lens_core.evaluation.froc import interpolate_sensitivity
from lens_core.io import save_figure


def plot_froc(froc: pd.DataFrame, fp_rates, path, title: str = "FROC", stratum: str = "all") -> None:
    """Write a PNG with one curve per variant (rows of ``froc`` whose ``stratum`` matches).

    Curves are drawn through the points the sensitivities are interpolated on; markers show the
    sensitivity at each of ``fp_rates``, the legend gives their average.
    """
    # lazy: matplotlib, for the plot only (not for lens --help)
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on the cluster
    import matplotlib.pyplot as plt

    rows = froc.loc[froc["stratum"] == stratum]
    if rows.empty:
        raise ValueError(f"no curve for stratum {stratum!r} to plot")
    fp_rates = np.asarray(fp_rates, dtype=float)
    lo, hi = fp_rates.min() / 2, fp_rates.max() * 2
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for variant, curve in rows.groupby("variant", sort=False):
        x, y = curve["fp_rate"].to_numpy(), curve["sensitivity"].to_numpy()
        grid = np.geomspace(lo, hi, 400)
        sens = interpolate_sensitivity(x, y, fp_rates)
        (line,) = ax.plot(grid, interpolate_sensitivity(x, y, grid), lw=1.5,
                          label=f"{variant} (avg {100 * np.mean(sens):.1f}%)")
        ax.plot(fp_rates, sens, "o", ms=4, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlim(lo, hi)
    ax.set_xticks(fp_rates, [f"{r:g}" for r in fp_rates])
    ax.set_ylim(0, 1)
    protocol = rows["protocol"].iloc[0]
    unit = {"lens3d": "sub-volume", "deeplesion2d": "image", "luna": "scan"}.get(protocol, "unit")
    ax.set_xlabel(f"FPs per {unit}")
    ax.set_ylabel("sensitivity")
    # a long title wraps instead of running off the figure; the legend goes below the axes, where it
    # covers no curve (inside, "lower right" hid the lowest one)
    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, bbox_inches="tight")
