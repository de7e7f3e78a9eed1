"""Atomic artifact writing: a step that fails leaves no partial file behind, and a step's several outputs
are published together (temporary names unique to the run, then renames)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


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
                folders[t.parent] = Path(tempfile.mkdtemp(prefix=f".{t.name}.", suffix=".tmp", dir=t.parent))
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


@contextmanager
def atomic_folder(path, own: Iterable[str] | Callable[[str], object] | None = None):
    """Yield a fresh temporary folder that replaces the folder ``path`` as a whole if the block succeeds:
    a step whose outputs are one folder (tables + volumes.h5, overlay PNGs) is published as one unit, so
    a reader sees the old set, then no folder for an instant, then the new set; never a mix of two runs.

    ``own``: the names the step writes (or a test of a name). When given, an existing ``path`` holding
    anything else (besides temporary files of killed runs) is refused instead of being replaced: --out
    pointed at a folder of other files must not delete them. Without ``own`` the whole folder is the
    artifact. The working folder and those above it are never replaced.
    """
    path = Path(os.path.abspath(path))
    if path == Path.cwd() or path in Path.cwd().parents:
        raise ValueError(f"{path}: the working folder or one above it cannot be an output folder")
    mine = own if callable(own) or own is None else set(own).__contains__

    def check() -> None:
        if mine is None or not path.is_dir():
            if path.exists() and not path.is_dir():
                raise ValueError(f"{path}: exists and is not a folder (the output here is a folder)")
            return
        other = sorted(p.name for p in path.iterdir()
                       if not mine(p.name) and not p.name.endswith(".tmp"))
        if other:
            raise ValueError(f"{path}: holds files this step does not write ({', '.join(other[:5])}"
                             f"{' ...' if len(other) > 5 else ''}); give it a folder of its own")

    check()
    made: list[Path] = []
    _make_parents(path.parent, made)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    published = False
    try:
        yield tmp
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
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", suffix=".tmp", dir=path.parent))
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
