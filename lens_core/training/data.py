"""Training slices from the preprocessed artifacts (docs/artifacts.md): 2.5D inputs, per-slice 2D
boxes from 2D/3D labels, augmentation (Sec. VI-A) and batch collation with AFP targets."""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lens_core.io import read_table
from lens_core.model.lens import ImageTargets
from lens_core.model.network_input import PAD_MULTIPLE, normalize, stack_slices
from lens_core.training.config import TrainConfig
from lens_core.training.targets import batch_targets

BOX_COLUMNS = ["volume_id", "dataset", "z", "x1", "y1", "x2", "y2", "z1", "z2", "kind", "label_kind"]


@dataclass
class SliceLabels:
    """2D boxes on one slice: ``gt [N, 4]`` lesions, ``ignore [M, 4]`` uncertain regions."""

    gt: list = field(default_factory=list)
    ignore: list = field(default_factory=list)


@dataclass
class DatasetIndex:
    """One dataset's training slices: which are positive, by lesion, and which may be negatives."""

    name: str
    h5_path: Path
    labels: dict  # (volume_id, z) -> SliceLabels
    lesion_slices: list  # per 3D lesion (lesion_groups): its (volume_id, z) keys
    negatives: list  # (volume_id, z) keys with no lesion and far enough from any label
    # volume_id -> its volumes.h5 where that is not ``h5_path`` (volumes pooled from other datasets)
    h5_paths: dict = field(default_factory=dict)

    def h5_of(self, volume_id: str) -> Path:
        return self.h5_paths.get(volume_id, self.h5_path)


def _volumes(ds: DatasetIndex) -> set:
    return {v for v, _ in [*ds.labels, *ds.negatives]} | {v for keys in ds.lesion_slices for v, _ in keys}


def pool_index(task: DatasetIndex, others: list[DatasetIndex], positive_only: bool = False) -> DatasetIndex:
    """Data pooling (paper Table V): ``others``' slices, positives and negatives alike (only their
    positives with ``positive_only``: Table V's "positive data pooling"), become ``task``'s, each volume
    still read from its own dataset's file."""
    labels, lesion_slices, negatives = dict(task.labels), list(task.lesion_slices), list(task.negatives)
    h5_paths, owner = dict(task.h5_paths), dict.fromkeys(_volumes(task), task.name)
    for ds in others:
        vols = _volumes(ds)
        clash = sorted(vols & owner.keys())
        if clash:  # slices are keyed by (volume_id, z): a shared id would merge two volumes' labels
            raise ValueError(f"cannot pool {ds.name} into {task.name}: volume id {clash[0]!r} is also in "
                             f"{owner[clash[0]]}")
        owner |= dict.fromkeys(vols, ds.name)
        h5_paths |= {v: ds.h5_of(v) for v in vols}
        labels |= ds.labels
        lesion_slices += ds.lesion_slices
        if not positive_only:
            negatives += ds.negatives
    return DatasetIndex(task.name, task.h5_path, labels, lesion_slices, sorted(negatives), h5_paths)


def slice_boxes(row, min_end_scale: float) -> list[tuple[int, list[float]]]:
    """The 2D boxes of one label row: ``kind == '2d'`` -> its key slice ``z``; ``kind == '3d'`` ->
    every slice in ``[z1, z2)``, the x/y box shrunk toward the ends like an ellipsoid's cross-section
    (scale sqrt(1 - t^2), t the distance from the centre in half-depths, floored at ``min_end_scale``)."""
    box = [float(row.x1), float(row.y1), float(row.x2), float(row.y2)]
    if row.kind == "2d":
        return [(int(row.z), box)]
    if row.kind != "3d":
        raise ValueError(f"unknown box kind {row.kind!r}")
    z1, z2 = int(row.z1), int(row.z2)
    cz, half = (z1 + z2) / 2, max((z2 - z1) / 2, 1e-6)
    cx, cy, w, h = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
    out = []
    for z in range(z1, z2):
        t = min(1.0, abs(z + 0.5 - cz) / half)
        s = max(min_end_scale, float(np.sqrt(max(0.0, 1 - t * t))))
        out.append((z, [cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2]))
    return out


