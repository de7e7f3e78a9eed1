"""`lens propose` (2D proposals of every slice, one score column per dataset expert, and 3D boxes), `lens concat`
(a step's shards into one table) and `lens detect` (a trained LENS, optionally + FPR, on one CT scan)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
from pathlib import Path

import pandas as pd

from lens_core.arguments import (add_numerics_args, add_torch_args, iou_threshold, non_negative_int, positive_float, positive_int,
                                 positive_shard, probability, set_torch_threads)
from lens_core.boxes import THETA
from lens_core.deviations import in_effect
from lens_core.io import atomic_folder, atomic_paths, check_output, read_meta, read_table, write_parquet

log = logging.getLogger(__name__)

SCORES = ("head", "two_stage")  # lens_core.model.lens.SCORES (not imported here: torch loads late)
SPACING_MM = (0.05, 50.0)  # lens_core.datasets.scan_file.SPACING_MM (not imported here: SimpleITK loads late)


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
    p.add_argument("--min-score", type=probability, default=0.01, help="drop proposals below this fused score")
    p.add_argument("--score", choices=SCORES, default="head",
                   help="an expert's score: head = its classifier (the paper, Sec. IV-B); two_stage = "
                        "sqrt(classifier x its AFP's centerness) (an ablation row)")
    p.add_argument("--max-per-slice", type=positive_int, default=20, help="fused proposals kept per slice")
    p.add_argument("--stack-iou", type=iou_threshold, default=THETA, help="theta of the 2D->3D stacking")
    p.add_argument("--batch-slices", type=positive_int, default=None, help="slices per forward pass (16 CPU, 64 CUDA)")
    add_torch_args(p)
    add_numerics_args(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)

    p = subparsers.add_parser("concat", help="concatenate Parquet tables (e.g. the shards of `lens propose`)")
    p.add_argument("tables", nargs="+", type=Path)
    p.add_argument("--sort", help="stable sort by this column (shards of volumes i::n back in volume order)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=run_concat)

    p = subparsers.add_parser("detect", help="detect lesions in one CT scan (NIfTI, .mhd, DICOM or DeepLesion PNGs)",
                              description="Detect lesions in one CT scan with a trained LENS (optionally + FPR, "
                                          "Eq. 4): 3D boxes in the scan's voxel coordinates and in world mm, "
                                          "a 3D Slicer markups file and a label map on the scan's grid.")
    p.add_argument("--model", type=Path, required=True, help="lens.pt from `lens train`")
    p.add_argument("--fpr", type=Path, default=None, help="fpr.pt from `lens train-fpr` (score = Eq. 4)")
    p.add_argument("--input", type=Path, required=True,
                   help="NIfTI (.nii, .nii.gz) or MetaImage (.mhd) file, a folder holding one DICOM series, or a "
                        "DeepLesion series folder of 16-bit PNGs (HU + 32768)")
    p.add_argument("--dl-info", type=Path, default=None,
                   help="DeepLesion PNGs: DL_info.csv with the series' spacing (default: the one beside Images_png/)")
    p.add_argument("--spacing", default=None, metavar="X,Y,Z",
                   help="DeepLesion PNGs: pixel spacing x, y and slice interval in mm (instead of DL_info.csv)")
    p.add_argument("--slices", default=None, metavar="FIRST-LAST",
                   help="DeepLesion PNGs: the slice run to read when the folder holds several")
    p.add_argument("--out", type=Path, required=True, help="detections table (.csv; .parquet also works)")
    p.add_argument("--markups", type=Path, default=None,
                   help="3D Slicer markups file of the boxes (default: OUT with .mrk.json)")
    p.add_argument("--label-map", type=Path, default=None,
                   help="NIfTI label map of the boxes on the scan's grid, voxel = rank (default: OUT with .labels.nii.gz)")
    p.add_argument("--overlays", type=Path, default=None,
                   help="folder for PNGs of the top detections (replaced as a whole on every run)")
    p.add_argument("--overlay-top", type=non_negative_int, default=10, help="how many detections get an overlay")
    p.add_argument("--min-score", type=probability, default=0.05, help="drop detections whose final score is below")
    p.add_argument("--max-detections", type=positive_int, default=100)
    p.add_argument("--experts", default=None, help="comma-separated experts to fuse (default: the model's)")
    p.add_argument("--pixel-mm", type=positive_float, default=None,
                   help="in-plane resampling (default: recorded in the model files, else 2.0)")
    p.add_argument("--slice-mm", type=positive_float, default=None,
                   help="slice resampling (default: recorded in the model files, else 4.0)")
    p.add_argument("--stack-iou", type=iou_threshold, default=THETA, help="theta of the 2D->3D stacking")
    add_torch_args(p)
    add_numerics_args(p)
    p.set_defaults(func=run_detect)


def _write(df, path: Path, meta: dict | None = None) -> None:
    write_parquet(df, path, meta)


def proposal_meta(score: str, metas: list[dict], kernels: str = "fast", precision: str = "fp32") -> dict:
    """The proposal tables' metadata: the score used, how it was computed, and the deviations in effect (the
    models' own, recorded by `lens train`, and this step's)."""
    deviations = {k: v for meta in metas for k, v in (meta.get("deviations") or {}).items()}
    return {"score": score, "kernels": kernels, "precision": precision,
            "deviations": {**deviations, **in_effect({"propose": {"score": score}})}}


def run(args: argparse.Namespace) -> int:
    # lazy: torch, not for lens --help nor lens concat
    from lens_core.inference.expert_proposals import expert_names, propose, stack_proposals_3d
    from lens_core.model.lens import load_lens
    from lens_core.runtime import resolve_device, resolve_precision

    check_output(args.out)
    if args.out3d:
        check_output(args.out3d, "--out3d")
    set_torch_threads(args)
    dev = resolve_device(args.device)
    precision = resolve_precision(args.precision, dev)
    loaded = [load_lens(path, dev) for path in args.model]
    models = [m for m, _ in loaded]
    for m in models:
        m.score, m.kernels = args.score, args.kernels
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
                 args.max_per_slice, progress=not args.no_progress, precision=precision)
    df3 = stack_proposals_3d(df, args.stack_iou) if args.out3d else None
    meta = proposal_meta(args.score, [meta for _, meta in loaded], args.kernels, precision)
    _write(df, args.out, meta)
    if df3 is not None:
        _write(df3, args.out3d, meta)
    log.info("wrote %d 2D proposals%s", len(df), f" and {len(df3)} 3D boxes" if df3 is not None else "")
    return 0


def run_concat(args: argparse.Namespace) -> int:
    check_output(args.out)
    frames = [read_table(p, [args.sort] if args.sort else [], "Parquet table to concatenate") for p in args.tables]
    nonempty = [f for f in frames if len(f)]
    df = pd.concat(nonempty, ignore_index=True) if nonempty else frames[0]
    if args.sort:
        df = df.sort_values(args.sort, kind="stable").reset_index(drop=True)
    write_parquet(df, args.out, {"parts": [str(p) for p in args.tables], **read_meta(args.tables[0])})
    return 0


def _check_flags(args: argparse.Namespace) -> tuple[tuple[float, float, float] | None, tuple[int, int] | None]:
    """--spacing and --slices, parsed and in range before anything is read or written (the numeric flags
    are checked by their argparse types)."""
    spacing = slices = None
    if args.spacing is not None:
        try:
            spacing = tuple(float(v) for v in args.spacing.split(","))
        except ValueError:
            spacing = ()
        lo, hi = SPACING_MM
        if len(spacing) != 3 or not all(math.isfinite(v) and lo <= v <= hi for v in spacing):
            raise ValueError(f"--spacing {args.spacing}: expected three millimetre values X,Y,Z in [{lo}, {hi}], "
                             f"as a CT's voxels are")
        if args.dl_info is not None:
            raise ValueError("--spacing and --dl-info: give one (the spacing would silently win over DL_info.csv)")
    if args.slices is not None:
        try:
            first, last = (int(v) for v in args.slices.split("-"))
        except ValueError:
            first, last = 0, -1
        if not 0 <= first <= last:
            raise ValueError(f"--slices {args.slices}: expected FIRST-LAST PNG numbers, FIRST <= LAST")
        slices = (first, last)
    return spacing, slices


def output_paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """Label map, markups and table: the defaults sit beside --out; each must be a file name whose folders
    are folders."""
    out = args.out
    stem = out.name[: -len(out.suffix)] if out.suffix in (".csv", ".parquet") else out.name
    markups = args.markups or out.with_name(stem + ".mrk.json")
    label_map = args.label_map or out.with_name(stem + ".labels.nii.gz")
    checks = (("--out", out, None), ("--markups", markups, (".json",)),
              ("--label-map", label_map, (".nii", ".nii.gz")))
    for flag, path, suffixes in checks:
        if path.is_dir():
            raise ValueError(f"{flag} {path}: is a folder; give a file name")
        blocker = next((d for d in path.parents if d.exists() and not d.is_dir()), None)
        if blocker is not None:
            raise ValueError(f"{flag} {path}: {blocker} is a file, not a folder")
        if suffixes and not path.name.endswith(suffixes):
            raise ValueError(f"{flag} {path}: expected a name ending in {' or '.join(suffixes)}")
    if args.overlays is not None and args.overlays.exists() and not args.overlays.is_dir():
        raise ValueError(f"--overlays {args.overlays}: is a file; give a folder")
    return label_map, markups, out


def run_detect(args: argparse.Namespace) -> int:
    # lazy: torch, and SimpleITK (lens propose runs without it: tests/test_fpr.py), not for lens --help nor concat
    from lens_core.inference.detect import (OVERLAY_RE, detect_scan, prep_params, read_scan, write_label_map,
                                  write_markups, write_overlays, write_table)
    from lens_core.model.lens import load_lens
    from lens_core.runtime import resolve_device, resolve_precision

    spacing, slices = _check_flags(args)
    paths = output_paths(args)
    set_torch_threads(args)
    dev = resolve_device(args.device)
    with contextlib.ExitStack() as publish:
        # the outputs are one unit: written under temporary names, published only when all are written
        # (overlays first, the table last); an overlay folder is replaced as a whole, so PNGs of two
        # scans never mix, and one holding other files is refused (here, before any work) rather than emptied
        label_tmp, markups_tmp, table_tmp = publish.enter_context(atomic_paths(*paths))
        overlay_tmp = None
        if args.overlays is not None:
            overlay_tmp = publish.enter_context(atomic_folder(args.overlays, own=OVERLAY_RE.fullmatch))
        # the scan next: a bad scan fails before any model is loaded
        img = read_scan(args.input, spacing=spacing, dl_info=args.dl_info, slices=slices)
        if not args.model.is_file():
            raise FileNotFoundError(f"LENS model file not found: {args.model}")
        lens, lens_meta = load_lens(args.model, dev)
        lens.kernels = args.kernels
        fpr = None
        if args.fpr is not None:
            from lens_core.fpr.model import load_fpr  # lazy: torch, with run_detect's other torch imports

            fpr = load_fpr(args.fpr, dev)
        params = prep_params(args.pixel_mm, args.slice_mm, fpr[1] if fpr else {}, lens_meta)
        det = detect_scan(lens, lens_meta, img, params, dev, fpr=fpr,
                          experts=args.experts.split(",") if args.experts else None, min_score=args.min_score,
                          stack_iou=args.stack_iou, max_detections=args.max_detections,
                          batch_slices=64 if dev.type == "cuda" else 16, volume_id=args.input.name,
                          precision=resolve_precision(args.precision, dev))
        write_label_map(det, img, label_tmp)
        write_markups(det, img, markups_tmp)
        write_table(det, table_tmp)
        if overlay_tmp is not None:
            write_overlays(img, det, overlay_tmp, args.overlay_top)
    log.info("%s: %d detections -> %s, %s, %s (resampled at %.2f mm / %.2f mm)", args.input, len(det), *paths[::-1],
             params.pixel_mm, params.slice_mm)
    return 0
