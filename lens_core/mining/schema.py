"""Columns of the mining tables: cross_slice, intra_patient, uncertain and labels_round2 .parquet.

Every mining table is a lesions table (``LESION_SCHEMA``, docs/artifacts.md), one row per 2D box, plus
where the box came from, so that the round-2 merge is a concatenation and an audit can trace each box:

- ``source_rule``: ``annotation``, ``cross_slice``, ``intra_patient`` or ``cross_dataset_<expert>``;
- ``tracklet_id``: the tracklet the box belongs to (-1 for annotations);
- ``score``: the detector score of the mined/uncertain box (NaN for annotations);
- ``key_iou``: cross-slice evidence, IoU of the tracklet with the annotation on its key slice;
- ``embedding_distance``: intra-patient evidence, L2 distance to the matched annotation (Sec. V-B).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from lens_core.io import InputError, write_parquet
from lens_core.preprocess.schema import LESION_SCHEMA

MINING_EXTRA = [("source_rule", pa.string()), ("tracklet_id", pa.int64()), ("score", pa.float64()),
                ("key_iou", pa.float64()), ("embedding_distance", pa.float64())]
MINING_SCHEMA = pa.schema(list(LESION_SCHEMA) + MINING_EXTRA)


_DEFAULTS = {"source_rule": "annotation", "tracklet_id": -1, "score": np.nan, "key_iou": np.nan,
             "embedding_distance": np.nan, "lesion_type": "unknown", "lesion_id": "", "dataset": "",
             "patient_id": "", "study_id": -1, "series_id": -1, "kind": "2d"}


# What the mining steps read (lens_core.io.read_table specs): the columns they use and what each must hold.
BOX = ["x1", "y1", "x2", "y2"]
_BOX_KINDS = dict.fromkeys(BOX, "number")
PROPOSALS_2D = {"volume_id": "text", "z": "integer", **_BOX_KINDS, "score": "number"}
TRACKLETS = {**PROPOSALS_2D, "tracklet_id": "integer"}
TRACKLETS_WITH_PATIENT = {**TRACKLETS, "patient_id": "text"}
LESIONS = {"volume_id": "text", "z": "integer", **_BOX_KINDS, "label_kind": "text"}
ANNOTATIONS = {**LESIONS, "patient_id": "text", "lesion_id": "any"}
MINED = LESIONS  # a mining table as the merge, the audit and cross-dataset mining read it
VOLUMES = {"volume_id": "text", "split": "text"}
TRUTH = {"volume_id": "text", "z": "integer", **_BOX_KINDS, "z1": "number", "z2": "number", "instance_id": "text"}


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with exactly the MINING_SCHEMA columns, in order, with their dtypes (missing -> defaults).

    2D boxes without z1/z2 get the one-slice span ``[z, z + 1)``.
    """
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    src = df.reset_index(drop=True)
    for field in MINING_SCHEMA:
        name = field.name
        if name in src.columns:
            out[name] = src[name].to_numpy()
        elif name == "z1":
            out[name] = src["z"].to_numpy(dtype=np.float64)
        elif name == "z2":
            out[name] = src["z"].to_numpy(dtype=np.float64) + 1.0
        elif name in _DEFAULTS:
            out[name] = _DEFAULTS[name]
        else:
            where = f"{df.attrs['source']}: " if df.attrs.get("source") else ""
            raise InputError(f"{where}mining table lacks required column {name!r}")
    types = {f.name: ("int64" if pa.types.is_integer(f.type) else "float64" if pa.types.is_floating(f.type)
                      else str) for f in MINING_SCHEMA}
    return out.astype(types)


def write_mining_table(df: pd.DataFrame, path: str | Path, meta: dict | None = None) -> None:
    """Write a mining table atomically (lens_core.io.atomic_path): no partial artifact on failure."""
    write_parquet(conform(df), path, meta, MINING_SCHEMA)