def lesion_groups(lab: pd.DataFrame) -> list:
    """The 3D lesion each label row belongs to (paper Table IV: one positive slice per 3D GT per epoch): a
    key-slice box and the cross-slice boxes propagated from it share ``(volume_id, lesion_id)``; an
    intra-patient tracklet is one new lesion in its volume, whichever annotation it matched (its rows carry
    the matched annotation's lesion_id, from another study); a row without a lesion id is a lesion alone."""
    n = len(lab)
    lesion = lab["lesion_id"].astype("string").fillna("") if "lesion_id" in lab else pd.Series([""] * n)
    kinds = lab["label_kind"].to_numpy()
    tracklet = lab["tracklet_id"].to_numpy() if "tracklet_id" in lab else np.full(n, -1)
    out = []
    for i, (v, lid, kind, t) in enumerate(zip(lab["volume_id"], lesion, kinds, tracklet)):
        if kind == "mined_intra_patient" and t >= 0:
            out.append((v, "tracklet", int(t)))
        elif lid:
            out.append((v, "lesion", lid))
        else:
            out.append((v, "row", i))
    return out


def volume_subset(volume_ids, fraction: float, name: str) -> list:
    """The first ``ceil(fraction * n)`` (at least one) of the ``n`` volumes in an order fixed by the
    dataset's name alone: the same subset for every training seed, and a smaller fraction's subset
    lies inside a larger one's (paper Fig. 7 compares models on growing training sets)."""
    ids = sorted(set(volume_ids))
    if not ids:
        return []
    order = np.random.default_rng(zlib.crc32(name.encode())).permutation(len(ids))
    k = max(1, math.ceil(round(fraction * len(ids), 9)))  # round: 0.07 * 100 is 7.000000000000001
    return [ids[i] for i in order[:k]]


