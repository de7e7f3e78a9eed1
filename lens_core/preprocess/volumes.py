"""Preprocessing (paper Sec. VI-A): orientation, one HU window, resampling, border clipping, HDF5.

Every dataset goes through the same steps so that one network sees one image domain:
canonical (LPS) orientation; resampling to `pixel_mm` in-plane and `slice_mm` between slices
(SimpleITK, linear); the single window -1024..3071 HU -> 0..255 that covers lung, soft tissue and
bone; and clipping of black borders (air outside the body) to save computation.

Boxes move with the image through physical space: a box's edges are mapped from the original
voxel grid to world millimetres and into the preprocessed grid (`map_boxes`), so flips in a
header's direction matrix are handled in one place.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import SimpleITK as sitk
from tqdm import tqdm

from ..datasets import load_image, read_dataset
from ..io import atomic_folder, require_free_space, write_parquet
# the tables' schemas live apart so that the steps that only read the tables (mining, FPR) need no SimpleITK
from .schema import BOX, LESION_SCHEMA, TEST3D_SCHEMA, TRUTH_EXTRA, TRUTH_SCHEMA, VOLUME_SCHEMA  # noqa: F401
from .shards import publish_truth

from .window import HU_MIN, HU_MAX, STORAGES, window  # noqa: F401  (window: the preprocessing's last step)

PREP_FILES = ("volumes.h5", "volumes.parquet", "lesions.parquet", "truth.parquet", "test3d.parquet")
BORDER_HU = -900.0          # voxels above this count as body when clipping black borders
BORDER_MARGIN_PX = 2


@dataclass(frozen=True)
class PrepParams:
    pixel_mm: float = 2.0
    slice_mm: float = 4.0
    storage: str = "uint8"  # preprocess.storage: how volumes.h5 holds the window's [0, 255] (window.py)

    def __post_init__(self):
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")

    def as_meta(self) -> dict:
        return {"pixel_mm": self.pixel_mm, "slice_mm": self.slice_mm, "hu_window": [HU_MIN, HU_MAX],
                "storage": self.storage}


@dataclass
class Prepared:
    image: np.ndarray      # [z, y, x] on the window's 0..255 scale, as params.storage
    ref: sitk.Image        # resampled image geometry before clipping (for box mapping)
    crop: tuple[int, int]  # y0, x0 removed by border clipping


def resample(img: sitk.Image, params: PrepParams) -> sitk.Image:
    img = sitk.DICOMOrient(img, "LPS")
    old_sp, old_sz = np.array(img.GetSpacing()), np.array(img.GetSize())
    new_sp = np.array([params.pixel_mm, params.pixel_mm, params.slice_mm])
    new_sz = np.maximum(1, np.floor(old_sz * old_sp / new_sp + 1e-6)).astype(int)
    # keep the outer edge of the first voxel fixed: origin moves by half a voxel of each grid
    d = np.array(img.GetDirection()).reshape(3, 3)
    origin = np.array(img.GetOrigin()) + d @ ((new_sp - old_sp) / 2)
    return sitk.Resample(img, [int(v) for v in new_sz], sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                         new_sp.tolist(), img.GetDirection(), HU_MIN, sitk.sitkFloat32)


def prepare(img: sitk.Image, params: PrepParams) -> Prepared:
    ref = resample(img, params)
    hu = sitk.GetArrayViewFromImage(ref)
    body = (hu > BORDER_HU).any(axis=0)
    ys, xs = np.nonzero(body)
    if len(ys) == 0:
        y0, y1, x0, x1 = 0, body.shape[0], 0, body.shape[1]
    else:
        y0 = max(0, ys.min() - BORDER_MARGIN_PX)
        y1 = min(body.shape[0], ys.max() + 1 + BORDER_MARGIN_PX)
        x0 = max(0, xs.min() - BORDER_MARGIN_PX)
        x1 = min(body.shape[1], xs.max() + 1 + BORDER_MARGIN_PX)
    return Prepared(window(hu[:, y0:y1, x0:x1], params.storage), ref, (int(y0), int(x0)))


def map_boxes(boxes: np.ndarray, src: sitk.Image, dst: sitk.Image, crop: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Map [N, 6] boxes (x1, y1, z1, x2, y2, z2; project convention) from `src`'s grid to `dst`'s.

    The project convention puts pixel i on [i, i+1); ITK's continuous index puts its centre at i.
    The eight corners travel through physical space, so direction flips are handled.
    """
    boxes = np.asarray(boxes, float).reshape(-1, 6)
    out = np.empty_like(boxes)
    for n, b in enumerate(boxes):
        corners = np.array([[x, y, z] for x in (b[0], b[3]) for y in (b[1], b[4]) for z in (b[2], b[5])]) - 0.5
        world = [src.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners]
        idx = np.array([dst.TransformPhysicalPointToContinuousIndex(w) for w in world]) + 0.5
        lo, hi = idx.min(0), idx.max(0)
        out[n] = [lo[0] - crop[1], lo[1] - crop[0], lo[2], hi[0] - crop[1], hi[1] - crop[0], hi[2]]
    return out


