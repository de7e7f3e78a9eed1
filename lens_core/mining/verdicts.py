"""The contract between the review (:mod:`lens_core.review`, above mining) and ``merge_labels``: every
mined box's stable id, and ``review.parquet``, the validated table of a reviewer's verdicts.

A box id is a short hash of the box's strategy (``source_rule``), volume, slice and coordinates, so the
same mined box keeps its id when mining reruns unchanged, and a verdict made on another mining output
names a box that no longer exists (an error, not a silent mismatch).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

DECISIONS = ("accept", "reject", "fix")
REVIEW_SCHEMA = pa.schema([
    ("box_id", pa.string()), ("strategy", pa.string()), ("volume_id", pa.string()), ("z", pa.int64()),
    ("decision", pa.string()),
    # the corrected box of a fix (NaN otherwise)
    ("x1", pa.float64()), ("y1", pa.float64()), ("x2", pa.float64()), ("y2", pa.float64()),
    ("reviewer", pa.string()), ("time", pa.string()),
])


def mined_box_ids(df: pd.DataFrame) -> np.ndarray:
    """The id of each row of a mining table (``source_rule, volume_id, z, x1..y2``): 12 hex digits of a
    BLAKE2b hash of those values (coordinates to 1/1000 px). Two identical rows get ``-2``, ``-3`` ...
    suffixes in table order, so every id is unique within the table."""
    if not len(df):
        return np.zeros(0, dtype=object)
    keys = [f"{r}|{v}|{int(z)}|{x1:.3f}|{y1:.3f}|{x2:.3f}|{y2:.3f}"
            for r, v, z, x1, y1, x2, y2 in zip(df["source_rule"].astype(str), df["volume_id"].astype(str),
                                               df["z"], df["x1"].astype(float), df["y1"].astype(float),
                                               df["x2"].astype(float), df["y2"].astype(float))]
    ids = np.array([hashlib.blake2b(k.encode(), digest_size=6).hexdigest() for k in keys], dtype=object)
    seen: dict[str, int] = {}
    for i, b in enumerate(ids):
        n = seen.get(b, 0) + 1
        seen[b] = n
        if n > 1:
            ids[i] = f"{b}-{n}"
    return ids


def conform_review(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with exactly the REVIEW_SCHEMA columns and dtypes."""
    types = {f.name: ("int64" if pa.types.is_integer(f.type) else "float64" if pa.types.is_floating(f.type)
                      else object) for f in REVIEW_SCHEMA}
    return df[[f.name for f in REVIEW_SCHEMA]].astype(types).reset_index(drop=True)


def read_review(path: str | Path) -> pd.DataFrame:
    """A review.parquet, checked: the REVIEW_SCHEMA columns, known decisions, a finite box on every fix,
    one row per box id. Errors name the file and row."""
    path = Path(path)
    try:
        df = pd.read_parquet(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise ValueError(f"{path}: not a Parquet table ({e})") from None
    missing = [f.name for f in REVIEW_SCHEMA if f.name not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a review table, columns {missing} are missing")
    bad = ~df["decision"].isin(DECISIONS)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: row {i}: decision {df['decision'].iloc[i]!r} is not one of {list(DECISIONS)}")
    fix = df["decision"].eq("fix").to_numpy()
    b = df[["x1", "y1", "x2", "y2"]].to_numpy(float)
    bad = fix & ~(np.isfinite(b).all(axis=1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
    if bad.any():
        raise ValueError(f"{path}: row {int(np.flatnonzero(bad)[0])}: a fix without a valid box")
    dup = df["box_id"].duplicated()
    if dup.any():
        raise ValueError(f"{path}: row {int(np.flatnonzero(dup)[0])}: box id {df['box_id'][dup].iloc[0]} given twice")
    return conform_review(df)
