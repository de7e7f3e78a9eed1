"""`lens train-fpr` and `lens score-fpr`: the 3D false-positive reduction network (paper Sec. IV-D,
Eq. 4, Sec. VI-B)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lens_core.arguments import add_resume_arg, add_torch_args, set_torch_threads

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train-fpr", help="train the 3D FPR classifier on LENS's TPs / FPs (Sec. IV-D)",
                              description="Train the 3D false-positive reduction network on the TP and FP 3D "
                                          "proposals of round-2 LENS on the training split (Sec. VI-B).")
    p.add_argument("--prep-dir", type=Path, required=True, help="one dataset's folder, e.g. results/prep/deeplesion")
    p.add_argument("--proposals3d", type=Path, required=True, help="3D proposals of the training split (Parquet)")
    p.add_argument("--labels", type=Path, required=True,
                   help="round-2 label table (annotations, mined and uncertain boxes)")
    p.add_argument("--out", type=Path, required=True, help="model file (fpr.pt)")
    p.add_argument("--preset", choices=["cpu", "paper"], default="cpu")
    p.add_argument("--weights", type=Path, default=None,
                   help="local torchvision resnet18 ImageNet state_dict to inflate (paper preset)")
    p.add_argument("--epochs", type=int, default=None, help="default 6 (the paper)")
    p.add_argument("--lr", type=float, default=None, help="default: paper 2e-4, cpu 2e-3")
    p.add_argument("--lr-steps", type=int, nargs="*", default=None, metavar="EPOCH",
                   help="lr / 10 after these epochs (default: after 1/3 and 2/3 of the epochs, the paper's 2 and 4 of 6)")
    p.add_argument("--tp-per-epoch", type=int, default=None,
                   help="TP draws per epoch, FPs twice as many (default: paper every TP once, cpu 400)")
    p.add_argument("--extra-source", nargs=3, action="append", default=[],
                   metavar=("PREP_DIR", "PROPOSALS3D", "LABELS"),
                   help="another dataset whose labels are complete for its lesion type (a single-type dataset, "
                        "e.g. results/prep/luna, its round-2 train.3d.parquet, its lesions.parquet): its TPs and "
                        "FPs join the training samples (repeatable)")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold out this fraction of patients and log the FPR's AUC on them")
    p.add_argument("--split", default="train", help="volumes of this split (volumes.parquet) are used")
    p.add_argument("--seed", type=int, default=0)
    add_torch_args(p)
    add_resume_arg(p, "<out stem>.checkpoint.pt, after every epoch")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("score-fpr", help="add FPR scores and Eq. 4 to a 3D proposal table",
                              description="Score 3D proposals with the FPR network: adds score_lens, score_fpr "
                                          "and score_fused = (score_lens + score_fpr) / 2 (Eq. 4).")
    p.add_argument("--model", type=Path, required=True, help="fpr.pt from `lens train-fpr`")
    p.add_argument("--prep-dir", type=Path, required=True, help="the proposals' dataset folder")
    p.add_argument("--proposals3d", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--score", choices=["fused", "fpr", "lens"], default="fused",
                   help="which score goes into the `score` column (fused = Eq. 4)")
    add_torch_args(p)
    p.set_defaults(func=_score)


def _train(args: argparse.Namespace) -> int:
    from lens_core.fpr.train import FprTrainConfig, SampleSource, train_fpr  # lazy: torch, not for lens --help

    set_torch_threads(args)
    cfg = FprTrainConfig.for_preset(args.preset, weights_path=str(args.weights) if args.weights else None,
                                    epochs=args.epochs, lr=args.lr, tp_per_epoch=args.tp_per_epoch,
                                    lr_steps=args.lr_steps,
                                    val_fraction=args.val_fraction, seed=args.seed)
    extra = [SampleSource(Path(d), Path(p), Path(lab)) for d, p, lab in args.extra_source]
    stats = train_fpr(cfg, args.prep_dir, args.proposals3d, args.labels, args.out, device=args.device,
                      split=args.split, progress=not args.no_progress, extra_sources=extra, resume=args.resume)
    log.info("wrote %s (%d TP / %d FP training proposals, %.1f s)", args.out, stats["train_tp"], stats["train_fp"],
             stats["seconds"])
    return 0


def _score(args: argparse.Namespace) -> int:
    # lazy: torch, not for lens --help
    from lens_core.fpr.score import score_table
    from lens_core.runtime import resolve_device

    set_torch_threads(args)
    df = score_table(args.model, args.prep_dir, args.proposals3d, args.out, args.score, resolve_device(args.device))
    log.info("wrote %s: %d proposals, score = %s", args.out, len(df), args.score)
    return 0
