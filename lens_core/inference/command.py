"""`lens propose`: 2D proposals of every slice (one score column per dataset expert) and 3D boxes."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lens_core.cli import add_torch_args, positive_shard, set_torch_threads
from lens_core.io import atomic_path

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("propose", help="LENS proposals of a dataset split (Sec. IV-C)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, nargs="+", action="extend", required=True,
                   help="lens.pt from `lens train`; several (with distinct datasets): separately trained "
                        "models, each run on every slice and their proposals fused (Table V)")
    p.add_argument("--prep-dir", type=Path, required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test")
    p.add_argument("--shard", type=positive_shard, default=(0, 1), help="i/n: every n-th volume from i (0-based)")
    p.add_argument("--out", type=Path, required=True, help="2D proposals (Parquet)")
    p.add_argument("--out3d", type=Path, default=None, help="3D boxes stacked from the fused 2D proposals")
    p.add_argument("--experts", default=None,
                   help="comma-separated experts to fuse (default: each model's fuse_experts, i.e. all)")
    p.add_argument("--min-score", type=float, default=0.01, help="drop proposals below this fused score")
    p.add_argument("--max-per-slice", type=int, default=20, help="fused proposals kept per slice")
    p.add_argument("--stack-iou", type=float, default=0.5, help="theta of the 2D->3D stacking")
    p.add_argument("--batch-slices", type=int, default=None, help="slices per forward pass (16 CPU, 64 CUDA)")
    add_torch_args(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _write(df, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def run(args: argparse.Namespace) -> int:
    from lens_core.inference.proposals import expert_names, propose, stack_proposals_3d
    from lens_core.model.lens import load_lens
    from lens_core.training.loop import resolve_device

    set_torch_threads(args)
    dev = resolve_device(args.device)
    loaded = [load_lens(path, dev) for path in args.model]
    models = [m for m, _ in loaded]
    try:
        names = expert_names(models)
    except ValueError as e:
        raise ValueError(f"--model {' '.join(map(str, args.model))}: {e}") from None
    if args.experts:
        fuse = args.experts.split(",")
    else:
        fuse = [d for m, meta in loaded for d in (meta.get("fuse_experts") or m.datasets)]
    unknown = [d for d in fuse if d not in names]
    if unknown:
        raise ValueError(f"--experts {unknown} not among the models' datasets {names}")
    batch = args.batch_slices or (64 if dev.type == "cuda" else 16)
    df = propose(models[0] if len(models) == 1 else models, args.prep_dir, args.dataset,
                 None if args.split == "all" else args.split, args.shard, fuse, dev, batch, args.min_score,
                 args.max_per_slice, progress=not args.no_progress)
    df3 = stack_proposals_3d(df, args.stack_iou) if args.out3d else None
    _write(df, args.out)
    if df3 is not None:
        _write(df3, args.out3d)
    log.info("wrote %d 2D proposals%s", len(df), f" and {len(df3)} 3D boxes" if df3 is not None else "")
    return 0
