"""`lens review-boxes`, `lens review` (the page), `lens review-import` (its verdicts into review.parquet),
`lens review-simulate` (the hidden-truth reviewer for audits) and `lens review-value` (the ablation table)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd

from lens_core.arguments import iou_threshold, non_negative_int, probability
from lens_core.io import read_table, write_parquet, write_text
from lens_core.mining.audit import annotation_pad_px
from lens_core.mining.schema import BOX, TRACKLETS
from lens_core.mining.verdicts import REVIEW_SCHEMA, read_review
from lens_core.review.boxes import REVIEW_BOXES_SCHEMA, mined_boxes
from lens_core.review.page import build_page
from lens_core.review.simulate import simulate_verdicts
from lens_core.review.value import value_table, write_value_table
from lens_core.review.verdicts import read_verdicts_json

log = logging.getLogger("lens.review")


def sample_size(text: str) -> int:
    """How many uncertain boxes get a card: a whole number >= 0, or -1 for all."""
    return -1 if text.strip() == "-1" else non_negative_int(text)


def add_parser(sub) -> None:
    p = sub.add_parser("review-boxes", help="every mined box with its review id and image size",
                       description="List the boxes of the mining tables with a stable id each "
                                   "(review_boxes.parquet): what the page shows and the verdicts refer to.")
    p.add_argument("--cross-slice", type=Path, required=True)
    p.add_argument("--intra-patient", type=Path, required=True)
    p.add_argument("--uncertain", type=Path, required=True)
    p.add_argument("--volumes", type=Path, required=True, help="the mined dataset's volumes.parquet")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_boxes)

    p = sub.add_parser("review", help="write the review page of the mined lesions (self-contained HTML)",
                       description="One card per mined box (every cross-slice and intra-patient box, a sample of "
                                   "the uncertain ones): index.html plus img/, no server and no network needed. "
                                   "Review with the keyboard, export the verdicts, then lens review-import.")
    p.add_argument("--boxes", type=Path, required=True, help="review_boxes.parquet")
    p.add_argument("--prep-dir", type=Path, required=True, help="the mined dataset's preprocessed folder")
    p.add_argument("--tracklets", type=Path, help="tracklets.parquet: expert scores and neighbouring boxes")
    p.add_argument("--proposals", type=Path, nargs="*", default=[],
                   help="round-1 proposals the uncertain boxes came from (their expert scores)")
    p.add_argument("--uncertain-sample", type=sample_size, default=100, help="uncertain boxes shown (-1: all)")
    p.add_argument("--window", type=non_negative_int, default=2, help="neighbouring slices shown on each side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--experiment", default="lens")
    p.add_argument("--out", type=Path, required=True, help="the page's folder (index.html, img/)")
    p.set_defaults(func=_page)

    p = sub.add_parser("review-import", help="validate the page's verdicts and write review.parquet",
                       description="Check a verdict file exported by the review page against the run's mined "
                                   "boxes (unknown box ids, boxes outside the image, ... are errors naming the "
                                   "row; nothing is written then) and write its decided rows to --out, which "
                                   "merge_labels then reads. An unchanged verdict set leaves --out untouched.")
    p.add_argument("verdicts", type=Path, help="the JSON the page downloaded")
    p.add_argument("--boxes", type=Path,
                   help="review_boxes.parquet (default: review_boxes.parquet beside --out)")
    p.add_argument("--out", type=Path, required=True, help="results/<exp>/mining/review.parquet")
    p.set_defaults(func=_import)

    p = sub.add_parser("review-simulate", help="verdicts from the built-in corpus's hidden truth (audits only)",
                       description="A simulated reviewer for the review-value ablation: answers a seeded "
                                   "fraction of the mined boxes from the hidden truth (accept / fix / reject). "
                                   "Never for real data, never read by the page.")
    p.add_argument("--boxes", type=Path, required=True, help="review_boxes.parquet")
    p.add_argument("--prep-dir", type=Path, required=True, help="the dataset's preprocessed folder")
    p.add_argument("--truth", type=Path, default=None,
                   help="the hidden truth (results/truth/deeplesion.parquet; default PREP_DIR/truth.parquet)")
    p.add_argument("--fraction", type=probability, required=True, help="share of the mined boxes answered (0..1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accept-iou", type=iou_threshold, default=0.5)
    p.add_argument("--fix-iou", type=iou_threshold, default=0.1)
    p.add_argument("--out", type=Path, required=True, help="a verdict JSON, as the page exports")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("review-value", help="table: round 2 with simulated review of 0 / 25 / 100 %% of mined boxes")
    p.add_argument("--row", nargs=4, action="append", required=True,
                   metavar=("PERCENT", "REVIEW", "VAL_SUMMARY", "TEST_SUMMARY"),
                   help="one row: the share reviewed, its review.parquet ('-' for none) and the validation and "
                        "test summary.parquet of its round-2 model")
    p.add_argument("--out", type=Path, required=True, help="table.md (+ table.parquet beside it)")
    p.set_defaults(func=_value_table)


def _boxes(args) -> int:
    tables = {}
    for name, path in (("cross_slice", args.cross_slice), ("intra_patient", args.intra_patient),
                       ("uncertain", args.uncertain)):
        tables[name] = read_table(path, {"volume_id": "text", "z": "integer", **dict.fromkeys(BOX, "number")},
                                  f"{name} mining table", boxes=BOX)
    vols = read_table(args.volumes, {"volume_id": "text", "width": "integer", "height": "integer",
                                     "n_slices": "integer"}, "volumes.parquet of the mined dataset")
    try:
        boxes = mined_boxes(tables, vols)
    except ValueError as e:
        raise ValueError(f"{args.volumes}: {e}") from None
    write_parquet(boxes, args.out, {"rule": "review_boxes"}, REVIEW_BOXES_SCHEMA)
    log.info("%d mined boxes: %s", len(boxes), json.dumps(boxes["strategy"].value_counts().to_dict()))
    return 0


def _page(args) -> int:
    start = time.perf_counter()
    boxes = read_table(args.boxes, REVIEW_BOXES_SCHEMA.names, "review_boxes.parquet of lens review-boxes")
    trk = read_table(args.tracklets, TRACKLETS, "tracklets.parquet of lens build-tracklets") if args.tracklets else None
    props = pd.concat([read_table(p, ["volume_id", "z", "score"], "round-1 proposal table") for p in args.proposals],
                      ignore_index=True) if args.proposals else None
    summary = build_page(boxes, args.prep_dir, args.out, experiment=args.experiment, tracklets=trk, proposals=props,
                         uncertain_sample=None if args.uncertain_sample < 0 else args.uncertain_sample,
                         window=args.window, seed=args.seed)
    log.info("review page %s: %d cards %s, %d files, %.1f MB, %.1f s", args.out / "index.html", summary["cards"],
             json.dumps(summary["by_strategy"]), summary["files"], summary["bytes"] / 1e6, time.perf_counter() - start)
    return 0


def _import(args) -> int:
    boxes_path = args.boxes or args.out.with_name("review_boxes.parquet")
    if not boxes_path.exists():
        raise FileNotFoundError(f"{boxes_path}: the run's mined boxes are needed to check the verdicts "
                                "(snakemake results/<exp>/mining/review_boxes.parquet, or pass --boxes)")
    boxes = read_table(boxes_path, REVIEW_BOXES_SCHEMA.names, "review_boxes.parquet of lens review-boxes")
    review = read_verdicts_json(args.verdicts, boxes)
    counts = review["decision"].value_counts().to_dict()
    if args.out.exists():
        try:
            same = read_review(args.out).equals(review)
        except ValueError:
            same = False
        if same:  # an unchanged file keeps its date: round 2 is not retrained for nothing
            log.info("%s: the same %d verdicts as %s already holds; left unchanged", args.verdicts, len(review),
                     args.out)
            return 0
    write_parquet(review, args.out, {"verdicts": str(args.verdicts), "boxes": str(boxes_path)}, REVIEW_SCHEMA)
    log.info("%s: %d verdicts of %d mined boxes (%s) -> %s", args.verdicts, len(review), len(boxes),
             json.dumps(counts), args.out)
    return 0


def _simulate(args) -> int:
    truth_path = args.truth if args.truth is not None else args.prep_dir / "truth.parquet"
    if not truth_path.exists():
        raise FileNotFoundError(f"{truth_path}: the simulated reviewer needs the built-in corpus's hidden truth")
    boxes = read_table(args.boxes, REVIEW_BOXES_SCHEMA.names, "review_boxes.parquet of lens review-boxes")
    doc = simulate_verdicts(boxes, read_table(truth_path, ["volume_id"], "hidden truth"), args.fraction, pad_px=annotation_pad_px(args.prep_dir),
                            seed=args.seed, accept_iou=args.accept_iou, fix_iou=args.fix_iou)
    write_text(args.out, json.dumps(doc, indent=1))
    counts = pd.Series([v["decision"] for v in doc["verdicts"] if v["decision"]]).value_counts().to_dict()
    log.info("simulated review of %.0f %% of %d mined boxes: %s", 100 * args.fraction, len(boxes), json.dumps(counts))
    return 0


def _value_table(args) -> int:
    table = value_table(args.row)
    write_value_table(table, args.out)
    log.info("review value:\n%s", table.to_string(index=False))
    return 0
