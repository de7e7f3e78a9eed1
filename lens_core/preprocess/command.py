"""`lens preprocess` (one dataset, or one shard of it) and `lens gather-prep` (its shards into one folder)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..arguments import non_negative_float, positive_float, positive_shard
from .shards import gather
from .volumes import PrepParams, preprocess_dataset
from .window import STORAGES

log = logging.getLogger("lens")


def add_parser(sub) -> None:
    p = sub.add_parser("preprocess", help="orientation, HU window, resampling, border clipping -> HDF5 + Parquet",
                       description="Preprocess one dataset (paper Sec. VI-A) into volumes.h5, volumes.parquet and "
                                   "lesions.parquet (plus test3d.parquet / truth.parquet when present).")
    p.add_argument("--format", required=True, choices=["deeplesion", "luna", "lits", "nihln"])
    p.add_argument("--root", required=True, type=Path, help="the dataset's folder, as released")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--dataset", help="dataset name in the tables (default: the format)")
    p.add_argument("--pixel-mm", type=positive_float, default=2.0, help="in-plane pixel size after resampling (paper 0.8)")
    p.add_argument("--slice-mm", type=positive_float, default=4.0, help="slice interval after resampling (paper 2)")
    p.add_argument("--storage", choices=STORAGES, default="uint8",
                   help="how volumes.h5 holds the window's 0..255: uint8 (16 HU levels), float16, float32 (the paper)")
    p.add_argument("--truth", type=Path, help="hidden_truth.parquet of the built-in corpus (audits only)")
    p.add_argument("--truth-out", type=Path, default=None,
                   help="write the preprocessed truth to this file instead of into --out (kept apart)")
    p.add_argument("--shard", type=positive_shard, default=(0, 1), metavar="I/N", help="process volumes I::N")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 80/20 split of single-type sets")
    p.add_argument("--ln-diameter-mm", type=positive_float, default=10.0,
                   help="NIH-LN node box size when no sizes file is present")
    p.add_argument("--dl-box-pad-px", type=non_negative_float, default=5.0,
                   help="DeepLesion box margin around the RECIST extent, original pixels (5 = Bounding_boxes)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_preprocess)

    p = sub.add_parser("gather-prep", help="merge preprocessing shards into one folder")
    p.add_argument("shards", nargs="+", type=Path, help="shard folders (written by preprocess --shard)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--truth-out", type=Path, default=None,
                   help="write the hidden truth (built-in corpus) to this file instead of into --out")
    p.set_defaults(func=_gather)


def _preprocess(args) -> int:
    t = time.perf_counter()
    reader_opts = {"split_seed": args.split_seed}
    if args.format == "nihln":
        reader_opts["default_ln_diameter_mm"] = args.ln_diameter_mm
    if args.format == "deeplesion":
        reader_opts["dl_box_pad_px"] = args.dl_box_pad_px
    res = preprocess_dataset(args.format, args.root, args.out, PrepParams(args.pixel_mm, args.slice_mm, args.storage),
                             dataset=args.dataset, shard=args.shard, truth=args.truth, reader_opts=reader_opts,
                             progress=not args.no_progress, truth_out=args.truth_out)
    log.info("preprocessed %s in %.1f s: %s", args.root, time.perf_counter() - t, json.dumps(res))
    return 0


def _gather(args) -> int:
    gather(args.shards, args.out, args.truth_out)
    return 0