def build_index(
    cfg: TrainConfig, prep_dir: Path, labels: pd.DataFrame | None = None, split: str = "train"
) -> dict[str, DatasetIndex]:
    """Index every configured dataset's ``split`` slices.

    Labels come from ``prep_dir/{dataset}/lesions.parquet``, unless ``labels`` (a round-2 table)
    has rows for that dataset, in which case those rows replace the dataset's own table. The
    ``cfg.pool`` datasets are indexed the same way, then pooled into the first dataset's entry.
    """
    prep_dir = Path(prep_dir)
    index = {}
    for name in [*cfg.datasets, *cfg.pool]:
        ddir = prep_dir / name
        vols = read_table(ddir / "volumes.parquet", ["volume_id", "split", "n_slices"], "volume table")
        vols = vols[vols["split"] == split]
        if split == "train" and name in cfg.volume_fraction:
            vols = vols[vols["volume_id"].isin(volume_subset(vols["volume_id"], cfg.volume_fraction[name], name))]
        if labels is not None and (labels["dataset"] == name).any():
            lab, src = labels[labels["dataset"] == name], "labels table"
        else:
            src = ddir / "lesions.parquet"
            lab = read_table(src, BOX_COLUMNS, "lesion table")
        depth = dict(zip(vols["volume_id"], vols["n_slices"].astype(int)))
        lab = lab[lab["volume_id"].isin(depth)]
        per_slice: dict = {}
        lesions, blocked = {}, {v: np.zeros(n, bool) for v, n in depth.items()}
        for i, (row, group) in enumerate(zip(lab.itertuples(index=False), lesion_groups(lab))):
            if row.label_kind in cfg.gt_kinds:
                role = "gt"
            elif row.label_kind in cfg.ignore_kinds:
                role = "ignore"
            else:
                continue
            if not (row.x2 > row.x1 and row.y2 > row.y1):
                raise ValueError(f"{src}: row {i} (volume {row.volume_id}): empty box {row.x1, row.y1, row.x2, row.y2}")
            try:
                boxes = slice_boxes(row, cfg.min_end_scale)
            except ValueError as e:
                raise ValueError(f"{src}: row {i} (volume {row.volume_id}): {e}") from e
            n = depth[row.volume_id]
            keys = []
            for z, b in boxes:
                if not 0 <= z < n:
                    raise ValueError(f"{src}: row {i} (volume {row.volume_id}): slice {z} outside 0..{n - 1}")
                getattr(per_slice.setdefault((row.volume_id, z), SliceLabels()), role).append(b)
                keys.append((row.volume_id, z))
            if role == "gt":
                # a key-slice label leaves the lesion's other slices unlabeled: keep negatives away
                gap = cfg.neg_gap_2d if row.kind == "2d" else cfg.neg_gap_3d
                zs = [z for z, _ in boxes]
                blocked[row.volume_id][max(0, min(zs) - gap):max(zs) + 1 + gap] = True
                lesions.setdefault(group, set()).update(keys)
            # with cfg.unlabeled_slices an ignore-only slice stays a negative slice, its uncertain regions
            # ignored (paper Table IV, last row: unlabeled slices join training, uncertain lesions ignored)
        # a dataset labelled by key slices (2D boxes) leaves every other slice unlabelled, not lesion-free:
        # its slices without a lesion label are negatives only with cfg.unlabeled_slices (round 2)
        key_sliced = any(k == "2d" for k, kind in zip(lab["kind"], lab["label_kind"]) if kind in cfg.gt_kinds)
        if key_sliced and not cfg.unlabeled_slices:
            negatives = []
        else:
            negatives = [(v, z) for v, b in blocked.items() for z in np.flatnonzero(~b).tolist()]
        lesion_slices = [sorted(lesions[g]) for g in sorted(lesions, key=str)]
        index[name] = DatasetIndex(name, ddir / "volumes.h5", per_slice, lesion_slices, sorted(negatives))
    if cfg.pool:
        first = cfg.datasets[0]
        index[first] = pool_index(index[first], [index.pop(name) for name in cfg.pool], cfg.pool_positive_only)
    return index


class SliceReader:
    """Reads 2.5D stacks from the datasets' ``volumes.h5`` files (kept open)."""

    def __init__(self, n_slices: int):
        self.n_slices = n_slices
        self._files: dict[Path, h5py.File] = {}

    def read(self, h5_path: Path, volume_id: str, z: int) -> np.ndarray:
        f = self._files.get(h5_path)
        if f is None:
            try:
                f = self._files[h5_path] = h5py.File(h5_path, "r")
            except OSError as e:
                raise ValueError(f"{h5_path}: cannot open volumes file: {e}") from e
        try:
            image = f[volume_id]["image"]
        except KeyError as e:
            raise ValueError(f"{h5_path}: no volume {volume_id!r}") from e
        return stack_slices(image, z, self.n_slices)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def augment(image: torch.Tensor, gt: np.ndarray, ign: np.ndarray, rng: np.random.Generator, cfg: TrainConfig):
    """Random resize (0.8-1.2) and shift (+-8 px) of image and boxes (Sec. VI-A); same canvas size."""
    s = rng.uniform(*cfg.scale_range)
    dx, dy = (int(v) for v in rng.integers(-int(cfg.max_shift), int(cfg.max_shift) + 1, size=2))
    _, h, w = image.shape
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    scaled = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    canvas = torch.full_like(image, -1.0)  # air
    # paste ``scaled`` at offset (dy, dx), cropped to the canvas
    ys, xs = max(0, dy), max(0, dx)
    ye, xe = min(h, dy + nh), min(w, dx + nw)
    if ye > ys and xe > xs:
        canvas[:, ys:ye, xs:xe] = scaled[:, ys - dy:ye - dy, xs - dx:xe - dx]
    sx, sy = nw / w, nh / h

    def move(b):
        if not len(b):
            return b
        b = b * np.array([sx, sy, sx, sy]) + np.array([dx, dy, dx, dy])
        b[:, 0::2] = b[:, 0::2].clip(0, w)
        b[:, 1::2] = b[:, 1::2].clip(0, h)
        return b[(b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)]

    return canvas, move(gt), move(ign)


