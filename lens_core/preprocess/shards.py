"""Gather preprocessing shards (`lens preprocess --shard i/n`) into one dataset folder.

Volumes are ordered by volume_id whatever the shard count, so the gathered tables are identical for
N = 1 and N = 3 (issue 7).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TABLES = ("volumes.parquet", "lesions.parquet", "truth.parquet", "test3d.parquet")


def gather(shards: list[Path], out: Path) -> None:
    shards = [Path(s) for s in shards]
    for s in shards:
        if not (s / "volumes.h5").exists():
            raise FileNotFoundError(f"{s / 'volumes.h5'}: shard missing (did preprocess --shard finish?)")
    out.mkdir(parents=True, exist_ok=True)
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
        tmp = out / (name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, out / name)
    tmp = out / "volumes.h5.tmp"
    try:
        with h5py.File(tmp, "w") as dst:
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
        os.replace(tmp, out / "volumes.h5")
    finally:
        if tmp.exists():
            tmp.unlink()
