"""FPR scores of 3D proposals and the final score of Eq. 4: s = (s_LENS + s_FPR) / 2.

:func:`with_fpr_scores` keeps all three scores in a proposal table (``score_lens``, ``score_fpr``,
``score_fused``) and puts the chosen one in ``score``, the column evaluation ranks by, so that LENS
alone, FPR alone (the paper: worse, 32.0 vs 50.4 average sensitivity) and LENS + FPR can be compared.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pandas as pd
import torch

from lens_core.fpr.model import FprNet, load_fpr
from lens_core.fpr.patches import BOX3D, PROPOSALS3D, crop_patches
from lens_core.io import read_meta, read_table, write_parquet

SCORE_CHOICES = ("fused", "fpr", "lens")


def eq4(s_lens, s_fpr):
    """Eq. 4: the average of the detection and the classification network's scores."""
    return (np.asarray(s_lens, np.float64) + np.asarray(s_fpr, np.float64)) / 2


@torch.no_grad()
def fpr_scores(model: FprNet, proposals: pd.DataFrame, volume: Callable[[str], np.ndarray],
               device="cpu", batch: int = 128) -> np.ndarray:
    """FPR probability of every 3D proposal (rows: volume_id + x1, y1, z1, x2, y2, z2 in
    preprocessed voxels); ``volume(volume_id)`` returns the preprocessed ``[z, y, x]`` image (0..255, any
    storage)."""
    model.eval()
    p = model.preset
    out = np.zeros(len(proposals), np.float32)
    if not len(proposals):
        return out
    boxes = proposals[BOX3D].to_numpy(np.float64)
    for vol, rows in pd.Series(np.arange(len(proposals))).groupby(proposals["volume_id"].to_numpy()).indices.items():
        image = volume(vol)
        for i in range(0, len(rows), batch):
            r = rows[i:i + batch]
            patches, local = crop_patches(image, boxes[r], p.patch, p.context)
            out[r] = torch.sigmoid(model(patches.to(device), local.to(device))).float().cpu().numpy()
    return out


def h5_volumes(h5_path: Path) -> Callable[[str], np.ndarray]:
    """``volume(volume_id)`` reading a preprocessed ``volumes.h5`` (opened per call: scoring reads
    each volume once)."""
    h5_path = Path(h5_path)
    if not h5_path.is_file():
        raise FileNotFoundError(f"volumes file not found: {h5_path}")

    def volume(vid: str) -> np.ndarray:
        with h5py.File(h5_path, "r") as f:
            try:
                return f[vid]["image"][...]
            except KeyError:
                raise ValueError(f"{h5_path}: no volume {vid!r} (named by the proposal table)") from None

    return volume


def with_fpr_scores(proposals: pd.DataFrame, s_fpr: np.ndarray, score: str = "fused") -> pd.DataFrame:
    """A copy of ``proposals`` with ``score_lens`` (LENS's score; kept from a previous run when
    present), ``score_fpr``, ``score_fused`` (Eq. 4) and ``score`` set to the ``score`` choice."""
    if score not in SCORE_CHOICES:
        raise ValueError(f"score must be one of {SCORE_CHOICES}, got {score!r}")
    out = proposals.copy()
    lens = out["score_lens"] if "score_lens" in out else out["score"]
    out["score_lens"] = lens.to_numpy(np.float64)
    out["score_fpr"] = np.asarray(s_fpr, np.float64)
    out["score_fused"] = eq4(out["score_lens"], out["score_fpr"])
    out["score"] = out[f"score_{score}"]
    return out


def score_table(model_path: Path, prep_dir: Path, proposals3d: Path, out: Path, score: str = "fused",
                device="cpu") -> pd.DataFrame:
    """`lens score-fpr`: read a 3D proposal table, add the FPR scores, write it atomically."""
    model, meta = load_fpr(model_path, device)
    props = read_table(proposals3d, {**PROPOSALS3D, "score": "number"}, "3D proposal table", boxes=BOX3D,
                       empty_boxes=True)  # a NaN score gave NaN final scores (Eq. 4)
    s = fpr_scores(model, props, h5_volumes(Path(prep_dir) / "volumes.h5"), device)
    df = with_fpr_scores(props, s, score)
    write_parquet(df, out, {**read_meta(proposals3d), "fpr_model": str(model_path), "score": score})
    return df
