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

from ..io import atomic_folder, atomic_path, require_free_space

TABLES = ("volumes.parquet", "lesions.parquet", "truth.parquet", "test3d.parquet")


def _shard_meta(shard: Path) -> tuple[dict, list[str]]:
    path = shard / "volumes.h5"
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["lens"]), list(f.keys())
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a preprocessing shard ({e})") from None


def check_shards(shards: list[Path]) -> None:
    """The shards must be the n pieces of one preprocessing run: one dataset, format, source folder and
    set of parameters, shard indices 0..n-1 each once, no volume twice. Shards of two datasets (or two
    resamplings) would otherwise merge silently into one table."""
    metas = [(s, *_shard_meta(s)) for s in shards]
    ref_shard, ref, _ = metas[0]
    same = {k: v for k, v in ref.items() if k != "shard"}
    for s, m, _ in metas[1:]:
        for k, v in same.items():
            if m.get(k) != v:
                raise ValueError(f"{s / 'volumes.h5'}: {k} {m.get(k)!r} differs from {ref_shard / 'volumes.h5'}'s "
                                 f"{v!r}; the shards of one gather must come from one preprocessing run")
        if set(m) - {"shard"} != set(same):
            raise ValueError(f"{s / 'volumes.h5'}: other settings than {ref_shard / 'volumes.h5'}")
    counts = {m["shard"][1] for _, m, _ in metas}
    index = sorted(m["shard"][0] for _, m, _ in metas)
    if len(counts) != 1 or index != list(range(next(iter(counts)))):
        got = ", ".join(f"{s}: {m['shard'][0]}/{m['shard'][1]}" for s, m, _ in metas)
        raise ValueError(f"the shards given are not shards 0..n-1 of one run, each once ({got})")
    seen: dict[str, Path] = {}
    for s, _, vids in metas:
        for v in vids:
            if v in seen:
                raise ValueError(f"{s / 'volumes.h5'}: volume {v} also in {seen[v] / 'volumes.h5'}")
            seen[v] = s


def gather(shards: list[Path], out: Path, truth_out: Path | None = None) -> None:
    """The shards into one folder ``out``; with ``truth_out`` the hidden truth (truth.parquet of the built-in
    corpus) goes to that file instead, outside the folder every later step reads (issue 21)."""
    shards = [Path(s) for s in shards]
    for s in shards:
        if not (s / "volumes.h5").exists():
            raise FileNotFoundError(f"{s / 'volumes.h5'}: shard missing (did preprocess --shard finish?)")
    check_shards(shards)
    # the gathered folder is published as one unit, like a preprocessing shard (see preprocess_dataset)
    with atomic_folder(out, own=(*TABLES, "volumes.h5")) as tmp_dir:
        _gather_into(shards, tmp_dir)
        if truth_out is not None:
            publish_truth(tmp_dir / "truth.parquet", Path(truth_out))


def publish_truth(path: Path, truth_out: Path) -> None:
    """Move the truth table ``path`` to ``truth_out`` (atomically; its folder is made)."""
    truth_out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(truth_out) as tmp:
        Path(path).replace(tmp)


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
                require_free_space(out, src[vid]["image"].id.get_storage_size() + (1 << 20), f"volume {vid}")
                src.copy(src[vid], dst, name=vid)
        finally:
            for f in srcs:
                f.close()
