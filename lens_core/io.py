"""Atomic artifact writing (a step that fails leaves no partial file behind: temp file, then rename) and
reading a table that must hold given columns."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an artifact gets the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_parquet(df: pd.DataFrame, path, meta: dict | None = None, schema=None) -> None:
    """Write ``df`` atomically; ``meta`` (the config keys the artifact depends on) goes into the file's
    ``lens`` metadata key, ``schema`` (pyarrow) fixes column order and types when given."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if schema is not None:
        table = pa.Table.from_pandas(df[[f.name for f in schema]], schema=schema, preserve_index=False)
    else:
        table = pa.Table.from_pandas(df, preserve_index=False)
    if meta:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               b"lens": json.dumps(meta, default=str).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_meta(path) -> dict:
    """The ``lens`` metadata of a Parquet artifact ({} when absent)."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(b"lens")
    return json.loads(raw) if raw else {}


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ---- reading tables: one reader, one set of checks, one error type -------------------------------------

from lens_core.errors import InputError  # noqa: E402  (re-exported: the error every check below raises)

# Column kinds of a ``read_table`` spec: "text" (not numeric, no missing value), "number" (finite),
# "integer" (finite and whole: a slice index, an id), "number?" (numeric, NaN allowed), "any" (present).
KINDS = ("text", "number", "integer", "number?", "any")


def _where(path, what: str) -> str:
    return f"{path} ({what})" if path else what


def read_table(path, columns=(), what: str = "table", *, boxes=None, empty_boxes: bool = False) -> pd.DataFrame:
    """The Parquet table at ``path`` (CSV when it ends in ``.csv``), checked.

    ``columns``: names that must be present, or a ``{name: kind}`` mapping (``KINDS``) whose values are
    checked too. ``boxes``: box columns ``(x1, y1[, z1], x2, y2[, z2])`` whose upper bounds must exceed the
    lower ones (``empty_boxes=True``: may equal them; a detector's box clipped at the image border can be
    empty, never inverted). Every failure is an :class:`InputError` that names the file, ``what`` the
    table was expected to be and, for a bad value, the first bad row (0-based, in file order).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected {what} (a Parquet file)")
    if not path.exists():
        raise InputError(f"{path}: no such file; expected {what}")
    try:
        df = pd.read_csv(path) if path.suffix == ".csv" else pq.read_table(path).to_pandas()
    except Exception as exc:  # noqa: BLE001 - pyarrow and pandas errors do not name the file
        kind = "CSV" if path.suffix == ".csv" else "Parquet"
        detail = " ".join(str(exc).split())[:200]
        raise InputError(f"{path}: not a readable {kind} table; expected {what} ({type(exc).__name__}: {detail})") \
            from exc
    # the path is not kept in df.attrs: pyarrow would write it into every table derived from this one
    check_table(df, columns, what, boxes=boxes, empty_boxes=empty_boxes, source=path)
    return df


def require_columns(df: pd.DataFrame, columns, what: str = "table", source=None) -> None:
    """Raise :class:`InputError` if ``columns`` are missing, naming ``source`` (default
    ``df.attrs["source"]``, where the evaluator keeps it) when known."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{_where(source or df.attrs.get('source'), what)}: missing column(s) {missing}; "
                         f"has {list(df.columns)}")


def check_table(df: pd.DataFrame, columns=(), what: str = "table", *, boxes=None, empty_boxes: bool = False,
                source=None) -> None:
    """The checks of :func:`read_table` on a table already in memory (``source``: its file, for messages)."""
    import numpy as np

    spec = dict(columns) if isinstance(columns, dict) else dict.fromkeys(columns, "any")
    require_columns(df, list(spec) + [c for c in (boxes or ()) if c not in spec], what, source)
    src = _where(source or df.attrs.get("source"), what)

    def fail(mask, col, expected):
        row = int(np.flatnonzero(mask)[0])
        value = df[col].iloc[row]
        value = value.item() if isinstance(value, np.generic) else value
        n = int(np.count_nonzero(mask))
        raise InputError(f"{src}: row {row}: {col} = {value!r}, expected {expected}"
                         + (f" ({n} bad rows)" if n > 1 else ""))

    for col, kind in spec.items():
        if kind not in KINDS:
            raise ValueError(f"unknown column kind {kind!r} (one of {KINDS})")
        s = df[col]
        if kind == "any":
            continue
        if kind == "text":
            if pd.api.types.is_numeric_dtype(s.dtype) and len(s):
                fail(np.ones(len(s), bool), col, "text")
            if s.isna().any():
                fail(s.isna().to_numpy(), col, "a value (it is missing)")
            continue
        if not (pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)):
            bad = pd.to_numeric(s, errors="coerce").isna().to_numpy() & s.notna().to_numpy()
            fail(bad if bad.any() else np.ones(len(s), bool), col, "a number")
        if kind == "number?":
            continue
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(v).all():
            fail(~np.isfinite(v), col, "a finite number")
        if kind == "integer" and (v != np.round(v)).any():
            fail(v != np.round(v), col, "a whole number")
    if boxes:
        d = len(boxes) // 2
        b = df[list(boxes)].to_numpy(dtype=np.float64, na_value=np.nan)
        lo, hi = b[:, :d], b[:, d:]
        bad = (hi < lo) if empty_boxes else ~(hi > lo)
        bad = bad.any(axis=1) & np.isfinite(b).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            order = "upper >= lower" if empty_boxes else "upper > lower"
            n = int(bad.sum())
            raise InputError(f"{src}: row {row}: {'inverted' if empty_boxes else 'inverted or empty'} box "
                             f"{dict(zip(boxes, b[row].tolist()))}, "
                             f"expected {order} bounds" + (f" ({n} bad rows)" if n > 1 else ""))


def check_output(path, flag: str = "--out") -> None:
    """Refuse an output path that cannot be written as a file (an existing folder, or a file on its way),
    before any work is done."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: {flag} is a folder; expected the path of a file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{path}: {flag} lies under {parent}, which is a file, not a folder")
            break
