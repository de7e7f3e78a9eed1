"""Atomic artifact writing: a step that fails leaves no partial file behind, and a step's several outputs
are published together (temporary names unique to the run, then renames); and reading a table with its
checks, every failure an InputError naming the file and row."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def _make_parents(folder: Path, made: list[Path]) -> None:
    """mkdir -p that notes the folders it created (``made``), so that a failed step can remove them."""
    new = [d for d in (folder, *folder.parents) if not d.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    made.extend(reversed(new))


def _remove_made(made: list[Path]) -> None:
    for d in reversed(made):  # deepest first; a folder that something else now uses stays
        try:
            d.rmdir()
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _temp_folder(parent: Path, name: str, kind: str = "") -> Path:
    """A fresh hidden folder in ``parent`` for the output ``name``, named after this host and process. The
    temporaries a killed run of this host left for the same output (its process gone) are removed first: a
    killed standalone step left them for good (a 10.8 MB `.volumes.h5.*.tmp`). Another host's are left
    alone: on a shared file system their process may still run."""
    host = socket.gethostname()
    stale = re.compile(rf"\.{re.escape(name)}\.(?:old\.)?{re.escape(host)}-(\d+)\..+\.tmp")
    if parent.is_dir():
        for p in parent.iterdir():
            m = stale.fullmatch(p.name)
            if m and not _alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.{kind}{host}-{os.getpid()}.", suffix=".tmp", dir=parent))


def _publishable(path: Path) -> None:
    """mkdtemp makes 0700, mkstemp 0600: an artifact gets the usual permissions instead."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextmanager
def atomic_paths(*paths):
    """Yield temporary paths for files that a step publishes together; all of them replace their targets
    (in the given order: put the file readers look for first last) only if the block succeeds.

    Each temporary path keeps its target's name, inside a fresh hidden folder beside the target, so
    writers that go by the name (matplotlib, SimpleITK's .nii.gz / .mhd + .raw) work, and two runs
    never share a temporary name. On failure nothing is published and the temporary folders go.
    """
    targets = [Path(p) for p in paths]
    if len({t.resolve() for t in targets}) != len(targets):
        raise ValueError(f"the same output named twice: {[str(t) for t in targets]}")
    folders: dict[Path, Path] = {}
    made: list[Path] = []
    published = False
    try:
        for t in targets:
            if t.parent not in folders:
                _make_parents(t.parent, made)
                folders[t.parent] = _temp_folder(t.parent, t.name)
        temps = [folders[t.parent] / t.name for t in targets]
        yield temps
        for tmp, t in zip(temps, targets):
            if not tmp.is_file():
                raise FileNotFoundError(f"{t}: the step wrote no such output")
        for tmp, t in zip(temps, targets):
            _publishable(tmp)
            os.replace(tmp, t)
        published = True
    finally:
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        if not published:  # a failed step leaves no empty output folder either
            _remove_made(made)


@contextmanager
def atomic_path(path):
    """Yield a temporary path for ``path``; it replaces ``path`` only if the block succeeds."""
    with atomic_paths(path) as (tmp,):
        yield tmp


# Every folder atomic_folder publishes holds this file: a non-empty folder without it is not the project's,
# and no command may replace (delete) it.
MARKER = ".lens-output"


@contextmanager
def atomic_folder(path, own: Iterable[str] | Callable[[str], object] | None = None, marker: bool = True):
    """Yield a fresh temporary folder that replaces the folder ``path`` as a whole if the block succeeds:
    a step whose outputs are one folder (tables + volumes.h5, overlay PNGs) is published as one unit, so
    a reader sees the old set, then no folder for an instant, then the new set; never a mix of two runs.

    Never delete what the project did not write: an existing non-empty ``path`` is replaced only if it
    holds the project's marker file (:data:`MARKER`, written into every folder published here), or, when
    ``own`` is given, only names the step writes (a folder of an earlier version, before the marker).
    ``own``: the names the step writes (or a test of a name). When given, a folder holding anything else
    (besides the marker and temporary files of killed runs) is refused even with the marker: a file a
    user put among the step's outputs must not go. ``marker=False``: a folder nested in another published
    folder (that one carries the marker). The working folder and those above it are never replaced.
    """
    path = Path(os.path.abspath(path))
    if path == Path.cwd() or path in Path.cwd().parents:
        raise ValueError(f"{path}: the working folder or one above it cannot be an output folder")
    mine = own if callable(own) or own is None else set(own).__contains__

    def check() -> None:
        if not path.is_dir():
            if path.exists():
                raise ValueError(f"{path}: exists and is not a folder (the output here is a folder)")
            return
        names = [p.name for p in path.iterdir() if p.name != MARKER and not p.name.endswith(".tmp")]
        marked = (path / MARKER).is_file()
        other = sorted(n for n in names if mine is None or not mine(n))
        if other and (mine is not None or not marked):
            raise ValueError(f"{path}: holds files this project did not write here ({', '.join(other[:5])}"
                             f"{' ...' if len(other) > 5 else ''}); nothing was changed: give the output a "
                             f"folder of its own (an empty one, or one this step wrote)")

    check()
    made: list[Path] = []
    _make_parents(path.parent, made)
    tmp = _temp_folder(path.parent, path.name)
    published = False
    try:
        yield tmp
        if marker:
            (tmp / MARKER).write_text("written by the LENS pipeline (lens_core); replaced as a whole when its "
                                      "step runs again\n")
        check()  # again: something may have appeared while the step ran
        _publishable(tmp)
        while True:
            try:
                os.replace(tmp, path)  # an empty or missing target folder is replaced at once
                break
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # a full folder cannot be renamed over: move it aside first (another run may do the same
                # meanwhile, hence the loop); it is deleted below
                old = _temp_folder(path.parent, path.name, "old.")
                try:
                    os.replace(path, old / path.name)
                except FileNotFoundError:
                    pass
                shutil.rmtree(old, ignore_errors=True)
        published = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not published:
            _remove_made(made)


def require_free_space(folder, nbytes: int, what: str, name=None) -> None:
    """Refuse, as an OSError (ENOSPC) naming ``name`` (the output a temporary ``folder`` becomes; default
    ``folder``), to write ``nbytes`` where the disk has less free. HDF5
    told of a full disk only while closing, in a page of tracebacks, and then crashed (exit 139); asked before
    each volume is written, a full disk is one line and the temporary folder is removed."""
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        raise OSError(errno.ENOSPC, f"No space left on device ({what} needs up to {nbytes / 1e6:.1f} MB, "
                                    f"{free / 1e6:.1f} MB free)", str(name or folder))


def write_parquet(df: pd.DataFrame, path, meta: dict | None = None, schema=None) -> None:
    """Write ``df`` atomically; ``meta`` (the config keys the artifact depends on) goes into the file's
    ``lens`` metadata key, ``schema`` (pyarrow) fixes column order and types when given."""
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


def save_figure(fig, path: str | Path, **savefig_kwargs) -> None:
    """Write a matplotlib figure as PNG atomically (under the same unique-temp-name rule as every artifact)
    and close it, so long plotting loops do not keep figures alive."""
    import matplotlib.pyplot as plt  # lazy: only plotting steps import matplotlib (every step imports io)

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **savefig_kwargs)
    plt.close(fig)
