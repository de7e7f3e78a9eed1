"""A LENS model's output on a set of volumes: every slice's 2D proposals, each scored by every dataset
expert (one score column per expert; the paper's "lesion proposals of multiple dataset experts", fused for
mining and scored by evaluation), and their stacking into 3D boxes (paper Sec. IV-C). Not the AFPs'
proposals, which live inside the model (lens_core.model.afp)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lens_core.inference.fusion import fuse_experts, fuse_models
from lens_core.io import read_table
from lens_core.model.lens import LENS
from lens_core.model.network_input import PAD_MULTIPLE, normalize
from lens_core.runtime import autocast
from lens_core.tracklets import stack_to_3d

ID_COLUMNS = ["volume_id", "patient_id", "study_id", "series_id"]


def select_volumes(volumes: pd.DataFrame, split: str | None, shard: tuple[int, int] = (0, 1)) -> pd.DataFrame:
    """The ``split``'s volumes, sorted by id, then every n-th from i (``shard = (i, n)``, 0-based i)."""
    v = volumes if split is None else volumes[volumes["split"] == split]
    v = v.sort_values("volume_id", kind="stable").reset_index(drop=True)
    i, n = shard
    return v.iloc[i::n].reset_index(drop=True)


def _slice_batches(image: np.ndarray, n_slices: set[int], batch: int):
    """Batches of slice indices and, per input depth in ``n_slices``, their 2.5D stacks: the volume is
    normalised once (the same elementwise values as :func:`normalize` of each stack) and each stack is
    gathered by index, as :func:`stack_slices` places it."""
    depth = image.shape[0]
    volume = normalize(image)
    for z0 in range(0, depth, batch):
        zs = np.arange(z0, min(depth, z0 + batch))
        yield zs.tolist(), {n: volume[torch.from_numpy(np.clip(zs[:, None] - n // 2 + np.arange(n), 0, depth - 1))]
                            for n in n_slices}


def expert_names(models: list[LENS]) -> list[str]:
    """The experts of one model, or of separately trained models side by side (one score column each)."""
    names = [d for m in models for d in m.datasets]
    shared = sorted({d for d in names if names.count(d) > 1})
    if shared:
        raise ValueError(f"the models share experts {shared}: their score columns would clash")
    return names


def propose_volume(
    model: LENS | list[LENS],
    image: np.ndarray,
    fuse: list[str],
    device: torch.device,
    batch_slices: int = 16,
    nms_thresh: float = 0.5,
    min_score: float = 0.01,
    max_per_slice: int = 20,
    precision: str = "fp32",
) -> pd.DataFrame:
    """2D proposals of every slice of one preprocessed ``[z, y, x]`` volume (0..255, any storage): ``z, x1, y1, x2, y2,
    score_<dataset>...`` (each expert's score), ``score`` (fused), ``expert``.

    Several ``model`` s (separately trained, Table V) each run on every slice and their experts'
    proposals are fused like one model's (:func:`fuse_models`). ``precision``: :func:`autocast`'s."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    names = expert_names(models)
    h, w = image.shape[1:]
    ph, pw = -(-h // PAD_MULTIPLE) * PAD_MULTIPLE, -(-w // PAD_MULTIPLE) * PAD_MULTIPLE
    fuse_idx = [[m.datasets.index(d) for d in fuse if d in m.datasets] for m in models]
    parts = []  # per slice with proposals: z, boxes, fused, scores, expert
    for zs, stacks in _slice_batches(image, {m.backbone.n_slices for m in models}, batch_slices):
        dets = []
        for m in models:
            x = F.pad(stacks[m.backbone.n_slices], (0, pw - w, 0, ph - h), value=-1.0).to(device)
            with autocast(device, precision):
                dets.append(m.detect(x))
        for i, z in enumerate(zs):
            outs = []
            for det in (d[i] for d in dets):
                b = det["boxes"].float().cpu()
                b[..., 0::2] = b[..., 0::2].clamp(0, w)  # the padding is not image
                b[..., 1::2] = b[..., 1::2].clamp(0, h)
                outs.append((b, det["scores"].float().cpu()))
            if len(models) == 1:
                boxes, fused, scores, expert = fuse_experts(*outs[0], fuse_idx[0], nms_thresh, min_score,
                                                            max_per_slice)
            else:
                boxes, fused, scores, expert = fuse_models(outs, fuse_idx, nms_thresh, min_score, max_per_slice)
            if len(fused):
                parts.append((np.full(len(fused), z, np.int64), boxes.numpy(), fused.numpy(), scores.numpy(),
                              expert.numpy()))
    cols = ["z", "x1", "y1", "x2", "y2", *[f"score_{d}" for d in names], "score", "expert"]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="float32") for c in cols}).astype({"z": "int64", "expert": "object"})
    z, boxes, fused, scores, expert = (np.concatenate(a) for a in zip(*parts))  # one table, not one per slice
    table = {"z": z, **{c: boxes[:, j].astype(np.float32) for j, c in enumerate(["x1", "y1", "x2", "y2"])},
             **{f"score_{d}": scores[:, j].astype(np.float32) for j, d in enumerate(names)},
             "score": fused.astype(np.float32), "expert": np.asarray(names, dtype=object)[expert]}
    return pd.DataFrame(table)[cols]


def propose(
    model: LENS | list[LENS],
    prep_dir: Path,
    dataset: str,
    split: str | None,
    shard: tuple[int, int],
    fuse: list[str],
    device: torch.device,
    batch_slices: int = 16,
    min_score: float = 0.01,
    max_per_slice: int = 20,
    progress: bool = False,
    precision: str = "fp32",
) -> pd.DataFrame:
    """:func:`propose_volume` over a shard of ``prep_dir/dataset``'s volumes, with their id columns."""
    ddir = Path(prep_dir) / dataset
    vols = select_volumes(read_table(ddir / "volumes.parquet", ID_COLUMNS + ["split"], "volume table"), split, shard)
    parts = []
    with h5py.File(ddir / "volumes.h5", "r") as f:
        for row in tqdm(list(vols.itertuples(index=False)), desc=f"propose {dataset}", disable=not progress):
            try:
                image = f[row.volume_id]["image"][...]
            except KeyError:
                raise ValueError(f"{ddir / 'volumes.h5'}: no volume {row.volume_id!r}") from None
            df = propose_volume(model, image, fuse, device, batch_slices, min_score=min_score,
                                max_per_slice=max_per_slice, precision=precision)
            for c in reversed(ID_COLUMNS):
                df.insert(0, c, getattr(row, c))
            parts.append(df)
    if not parts:
        names = expert_names(list(model) if isinstance(model, (list, tuple)) else [model])
        return pd.DataFrame(columns=ID_COLUMNS + ["z", "x1", "y1", "x2", "y2",
                                                  *[f"score_{d}" for d in names], "score", "expert"])
    return pd.concat(parts, ignore_index=True)


def stack_proposals_3d(df: pd.DataFrame, iou_threshold: float = 0.5) -> pd.DataFrame:
    """2D -> 3D stacking (Sec. IV-C): lens_core.tracklets.stack_to_3d on the fused score."""
    if df.empty:
        return pd.DataFrame(columns=["volume_id", "x1", "y1", "z1", "x2", "y2", "z2", "score"])
    return stack_to_3d(df.drop(columns=["expert"], errors="ignore"), iou_threshold=iou_threshold, score_col="score")