def _snap_z(z1: np.ndarray, z2: np.ndarray, kind: np.ndarray, n_slices: int):
    """Slices are whole: a 3D box covers slices whose centres lie in it; a key-slice box one slice."""
    mid = (z1 + z2) / 2
    zc = np.clip(np.floor(mid), 0, n_slices - 1).astype(np.int64)
    lo = np.clip(np.rint(z1), 0, n_slices - 1)
    hi = np.clip(np.rint(z2), lo + 1, n_slices)
    two_d = kind == "2d"
    lo = np.where(two_d, zc, np.minimum(lo, zc))
    hi = np.where(two_d, zc + 1, np.maximum(hi, zc + 1))
    return zc, lo.astype(float), hi.astype(float)


def _empty(schema: pa.Schema) -> pd.DataFrame:
    return pd.DataFrame({f.name: pd.Series(dtype=f.type.to_pandas_dtype()) for f in schema})


def _shard(volumes: pd.DataFrame, shard: tuple[int, int]) -> pd.DataFrame:
    i, n = shard
    if not (0 <= i < n):
        raise ValueError(f"shard {i}/{n}: need 0 <= i < n")
    volumes = volumes.sort_values("volume_id", kind="stable").reset_index(drop=True)
    return volumes.iloc[i::n]


def preprocess_dataset(fmt: str, root: Path, out_dir: Path, params: PrepParams, *, dataset: str | None = None,
                       shard: tuple[int, int] = (0, 1), truth: Path | None = None, reader_opts: dict | None = None,
                       progress: bool = True, truth_out: Path | None = None) -> dict:
    """Read one dataset with its format reader and write the preprocessed artifacts to `out_dir`.

    Writes volumes.h5, volumes.parquet, lesions.parquet, and when present test3d.parquet (DeepLesion's
    fully annotated 3D test set) and truth.parquet (the built-in corpus's hidden truth). All files are
    written into a fresh temporary folder that replaces `out_dir` as a whole at the end: a failure leaves
    no partial artifact, and a reader never sees tables without their volumes.h5 (or of another run).
    ``truth_out``: the truth table goes to that file instead of `out_dir` (kept apart from the folder every
    later step reads).
    """
    dataset = dataset or fmt
    root, out_dir = Path(root), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: --out exists and is not a folder")
    index = read_dataset(fmt, root, **(reader_opts or {}))
    volumes = _shard(index.volumes, shard)
    truth_df = _load_truth(truth, fmt, index.volumes) if truth else None
    test3d = index.test3d
    if test3d is not None:
        test3d = test3d.merge(index.test3d_subvolumes[["subvolume", "split"]], on="subvolume", how="left")
    meta = {"dataset": dataset, "format": fmt, "root": str(root), "shard": list(shard), **params.as_meta(),
            "reader": reader_opts or {}}

    vol_rows, les_parts, truth_parts, test_parts = [], [], [], []
    raw_bytes = 0
    with atomic_folder(out_dir, own=PREP_FILES) as tmp_dir:
        with h5py.File(tmp_dir / "volumes.h5", "w") as h5:
            h5.attrs["lens"] = json.dumps(meta)
            for _, v in tqdm(volumes.iterrows(), total=len(volumes), desc=f"preprocess {dataset}",
                             disable=not progress, unit="vol"):
                img = load_image(v, root)
                pre = prepare(img, params)
                nz, ny, nx = pre.image.shape
                # its raw bytes, an upper bound of the gzip'd chunks, plus room for HDF5's own records
                require_free_space(tmp_dir, pre.image.nbytes + (1 << 20), f"volume {v['volume_id']}", out_dir)
                g = h5.create_group(v["volume_id"])
                # float storage: byte shuffling before gzip (HDF5's shuffle filter) about halves its files
                g.create_dataset("image", data=pre.image, chunks=(1, ny, nx), compression="gzip", compression_opts=4,
                                 shuffle=pre.image.itemsize > 1)
                ref = pre.ref
                origin = ref.TransformIndexToPhysicalPoint([pre.crop[1], pre.crop[0], 0])
                g.attrs.update({"spacing": np.array(ref.GetSpacing())[::-1], "orig_spacing": np.array(img.GetSpacing())[::-1],
                                "origin": np.array(origin), "direction": np.array(ref.GetDirection()),
                                "source": str(v["source"]), "crop": np.array(pre.crop)})
                raw_bytes += img.GetNumberOfPixels() * img.GetSizeOfPixelComponent()
                vol_rows.append({**{k: v[k] for k in ("volume_id", "patient_id", "study_id", "series_id", "split", "source")},
                                 "dataset": dataset, "n_slices": nz, "height": ny, "width": nx,
                                 "spacing_z": params.slice_mm, "spacing_y": params.pixel_mm, "spacing_x": params.pixel_mm})
                les = index.lesions[index.lesions["volume_id"] == v["volume_id"]]
                if len(les):
                    les_parts.append(_to_prep(les, img, pre, v, dataset))
                if truth_df is not None:
                    t = truth_df[truth_df["volume_id"] == v["volume_id"]]
                    if len(t):
                        truth_parts.append(_to_prep(t.assign(kind="3d"), img, pre, v, dataset))
                if test3d is not None:
                    t = test3d[test3d["volume_id"] == v["volume_id"]]
                    if len(t):
                        test_parts.append(_to_prep(t.assign(kind="3d"), img, pre, v, dataset))
        vol_df = pd.DataFrame(vol_rows, columns=[f.name for f in VOLUME_SCHEMA])
        les_df = pd.concat(les_parts, ignore_index=True) if les_parts else _empty(LESION_SCHEMA)
        write_parquet(vol_df, tmp_dir / "volumes.parquet", meta, VOLUME_SCHEMA)
        write_parquet(les_df, tmp_dir / "lesions.parquet", meta, LESION_SCHEMA)
        # truth.parquet and test3d.parquet always exist (empty where the data has none) so that the
        # workflow's file graph is the same for the built-in corpus and for real data
        tdf = pd.concat(truth_parts, ignore_index=True) if truth_parts else _empty(TRUTH_SCHEMA)
        write_parquet(tdf, tmp_dir / "truth.parquet", meta, TRUTH_SCHEMA)
        subs = index.test3d_subvolumes if test3d is not None else pd.DataFrame(columns=["volume_id", "split", "subvolume"])
        subs = subs[subs["volume_id"].isin(vol_df["volume_id"])]
        tdf = pd.concat(test_parts, ignore_index=True) if test_parts else _empty(TEST3D_SCHEMA)
        # every sub-volume counts for FPs per sub-volume, also those without lesions (Sec. VI-C)
        m = {**meta, "subvolumes": {sp: sorted(g["subvolume"]) for sp, g in subs.groupby("split")}}
        write_parquet(tdf, tmp_dir / "test3d.parquet", m, TEST3D_SCHEMA)
        if truth_out is not None:
            publish_truth(tmp_dir / "truth.parquet", Path(truth_out))
    return {"volumes": len(vol_df), "slices": int(vol_df["n_slices"].sum()), "lesions": len(les_df),
            "raw_bytes": int(raw_bytes)}


