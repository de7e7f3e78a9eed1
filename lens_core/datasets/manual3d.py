"""`lens import-manual-3d`: the authors' release of DeepLesion's fully annotated 3D test set
(`DeepLesion_manual_1K_test_release.pkl`, paper Sec. VI-A: 200 validation and 800 test sub-volumes) into the
reader's `manual_3d/boxes.csv` and `subvolumes.csv` (lens_core.datasets.deeplesion.read_manual_3d).

The release is a pickle: ``{'val': {name: array}, 'test': {name: array}}``, each array float64 ``(n, 6)``
``[x1, y1, z1, x2, y2, z2]`` with inclusive extents and z the whole volume's slice number (the PNG names);
``name`` is ``{volume}_{first:03d}-{last:03d}``. A pickle from outside can run any code when loaded, so it is
read by an unpickler that builds numpy arrays and dtypes and nothing else: any other global it names is
refused before it is built.
"""
from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np
from numpy._core.multiarray import _reconstruct  # numpy 2's name for both spellings

from ..io import atomic_folder
from .common import DatasetError

# what the release references (numpy 1 and numpy 2 spell the first one differently), and nothing else
ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
           ("numpy", "ndarray"), ("numpy", "dtype")}
SPLITS = ("val", "test")
NAME_RE = re.compile(r"(\d{6}_\d{2}_\d{2})_(\d{3,})-(\d{3,})")
BOX_HEADER = "split,subvolume,volume,first_slice,last_slice,x1,y1,z1,x2,y2,z2"
SUB_HEADER = "split,subvolume,volume,first_slice,last_slice,n_boxes"


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refuses global {module}.{name} (only numpy arrays are read)")
        if module.startswith("numpy") and name == "_reconstruct":
            return _reconstruct
        return getattr(np, name)


def load_release(path: Path) -> dict:
    """The release's dict, read without running anything but numpy's array and dtype constructors."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    try:
        doc = _NumpyOnly(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError) as e:
        raise DatasetError(f"{path}: not the manual 3D release: {e}") from None
    if not isinstance(doc, dict) or not doc or not set(doc) <= set(SPLITS):
        raise DatasetError(f"{path}: not the manual 3D release (want a dict of splits {list(SPLITS)}, got "
                           f"{type(doc).__name__}{' with keys ' + str(sorted(map(str, doc))) if isinstance(doc, dict) else ''})")
    return doc


def release_tables(doc: dict, path: Path) -> tuple[list[str], list[str]]:
    """The CSV lines (boxes.csv, subvolumes.csv) of a loaded release, every entry checked."""
    boxes, subs = [BOX_HEADER], [SUB_HEADER]
    for split in SPLITS:
        entries = doc.get(split, {})
        if not isinstance(entries, dict):
            raise DatasetError(f"{path}: split {split!r} is a {type(entries).__name__}, expected a dict")
        for name, arr in entries.items():
            where = f"{path}: {split}/{name}"
            m = NAME_RE.fullmatch(str(name))
            if not m:
                raise DatasetError(f"{where}: not a sub-volume name {{volume}}_{{first:03d}}-{{last:03d}}")
            volume, first, last = m.group(1), int(m.group(2)), int(m.group(3))
            if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != 6:
                raise DatasetError(f"{where}: expected an (n, 6) array of boxes, got "
                                   f"{getattr(arr, 'shape', type(arr).__name__)}")
            if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
                raise DatasetError(f"{where}: box values must be whole pixel and slice numbers")
            b = arr.astype(np.int64)
            bad = (b[:, 3:] < b[:, :3]).any(1) | (b[:, 2] < first) | (b[:, 5] > last) | (b[:, :2] < 0).any(1)
            if bad.any():
                raise DatasetError(f"{where}: box {int(np.flatnonzero(bad)[0])} {b[bad][0].tolist()} is inverted or "
                                   f"outside slices {first}..{last}")
            head = f"{split},{name},{volume},{first},{last}"
            boxes += [f"{head},{','.join(map(str, row))}" for row in b.tolist()]
            subs.append(f"{head},{len(b)}")
    return boxes, subs


def import_manual_3d(pkl: Path, out: Path) -> tuple[int, int]:
    """Write ``out/boxes.csv`` and ``out/subvolumes.csv`` from the release ``pkl`` (as one unit); returns the
    numbers of sub-volumes and boxes."""
    pkl = Path(pkl)
    boxes, subs = release_tables(load_release(pkl), pkl)
    with atomic_folder(out, own={"boxes.csv", "subvolumes.csv"}) as tmp:
        (tmp / "boxes.csv").write_text("\n".join(boxes) + "\n")
        (tmp / "subvolumes.csv").write_text("\n".join(subs) + "\n")
    return len(subs) - 1, len(boxes) - 1
