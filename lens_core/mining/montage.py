"""A review sheet of mined lesions (issue 5 audit): one crop per mined box, the box drawn, the strategy
and -- where the hidden truth is known -- TP / duplicate / FP in the title, so a radiologist can check
a sample at a glance (the paper checked 100 intra-patient matches by hand, Sec. VI-D).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from lens_core.io import InputError, require_columns, save_figure
from lens_core.preprocess.window import level

__all__ = ["sample_for_review", "write_montage"]

BOX_COLS = ["x1", "y1", "x2", "y2"]
# Display windows on the preprocessing's 0..255 scale (HU -1024..3071): soft tissue (W400 L40) and lung
# (W1500 L-600); "auto" takes lung when the box's surroundings are mostly air.
WINDOWS = {"soft_tissue": (float(level(-160)), float(level(240))), "lung": (float(level(-1350)), float(level(150))),
           "full": (0, 255)}
VERDICT_COLOUR = {"TP": "#1a9850", "duplicate": "#fdae61", "FP": "#d73027", "": "#4575b4"}


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: cannot open the preprocessed volumes ({e})") from e


def sample_for_review(mined: pd.DataFrame, n: int = 24, seed: int = 0, by: str = "source_rule") -> pd.DataFrame:
    """Up to ``n`` rows, spread evenly over the values of ``by`` (each strategy gets its share)."""
    if len(mined) <= n:
        return mined.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    groups = list(mined.groupby(by, sort=True).indices.values()) if by in mined.columns else [np.arange(len(mined))]
    queues = [list(rng.permutation(g)) for g in groups]
    pick = []
    while len(pick) < n:  # round robin: each strategy gets an equal share, a small one gives its rest away
        for q in queues:
            if q and len(pick) < n:
                pick.append(q.pop())
    return mined.iloc[np.sort(np.asarray(pick))].reset_index(drop=True)


def write_montage(boxes: pd.DataFrame, prep_dir: str | Path, path: str | Path, *, verdict: np.ndarray | None = None,
                  cols: int = 6, context: float = 3.0, min_side_px: float = 24.0, title: str = "",
                  window: str = "auto") -> None:
    """A PNG grid, one panel per row of ``boxes`` (``volume_id, z, x1..y2``, optional ``source_rule``):
    the slice cropped to ``context`` x the box's longer side (at least ``min_side_px``) around it, the
    box drawn (green TP, orange duplicate, red FP, blue unknown), titled ``strategy · verdict`` and the
    volume/slice. ``window``: auto, soft_tissue, lung or full. Written atomically (matplotlib, Agg)."""
    if window != "auto" and window not in WINDOWS:
        raise ValueError(f"window must be auto or one of {sorted(WINDOWS)}, got {window!r}")
    # lazy: matplotlib, for the montage only (not for lens --help nor the other mining steps)
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on the cluster
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    require_columns(boxes, ["volume_id", "z", *BOX_COLS], "montage boxes")
    b = boxes.reset_index(drop=True)
    verdict = np.full(len(b), "", object) if verdict is None else np.asarray(verdict, object)
    if len(verdict) != len(b):
        raise ValueError(f"verdict has {len(verdict)} entries for {len(b)} boxes")
    n = max(len(b), 1)
    cols = min(cols, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), dpi=100, squeeze=False)
    h5 = Path(prep_dir) / "volumes.h5"
    with _open_h5(h5) as f:
        for k, ax in enumerate(axes.ravel()):
            ax.set_axis_off()
            if k >= len(b):
                continue
            r = b.iloc[k]
            vid, z = str(r["volume_id"]), int(r["z"])
            if vid not in f:
                raise InputError(f"{h5}: no volume {vid!r} (montage row {k})")
            img = f[vid]["image"][z]
            x1, y1, x2, y2 = (float(r[c]) for c in BOX_COLS)
            half = max(context * max(x2 - x1, y2 - y1), min_side_px) / 2
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            # pixel i spans [i, i+1): imshow's extent puts the crop in the boxes' own coordinates
            lo_x, hi_x = int(max(np.floor(cx - half), 0)), int(min(np.ceil(cx + half), img.shape[1]))
            lo_y, hi_y = int(max(np.floor(cy - half), 0)), int(min(np.ceil(cy + half), img.shape[0]))
            crop = img[lo_y:hi_y, lo_x:hi_x]
            win = window if window != "auto" else ("lung" if np.median(crop) < level(-500) else "soft_tissue")
            vmin, vmax = WINDOWS[win]
            ax.imshow(crop, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest",
                      extent=(lo_x, hi_x, hi_y, lo_y))
            colour = VERDICT_COLOUR.get(str(verdict[k]), VERDICT_COLOUR[""])
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5, ec=colour))
            rule = str(r["source_rule"]) if "source_rule" in b.columns else ""
            head = " · ".join(s for s in (rule, str(verdict[k])) if s)
            ax.set_title(f"{head}\n{vid[:20]} z={z}", fontsize=7, color=colour)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
