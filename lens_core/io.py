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


def read_table(path, columns: list[str], what: str = "table") -> pd.DataFrame:
    """A Parquet table that must hold ``columns``; a missing file, an unreadable one or a missing column is
    an error naming the file (``what``: the table's role, for the message)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read {what}: {e}") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: {what} lacks columns {missing}")
    return df
