"""Reading and checking the evaluator's tables; atomic writing of its outputs.

Bad input raises :class:`lens_core.io.InputError` (a ``ValueError``) naming the file (when known) and the
first offending row, before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from lens_core import io

BOX2D = ["x1", "y1", "x2", "y2"]
BOX3D = ["x1", "y1", "z1", "x2", "y2", "z2"]


def read_table(path, what: str = "table") -> pd.DataFrame:
    """A Parquet or CSV table (by extension, :func:`lens_core.io.read_table`); a ``subvolumes`` list in its
    metadata -> ``attrs["units"]``."""
    df = io.read_table(path, (), what)
    path = Path(path)
    if path.suffix != ".csv":
        _units_from_metadata(df, path)
    df.attrs["source"] = str(path)  # messages about its rows name the file
    return df


def _units_from_metadata(df: pd.DataFrame, path: Path) -> None:
    meta = pq.read_schema(path).metadata or {}
    # the list of evaluated sub-volumes (those without lesions included) travels in the metadata,
    # either top-level or inside the pipeline's JSON "lens" entry (preprocess.py)
    entries = {k.decode(errors="replace"): v for k, v in meta.items()}
    if "lens" in entries:
        try:
            entries.update(json.loads(entries["lens"]))
        except (ValueError, TypeError):
            pass
    for key in ("subvolumes", "units"):
        if key in entries:
            value = entries[key]
            value = json.loads(value) if isinstance(value, bytes) else value
            if isinstance(value, dict):  # preprocess.py lists the sub-volumes per split
                df.attrs["units_by_split"] = {k: list(v) for k, v in value.items()}
                value = sorted({u for v in value.values() for u in v})
            df.attrs["units"] = list(value)


def where(df: pd.DataFrame, what: str) -> str:
    src = df.attrs.get("source")
    return f"{src} ({what})" if src else what


require_columns = io.require_columns


def numeric(df: pd.DataFrame, columns, what: str) -> np.ndarray:
    """``df[columns]`` as a finite float64 array; names the first bad row otherwise."""
    require_columns(df, columns, what)
    try:
        arr = df[list(columns)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise io.InputError(f"{where(df, what)}: non-numeric value in {list(columns)}: {exc}") from exc
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise io.InputError(f"{where(df, what)}: row {row}: non-finite value in {list(columns)}")
    return arr


def boxes(df: pd.DataFrame, columns, what: str) -> np.ndarray:
    """Box columns as ``[N, 2D]`` floats; every extent must be positive (exclusive upper bounds)."""
    arr = numeric(df, columns, what)
    d = len(columns) // 2
    bad = (arr[:, d:] <= arr[:, :d]).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise io.InputError(
            f"{where(df, what)}: row {row}: empty or inverted box {dict(zip(columns, arr[row]))} "
            "(upper bounds are exclusive and must exceed lower bounds)"
        )
    return arr


def write_parquet(df: pd.DataFrame, path, metadata: dict | None = None) -> None:
    io.write_parquet(df, path, metadata)


def write_text(text: str, path) -> None:
    io.write_text(path, text)
