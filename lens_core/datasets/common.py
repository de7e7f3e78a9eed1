"""The record shape every format reader returns, and helpers the four formats share.

Every reader (DeepLesion, LUNA16, LiTS, NIH-LN; paper Sec. VI-A, Table I) turns its released files into
one `DatasetIndex`: a volume table and a lesion table with the columns below. Boxes are in the
ORIGINAL image's continuous 0-based voxel coordinates with exclusive upper bounds (docs/artifacts.md):
voxel i spans [i, i+1), so its centre is i + 0.5. SimpleITK's continuous index puts voxel centres on
integers, hence the `+ 0.5` in `world_to_box_coords`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ..io import atomic_path, atomic_paths

DATASETS = ("deeplesion", "luna", "lits", "nihln")

# Columns of DatasetIndex.volumes. The brief's contract first; then geometry the readers know cheaply
# (DeepLesion's spacing only lives in DL_info.csv, so load_image needs it from here).
VOLUME_COLUMNS = ["volume_id", "dataset", "patient_id", "study_id", "series_id", "split", "source",
                  "first_slice", "last_slice", "n_slices", "height", "width",
                  "spacing_x", "spacing_y", "spacing_z"]
LESION_COLUMNS = ["volume_id", "lesion_id", "kind", "label_kind", "lesion_type",
                  "x1", "y1", "z1", "x2", "y2", "z2", "size_mm", "source_row"]
TEST3D_COLUMNS = ["subvolume", "volume_id", "x1", "y1", "z1", "x2", "y2", "z2", "source_row"]
TEST3D_SUBVOLUME_COLUMNS = ["subvolume", "volume_id", "split", "first_slice", "last_slice", "z_offset",
                            "n_boxes"]


class DatasetError(ValueError):
    """A released file (or the built-in corpus) is missing, truncated, corrupt or inconsistent.

    The message always names the file, and the row (`file:line`) where one is at fault.
    """


@dataclass
class DatasetIndex:
    """What `read_dataset` returns (columns: VOLUME_COLUMNS, LESION_COLUMNS, TEST3D_COLUMNS).

    test3d: DeepLesion's fully annotated 3D test boxes (paper Sec. VI-A), one row per box, z in the
    volume's slice index; None for the other formats. test3d_subvolumes lists every sub-volume,
    including the ones without lesions (they still count in FPs per sub-volume, Sec. VI-C).
    """

    volumes: pd.DataFrame
    lesions: pd.DataFrame
    test3d: pd.DataFrame | None = None
    test3d_subvolumes: pd.DataFrame | None = None


def volumes_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=VOLUME_COLUMNS)
    df = df.astype({"volume_id": str, "dataset": str, "patient_id": str, "study_id": "int64",
                    "series_id": "int64", "split": str, "source": str, "first_slice": "int64",
                    "last_slice": "int64", "n_slices": "int64", "height": "int64", "width": "int64",
                    "spacing_x": "float64", "spacing_y": "float64", "spacing_z": "float64"})
    if not df["volume_id"].is_unique:
        dup = df["volume_id"][df["volume_id"].duplicated()].iloc[0]
        raise DatasetError(f"volume id {dup!r} occurs twice ({df['source'][df['volume_id'] == dup].tolist()})")
    return df.sort_values("volume_id", kind="stable").reset_index(drop=True)


def lesions_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=LESION_COLUMNS)
    return df.astype({"volume_id": str, "lesion_id": str, "kind": str, "label_kind": str, "lesion_type": str,
                      "x1": "float64", "y1": "float64", "z1": "float64", "x2": "float64", "y2": "float64",
                      "z2": "float64", "size_mm": "float64", "source_row": str}).reset_index(drop=True)


def assign_splits(volume_ids: list[str], seed: int, val_fraction: float) -> dict[str, str]:
    """80/20-style train/val split of the single-type datasets (paper Sec. VI-A: "randomly used 80% ...
    for training and 20% for validation"), by a seeded hash of the volume id: deterministic, independent
    of file order, and exactly round(n * val_fraction) volumes go to val."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    key = {v: hashlib.sha256(f"{seed}:{v}".encode()).hexdigest() for v in volume_ids}
    ranked = sorted(volume_ids, key=lambda v: key[v])
    n_val = int(round(len(ranked) * val_fraction))
    return {v: ("val" if i < n_val else "train") for i, v in enumerate(ranked)}


@dataclass(frozen=True)
class ImageInfo:
    """An image's geometry, read from its header alone (no pixel data): what the readers need to map
    annotations into voxel coordinates."""

    size: tuple[int, int, int]            # x, y, z voxels
    spacing: tuple[float, float, float]   # x, y, z mm
    origin: tuple[float, float, float]    # x, y, z mm of voxel (0, 0, 0)'s centre
    direction: tuple[float, ...]          # 9 floats, row-major

    @classmethod
    def of(cls, img: sitk.Image) -> "ImageInfo":
        return cls(tuple(img.GetSize()), tuple(img.GetSpacing()), tuple(img.GetOrigin()), tuple(img.GetDirection()))

    def _probe(self) -> sitk.Image:
        img = sitk.Image([1, 1, 1], sitk.sitkUInt8)  # the transforms do not depend on the size
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def world_to_box_coords(self, xyz_mm) -> np.ndarray:
        """World point (mm) -> continuous voxel coords (x, y, z) in the project convention, with
        SimpleITK's TransformPhysicalPointToContinuousIndex (direction / TransformMatrix flips honoured)."""
        idx = self._probe().TransformPhysicalPointToContinuousIndex([float(v) for v in xyz_mm])
        return np.asarray(idx, float) + 0.5  # ITK puts voxel centres on integers; ours at i + 0.5

    def box_coords_to_world(self, xyz) -> np.ndarray:
        return np.asarray(self._probe().TransformContinuousIndexToPhysicalPoint([float(v) - 0.5 for v in xyz]), float)


def check_inside(point_xyz, size_xyz, where: str) -> None:
    """A lesion centre / end point must lie inside the image ([0, size) per axis)."""
    p = np.asarray(point_xyz, float)
    s = np.asarray(size_xyz, float)
    if not (np.all(np.isfinite(p)) and np.all(p >= 0) and np.all(p <= s)):
        raise DatasetError(f"{where}: coordinates {np.round(p, 3).tolist()} (x, y, z voxels) lie outside "
                           f"the image of size {s.astype(int).tolist()}")


def clip_box(box, size_xyz) -> list[float]:
    """Clip [x1, y1, z1, x2, y2, z2] to the image extent (a lesion centred inside the image may have a
    padded box or diameter that reaches past its border)."""
    x1, y1, z1, x2, y2, z2 = (float(v) for v in box)
    sx, sy, sz = (float(v) for v in size_xyz)
    return [max(x1, 0.0), max(y1, 0.0), max(z1, 0.0), min(x2, sx), min(y2, sy), min(z2, sz)]


def centre_box(centre_xyz, diameter_mm: float, spacing_xyz) -> list[float]:
    """Box of a roughly spherical lesion: centre +- diameter/2, converted per axis by the voxel spacing
    (LUNA16 nodules, NIH-LN nodes)."""
    c = np.asarray(centre_xyz, float)
    h = float(diameter_mm) / 2.0 / np.abs(np.asarray(spacing_xyz, float))
    return [*(c - h).tolist(), *(c + h).tolist()]


def read_image_info(path: Path) -> ImageInfo:
    """Header only: size, spacing, origin, direction."""
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    try:
        r.ReadImageInformation()
    except RuntimeError as e:
        raise DatasetError(f"{path}: unreadable image header ({_first_line(e)})") from None
    return ImageInfo(tuple(r.GetSize()), tuple(r.GetSpacing()), tuple(r.GetOrigin()), tuple(r.GetDirection()))


def read_image(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise DatasetError(f"{path}: cannot read image ({_first_line(e)})") from None


def describe_folder(folder: Path, limit: int = 8) -> str:
    """What a folder holds, for errors that say what was found: its first entries, folders with a '/'."""
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as e:
        return f"cannot list {folder} ({e.strerror})"
    if not entries:
        return "an empty folder"
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(names) + more


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # ITK messages end with the useful sentence; keep them short
    return lines[-1] if lines else type(e).__name__


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (lens_core.io.atomic_path: no partial file on failure)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(text)


def atomic_write_image(image: sitk.Image, path: Path, compress: bool = False) -> None:
    """sitk.WriteImage, atomically. A .mhd header and its .raw are published together (the header names
    the data file, so both are written under their final names in a temporary folder)."""
    path = Path(path)
    pair = [path.with_suffix(".zraw" if compress else ".raw"), path] if path.suffix == ".mhd" else [path]
    with atomic_paths(*pair) as tmps:
        sitk.WriteImage(image, str(tmps[-1]), compress)


def fmt_g(v: float) -> str:
    """Numbers the way the released CSV/TXT files print them (C's %g, 6 significant digits)."""
    s = f"{float(v):.6g}"
    return "0" if s == "-0" else s


def make_image(hu: np.ndarray, spacing_zyx, origin_xyz, direction=None) -> sitk.Image:
    """numpy [z, y, x] -> SimpleITK image with spacing (given z, y, x), origin (x, y, z) and a row-major
    3x3 direction (identity if None)."""
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected a [z, y, x] volume, got shape {hu.shape}")
    img = sitk.GetImageFromArray(hu)
    sz, sy, sx = (float(v) for v in spacing_zyx)
    img.SetSpacing((sx, sy, sz))
    img.SetOrigin(tuple(float(v) for v in origin_xyz))
    if direction is not None:
        img.SetDirection(tuple(float(v) for v in np.asarray(direction, float).ravel()))
    return img
