"""Schemas of the preprocessed tables (volumes.parquet, lesions.parquet, truth.parquet, test3d.parquet).

Kept apart from `lens_core.preprocess.volumes` (which needs SimpleITK) so that the steps that only read these tables
-- mining, FPR, evaluation -- import no image I/O library. `docs/artifacts.md` describes the columns.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import pyarrow as pa

BOX = ["x1", "y1", "z1", "x2", "y2", "z2"]

VOLUME_SCHEMA = pa.schema([
    ("volume_id", pa.string()), ("dataset", pa.string()), ("patient_id", pa.string()),
    ("study_id", pa.int64()), ("series_id", pa.int64()), ("split", pa.string()),
    ("n_slices", pa.int64()), ("height", pa.int64()), ("width", pa.int64()),
    ("spacing_z", pa.float64()), ("spacing_y", pa.float64()), ("spacing_x", pa.float64()),
    ("source", pa.string()),
])
LESION_SCHEMA = pa.schema([
    ("volume_id", pa.string()), ("patient_id", pa.string()), ("study_id", pa.int64()),
    ("series_id", pa.int64()), ("dataset", pa.string()), ("lesion_id", pa.string()),
    ("z", pa.int64()), ("x1", pa.float64()), ("y1", pa.float64()), ("x2", pa.float64()), ("y2", pa.float64()),
    ("z1", pa.float64()), ("z2", pa.float64()),
    ("kind", pa.string()), ("lesion_type", pa.string()), ("label_kind", pa.string()),
])
TRUTH_EXTRA = [("instance_id", pa.string()), ("scan_key", pa.string()), ("size_mm", pa.float64()), ("labeled", pa.bool_()),
               ("split", pa.string())]
TRUTH_SCHEMA = pa.schema([f for f in LESION_SCHEMA if f.name not in ("kind", "label_kind")] + TRUTH_EXTRA)
TEST3D_SCHEMA = pa.schema([("subvolume", pa.string()), ("volume_id", pa.string()), ("split", pa.string())]
                          + [(c, pa.float64()) for c in BOX])


def prep_meta(prep_dir: Path) -> dict:
    """Preprocessing parameters recorded in ``volumes.h5`` (pixel_mm, slice_mm, hu_window, storage): the FPR
    and the training record them in their model files. Files written before ``storage`` was recorded are
    uint8."""
    try:
        with h5py.File(Path(prep_dir) / "volumes.h5", "r") as f:
            raw = f.attrs.get("lens")
    except OSError as e:
        raise ValueError(f"{Path(prep_dir) / 'volumes.h5'}: cannot open: {e}") from e
    meta = json.loads(raw) if raw is not None else {}
    out = {k: meta[k] for k in ("dataset", "pixel_mm", "slice_mm", "hu_window", "storage") if k in meta}
    if "pixel_mm" in out:
        out.setdefault("storage", "uint8")
    return out
