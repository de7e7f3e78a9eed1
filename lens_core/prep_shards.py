"""Gather preprocessing shards (`lens preprocess --shard i/n`) into one dataset folder.

Volumes are ordered by volume_id whatever the shard count, so the gathered tables are identical for
N = 1 and N = 3 (issue 7).
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .io import atomic_folder

TABLES = ("volumes.parquet", "lesions.parquet", "truth.parquet", "test3d.parquet")


def gather(shards: list[Path], out: Path) -> None:
    shards = [Path(s) for s in shards]
    for s in shards:
        if not (s / "volumes.h5").exists():
            raise FileNotFoundError(f"{s / 'volumes.h5'}: shard missing (did preprocess --shard finish?)")
    # the gathered folder is published as one unit, like a preprocessing shard (see preprocess_dataset)
    with atomic_folder(out, own=(*TABLES, "volumes.h5")) as tmp_dir:
        _gather_into(shards, tmp_dir)


def _gather_into(shards: list[Path], out: Path) -> None:
    for name in TABLES:
        parts = [pq.read_table(s / name) for s in shards if (s / name).exists()]
        if not parts:
            continue
        if len(parts) != len(shards):
            raise FileNotFoundError(f"{name}: present in some shards only")
        table = pa.concat_tables(parts)
        meta = json.loads(parts[0].schema.metadata[b"lens"])
        meta.pop("shard", None)
        if name == "test3d.parquet":
            meta["subvolumes"] = sorted({v for p in parts for v in json.loads(p.schema.metadata[b"lens"])["subvolumes"]})
        # a stable sort by volume keeps each volume's rows in their shard order
        table = table.take(pc.sort_indices(table, sort_keys=[("volume_id", "ascending")]))
        table = table.replace_schema_metadata({b"lens": json.dumps(meta).encode()})
        pq.write_table(table, out / name)
    with h5py.File(out / "volumes.h5", "w") as dst:
        srcs = [h5py.File(s / "volumes.h5", "r") for s in shards]
        try:
            meta = json.loads(srcs[0].attrs["lens"])
            meta.pop("shard", None)
            dst.attrs["lens"] = json.dumps(meta)
            for vid in sorted(k for f in srcs for k in f.keys()):
                src = next(f for f in srcs if vid in f)
                src.copy(src[vid], dst, name=vid)
        finally:
            for f in srcs:
                f.close()