def _to_prep(rows: pd.DataFrame, img: sitk.Image, pre: Prepared, v: pd.Series, dataset: str) -> pd.DataFrame:
    """Rows with original-voxel boxes -> rows in preprocessed pixel coordinates."""
    rows = rows.copy()
    if rows[BOX].isna().any(axis=None):
        rows = rows[rows[BOX].notna().all(axis=1)]
    mapped = map_boxes(rows[BOX].to_numpy(float), img, pre.ref, pre.crop)
    rows[BOX] = mapped
    nz = pre.image.shape[0]
    kind = rows["kind"].to_numpy() if "kind" in rows else np.full(len(rows), "3d")
    rows["z"], rows["z1"], rows["z2"] = _snap_z(rows["z1"].to_numpy(), rows["z2"].to_numpy(), kind, nz)
    for k in ("patient_id", "study_id", "series_id", "split"):
        rows[k] = v[k]
    rows["dataset"] = dataset
    for col, default in (("lesion_type", "unknown"), ("label_kind", "gt"), ("lesion_id", "")):
        if col not in rows:
            rows[col] = default
    return rows


def _load_truth(path: Path, fmt: str, volumes: pd.DataFrame) -> pd.DataFrame:
    """The corpus's hidden truth for one dataset, keyed by the reader's volume ids."""
    t = pd.read_parquet(path)
    t = t[t["dataset"] == fmt].copy()
    if fmt == "deeplesion":  # one slice run per series folder in the built-in corpus
        by_folder = {Path(s).name: v for s, v in zip(volumes["source"], volumes["volume_id"])}
        t["volume_id"] = t["scan_key"].map(by_folder)
    elif fmt == "lits":
        t["volume_id"] = "volume-" + t["scan_key"]
    else:
        t["volume_id"] = t["scan_key"]
    t["lesion_id"] = t["instance_id"]
    missing = t["volume_id"].isna() | ~t["volume_id"].isin(volumes["volume_id"])
    if missing.any():
        raise ValueError(f"{path}: {int(missing.sum())} truth rows name volumes the {fmt} reader did not find "
                         f"(first: {t.loc[missing, 'scan_key'].iloc[0]})")
    return t.drop(columns=["split"])
