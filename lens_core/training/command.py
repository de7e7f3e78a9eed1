"""`lens train`: train LENS on the preprocessed datasets (paper Sec. IV, VI-B)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lens_core.arguments import add_resume_arg, add_torch_args, positive_int, set_torch_threads
from lens_core.config import parse_overrides
from lens_core.io import write_parquet
from lens_core.training.config import TrainConfig, load_config_file, load_config_json

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the LENS detector (multi-dataset, Sec. IV)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--prep-dir", type=Path, required=True, help="results/prep (one folder per dataset)")
    p.add_argument("--labels", type=Path, default=None,
                   help="round-2 label table; replaces lesions.parquet for the datasets it contains")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="YAML/JSON file with the training config")
    src.add_argument("--config-json", metavar="JSON",
                     help="the training config inline, as a JSON mapping (the workflow passes its `train:` section)")
    p.add_argument("--config-section", default=None, help="top-level key of --config holding the training config")
    p.add_argument("--out", type=Path, required=True, help="output folder (lens.pt, losses.*; checkpoint.pt while training)")
    p.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=YAML",
                   help="override config keys, e.g. --set datasets=[deeplesion] epochs=4 (ablation rows)")
    add_resume_arg(p, "OUT/checkpoint.pt, after every epoch")
    add_torch_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

    d = subparsers.add_parser("bn-drift", help="each dataset's BatchNorm statistics against the running ones",
                              description="How far each dataset's BatchNorm input statistics (over its training "
                                          "crops) sit from the running statistics inference uses, per layer, in "
                                          "running standard deviations (one-dataset batches, Sec. VI-B).")
    d.add_argument("--model", type=Path, required=True, help="lens.pt")
    d.add_argument("--prep-dir", type=Path, required=True, help="results/prep (one folder per dataset)")
    d.add_argument("--batches", type=positive_int, default=8, help="training batches per dataset (default 8)")
    d.add_argument("--out", type=Path, default=None, help="per-layer table (Parquet)")
    add_torch_args(d)
    d.set_defaults(func=run_bn_drift)


def run(args: argparse.Namespace) -> int:
    from lens_core.training.loop import train  # lazy: torch, not for lens --help

    overrides = parse_overrides(args.set)
    if args.config_json is not None:
        cfg = load_config_json(args.config_json, overrides=overrides)
    else:
        cfg = load_config_file(args.config, args.config_section, overrides=overrides)
    if args.seed is not None:
        cfg.seed = args.seed
    set_torch_threads(args)
    path = train(cfg, args.prep_dir, args.out, labels=args.labels, device=args.device,
                 resume=args.resume, progress=not args.no_progress)
    log.info("wrote %s", path)
    return 0


def run_bn_drift(args: argparse.Namespace) -> int:
    # lazy: torch, not for lens --help
    from lens_core.model.lens import load_lens
    from lens_core.training.bn_drift import bn_drift, summary

    set_torch_threads(args)
    model, meta = load_lens(args.model)
    cfg = TrainConfig.from_config({**meta["config"], "init_from": None})
    table = bn_drift(model, cfg, args.prep_dir, args.batches)
    if table.empty:
        print(f"{args.model}: no BatchNorm layers (norm: {meta.get('norm', 'batch')}): no running statistics to drift")
    else:
        print(summary(table).to_markdown(index=False, floatfmt=".2f"))
    if args.out:
        write_parquet(table, args.out)
    return 0
