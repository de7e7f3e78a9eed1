"""Dataset formats: one reader (and one writer, for the built-in corpus) per released format.

    read_dataset(fmt, root, split_seed=0, val_fraction=0.2, default_ln_diameter_mm=...) -> DatasetIndex
    load_image(volume_row | volume_id, root, index=None) -> SimpleITK.Image (HU, with spacing/origin/direction)
    read_scan(path, spacing=None, dl_info=None, slices=None) -> SimpleITK.Image: one scan from a path
        (.nii/.nii.gz, .mhd, a DICOM series folder, a DeepLesion PNG folder), through the readers' checks

`fmt` is one of deeplesion | luna | lits | nihln (paper Table I). Column contracts: `common.py`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import SimpleITK as sitk

from . import deeplesion, lits, luna16, nihln
from .common import DATASETS, DatasetError, DatasetIndex
from .scan_file import read_scan

__all__ = ["DATASETS", "DatasetError", "DatasetIndex", "read_dataset", "load_image", "read_scan"]


def read_dataset(fmt: str, root: Path, *, split_seed: int = 0, val_fraction: float = 0.2,
                 default_ln_diameter_mm: float = nihln.DEFAULT_DIAMETER_MM,
                 dl_box_pad_px: float = deeplesion.RECIST_PAD_PX) -> DatasetIndex:
    """Index a dataset in its released format: volumes, lesion boxes (original voxel coordinates, 0-based,
    exclusive upper bounds) and, for DeepLesion, the manual 3D test set when present.

    Splits: DeepLesion from Train_Val_Test; the single-type datasets 80/20 train/val by a seeded hash of
    the volume id (`split_seed`, `val_fraction`). NIH-LN nodes without a sizes file get
    `default_ln_diameter_mm`. DeepLesion key-slice boxes: the RECIST extent +- `dl_box_pad_px` original
    pixels (5 = the released Bounding_boxes).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder missing")
    if fmt == "deeplesion":
        return deeplesion.read_deeplesion(root, box_pad_px=dl_box_pad_px)
    if fmt == "luna":
        return luna16.read_luna(root, split_seed=split_seed, val_fraction=val_fraction)
    if fmt == "lits":
        return lits.read_lits(root, split_seed=split_seed, val_fraction=val_fraction)
    if fmt == "nihln":
        return nihln.read_nihln(root, split_seed=split_seed, val_fraction=val_fraction,
                                default_diameter_mm=default_ln_diameter_mm)
    raise ValueError(f"unknown dataset format {fmt!r}; expected one of {', '.join(DATASETS)}")


def load_image(volume, root: Path, *, index: DatasetIndex | None = None) -> sitk.Image:
    """The HU image of one volume of a `DatasetIndex`.

    volume: a row of `DatasetIndex.volumes` (pandas Series, dict or namedtuple), or a volume_id together
    with `index=`. Raises DatasetError (naming the file) on missing, short or corrupt files.
    """
    if isinstance(volume, str):
        if index is None:
            raise ValueError("load_image(volume_id, ...) needs index=")
        hit = index.volumes[index.volumes["volume_id"] == volume]
        if hit.empty:
            raise KeyError(f"volume {volume!r} not in the index")
        volume = hit.iloc[0]
    row = volume if isinstance(volume, Mapping) or hasattr(volume, "__getitem__") and not hasattr(volume, "_fields") \
        else volume._asdict()
    root = Path(root)
    fmt = row["dataset"]
    if fmt == "deeplesion":
        return deeplesion.load_deeplesion(root, row)
    if fmt == "luna":
        return luna16.load_luna(root, row["source"])
    if fmt == "lits":
        return lits.load_lits(root, row["source"])
    if fmt == "nihln":
        return nihln.load_nihln(root, row["source"])
    raise ValueError(f"unknown dataset {fmt!r}")