def crop(image: torch.Tensor, gt: np.ndarray, ign: np.ndarray, size: int, rng: np.random.Generator,
         keep_fraction: float = 0.5):
    """A random ``size x size`` window of ``image [S, H, W]`` (padded with air where smaller) that
    holds one randomly chosen lesion box whole when the slice has any. Boxes are clipped to the
    window; a lesion keeping less than ``keep_fraction`` of its area becomes an ignored region
    (a sliver of a lesion is neither a positive nor a negative)."""
    _, h, w = image.shape

    def start(extent: int, lo: float, hi: float) -> int:
        top = max(0, extent - size)
        a, b = 0, top
        if hi > lo:  # keep [lo, hi) inside [x0, x0 + size)
            a, b = max(a, int(np.ceil(hi)) - size), min(b, int(np.floor(lo)))
        return int(rng.integers(a, b + 1)) if b >= a else int(np.clip(round((lo + hi - size) / 2), 0, top))

    if len(gt):
        x1, y1, x2, y2 = gt[int(rng.integers(len(gt)))]
    else:
        x1 = y1 = x2 = y2 = 0.0
    x0, y0 = start(w, x1, x2), start(h, y1, y2)
    win = image[:, y0:y0 + size, x0:x0 + size]
    out = torch.full((image.shape[0], size, size), -1.0)  # air
    out[:, :win.shape[1], :win.shape[2]] = win
    off = np.array([x0, y0, x0, y0], np.float64)

    def move(b):
        b = b.reshape(-1, 4) - off
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        b = b.clip(0, size)
        kept = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        ok = (b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)
        return b, ok, kept >= keep_fraction * np.maximum(area, 1e-6)

    g, g_ok, g_whole = move(gt)
    i, i_ok, _ = move(ign)
    return out, g[g_ok & g_whole], np.concatenate([i[i_ok], g[g_ok & ~g_whole]])


@dataclass
class Batch:
    images: torch.Tensor  # [B, S, H, W]
    dataset: str
    targets: list  # list[ImageTargets]
    afp: object  # AfpTargets


def load_batch(
    keys: list, ds: DatasetIndex, reader: SliceReader, cfg: TrainConfig, stride: int,
    rng: np.random.Generator | None,
) -> Batch:
    """Read, augment (when ``rng`` is given), pad to a common size and build the targets."""
    images, gts, igns = [], [], []
    for vol, z in keys:
        img = normalize(reader.read(ds.h5_of(vol), vol, z))
        lab = ds.labels.get((vol, z), SliceLabels())
        gt = np.asarray(lab.gt, np.float64).reshape(-1, 4)
        ign = np.asarray(lab.ignore, np.float64).reshape(-1, 4)
        if rng is not None and cfg.augment:
            img, gt, ign = augment(img, gt, ign, rng, cfg)
        if rng is not None and cfg.crop_size:
            img, gt, ign = crop(img, gt, ign, cfg.crop_size, rng)
        images.append(img)
        gts.append(torch.as_tensor(gt, dtype=torch.float32))
        igns.append(torch.as_tensor(ign, dtype=torch.float32))
    h = max(i.shape[1] for i in images)
    w = max(i.shape[2] for i in images)
    h, w = -(-h // PAD_MULTIPLE) * PAD_MULTIPLE, -(-w // PAD_MULTIPLE) * PAD_MULTIPLE
    batch = torch.stack([F.pad(i, (0, w - i.shape[2], 0, h - i.shape[1]), value=-1.0) for i in images])
    afp = batch_targets(gts, igns, (h // stride, w // stride), stride, cfg.r_c, cfg.r_i)
    return Batch(batch, ds.name, [ImageTargets(g, i) for g, i in zip(gts, igns)], afp)
