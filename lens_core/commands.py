"""Foundation steps: `lens synthesize`, `lens preprocess`, `lens gather-prep`."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .cli import positive_shard

log = logging.getLogger("lens")


def add_parser(sub) -> None:
    p = sub.add_parser("synthesize", help="write the built-in synthetic CT corpus in the four released formats",
                       description="Write the built-in multi-dataset CT corpus (DeepLesion-, LUNA16-, LiTS- and "
                                   "NIH-LN-like, each in its released format) and its hidden full ground truth.")
    p.add_argument("--out", required=True, type=Path, help="corpus folder (replaced atomically)")
    p.add_argument("--config", type=Path, help="config.yaml whose `corpus:` section overrides the defaults")
    p.add_argument("--seed", type=int, help="override corpus.seed")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=YAML",
                   help="override corpus keys, e.g. --set deeplesion.patients=0 luna.cases=24 (a held-out "
                        "single-type cohort, as `snakemake fig7` writes)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_synthesize)

    p = sub.add_parser("preprocess", help="orientation, HU window, resampling, border clipping -> HDF5 + Parquet",
                       description="Preprocess one dataset (paper Sec. VI-A) into volumes.h5, volumes.parquet and "
                                   "lesions.parquet (plus test3d.parquet / truth.parquet when present).")
    p.add_argument("--format", required=True, choices=["deeplesion", "luna", "lits", "nihln"])
    p.add_argument("--root", required=True, type=Path, help="the dataset's folder, as released")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--dataset", help="dataset name in the tables (default: the format)")
    p.add_argument("--pixel-mm", type=float, default=2.0, help="in-plane pixel size after resampling (paper 0.8)")
    p.add_argument("--slice-mm", type=float, default=4.0, help="slice interval after resampling (paper 2)")
    p.add_argument("--truth", type=Path, help="hidden_truth.parquet of the built-in corpus (audits only)")
    p.add_argument("--shard", type=positive_shard, default=(0, 1), metavar="I/N", help="process volumes I::N")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 80/20 split of single-type sets")
    p.add_argument("--ln-diameter-mm", type=float, default=10.0,
                   help="NIH-LN node box size when no sizes file is present")
    p.add_argument("--dl-box-pad-px", type=float, default=5.0,
                   help="DeepLesion box margin around the RECIST extent, original pixels (5 = Bounding_boxes)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_preprocess)

    p = sub.add_parser("gather-prep", help="merge preprocessing shards into one folder")
    p.add_argument("shards", nargs="+", type=Path, help="shard folders (written by preprocess --shard)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_gather)

    p = sub.add_parser("report", help="one self-contained HTML page of a run: plots, tables, per-rule times")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--section", nargs="+", action="append", metavar=("TITLE", "FILE"), required=True,
                   help="a section: its title then its files (PNG plots, Markdown tables); repeatable")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_report)

    p = sub.add_parser("concat", help="concatenate Parquet tables (e.g. the shards of `lens propose`)")
    p.add_argument("tables", nargs="+", type=Path)
    p.add_argument("--sort", help="stable sort by this column (shards of volumes i::n back in volume order)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_concat)


def _synthesize(args) -> int:
    from .config import deep_merge, load_config, parse_overrides
    from .datasets.corpus import write_corpus

    cfg = dict(load_config(args.config).get("corpus", {})) if args.config else {}
    cfg = deep_merge(cfg, parse_overrides(args.set))
    if args.seed is not None:
        cfg["seed"] = args.seed
    t = time.perf_counter()
    stats = write_corpus(args.out, cfg, progress=not args.no_progress)
    log.info("corpus written to %s in %.1f s\n%s", args.out, time.perf_counter() - t, stats.to_string(index=False))
    return 0


def _preprocess(args) -> int:
    from .preprocess import PrepParams, preprocess_dataset

    t = time.perf_counter()
    reader_opts = {"split_seed": args.split_seed}
    if args.format == "nihln":
        reader_opts["default_ln_diameter_mm"] = args.ln_diameter_mm
    if args.format == "deeplesion":
        reader_opts["dl_box_pad_px"] = args.dl_box_pad_px
    res = preprocess_dataset(args.format, args.root, args.out, PrepParams(args.pixel_mm, args.slice_mm),
                             dataset=args.dataset, shard=args.shard, truth=args.truth, reader_opts=reader_opts,
                             progress=not args.no_progress)
    log.info("preprocessed %s in %.1f s: %s", args.root, time.perf_counter() - t, json.dumps(res))
    return 0


def _gather(args) -> int:
    from .prep_shards import gather

    gather(args.shards, args.out)
    return 0


def _concat(args) -> int:
    import pandas as pd

    from .io import check_output, read_meta, read_table, write_parquet

    check_output(args.out)
    frames = [read_table(p, [args.sort] if args.sort else [], "Parquet table to concatenate") for p in args.tables]
    nonempty = [f for f in frames if len(f)]
    df = pd.concat(nonempty, ignore_index=True) if nonempty else frames[0]
    if args.sort:
        df = df.sort_values(args.sort, kind="stable").reset_index(drop=True)
    write_parquet(df, args.out, {"parts": [str(p) for p in args.tables], **read_meta(args.tables[0])})
    return 0


CAPTIONS = {
    "Evaluation": "FROC of every variant on the DeepLesion-like test split, LENS 3D protocol (IoBB >= 0.3, "
                  "sensitivity at 1/8 ... 8 FPs per sub-volume; the paper's Table II analogue).",
    "Mining": "Mined annotations audited against the built-in corpus's hidden truth (precision, recall of the "
              "missing annotations, the paper's Table IV columns), delta calibration and a review montage.",
    "Training": "Loss curves of the round-1 and round-2 LENS trainings (Eq. 3 terms per epoch).",
}


def _report(args) -> int:
    from .report import build_report

    sections = [(s[0], CAPTIONS.get(s[0], ""), [Path(f) for f in s[1:]]) for s in args.section]
    build_report(args.results, args.out, sections)
    log.info("wrote %s", args.out)
    return 0
