"""`lens detect`: run a trained LENS (+ optional FPR) on one CT scan and write its 3D detections."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lens_core.cli import add_torch_args, set_torch_threads

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("detect", help="detect lesions in one CT scan (NIfTI, .mhd or DICOM folder)",
                              description="Detect lesions in one CT scan with a trained LENS (optionally + FPR, "
                                          "Eq. 4): 3D boxes in the scan's voxel coordinates and in world mm.")
    p.add_argument("--model", type=Path, required=True, help="lens.pt from `lens train`")
    p.add_argument("--fpr", type=Path, default=None, help="fpr.pt from `lens train-fpr` (score = Eq. 4)")
    p.add_argument("--input", type=Path, required=True,
                   help="NIfTI / MetaImage file, or a folder holding one DICOM series")
    p.add_argument("--out", type=Path, required=True, help="detections table (.csv; .parquet also works)")
    p.add_argument("--overlays", type=Path, default=None, help="folder for PNGs of the top detections")
    p.add_argument("--overlay-top", type=int, default=10, help="how many detections get an overlay")
    p.add_argument("--min-score", type=float, default=0.05, help="drop detections whose final score is below")
    p.add_argument("--max-detections", type=int, default=100)
    p.add_argument("--experts", default=None, help="comma-separated experts to fuse (default: the model's)")
    p.add_argument("--pixel-mm", type=float, default=None,
                   help="in-plane resampling (default: recorded in the model files, else 2.0)")
    p.add_argument("--slice-mm", type=float, default=None,
                   help="slice resampling (default: recorded in the model files, else 4.0)")
    p.add_argument("--stack-iou", type=float, default=0.5, help="theta of the 2D->3D stacking")
    add_torch_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lens_core.detect import detect_scan, prep_params, read_scan, write_overlays, write_table
    from lens_core.model.lens import load_lens
    from lens_core.training.loop import resolve_device

    set_torch_threads(args)
    dev = resolve_device(args.device)
    img = read_scan(args.input)  # first: a bad scan fails before any model is loaded
    if not args.model.is_file():
        raise FileNotFoundError(f"LENS model file not found: {args.model}")
    lens, lens_meta = load_lens(args.model, dev)
    fpr = None
    if args.fpr is not None:
        from lens_core.fpr.model import load_fpr

        fpr = load_fpr(args.fpr, dev)
    params = prep_params(args.pixel_mm, args.slice_mm, fpr[1] if fpr else {}, lens_meta)
    det = detect_scan(lens, lens_meta, img, params, dev, fpr=fpr,
                      experts=args.experts.split(",") if args.experts else None, min_score=args.min_score,
                      stack_iou=args.stack_iou, max_detections=args.max_detections,
                      batch_slices=64 if dev.type == "cuda" else 16, volume_id=args.input.name)
    write_table(det, args.out)
    if args.overlays is not None:
        write_overlays(img, det, args.overlays, args.overlay_top)
    log.info("%s: %d detections -> %s (resampled at %.2f mm / %.2f mm)", args.input, len(det), args.out,
             params.pixel_mm, params.slice_mm)
    return 0
