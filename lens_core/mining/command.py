"""`lens` mining steps (paper Sec. V): one subcommand per strategy, each writing its own artifact."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..arguments import add_resume_arg, iou_threshold, non_negative_int, positive_float, positive_int, probability
from ..boxes import THETA
from ..io import InputError, check_output, read_table, write_parquet, write_text
from ..label_kinds import GT_LIKE_KINDS, IGNORE_KINDS
from ..tracklets import tracklets_from_table
from .audit import _labeled_slice_mask, annotation_pad_px, audit_mining, classify_boxes, truth_slices, write_audit
from .cross_dataset import mine_uncertain
from .cross_slice import mine_cross_slice
from .delta_audit import delta_curve, plot_delta_audit
from .embedding import (box_keys, embed, fit_encoder, lookup, read_embeddings_h5, training_groups, tracklet_centres,
                        write_embeddings_h5)
from .intra_patient import mine_intra_patient
from .merge import UnknownVerdict, merge_round2, training_slices
from .montage import sample_for_review, write_montage
from .schema import (ANNOTATIONS, BOX, MINED, PROPOSALS_2D, TRACKLETS, TRACKLETS_WITH_PATIENT, TRUTH, VOLUMES,
                     write_mining_table)
from .verdicts import read_review

log = logging.getLogger("lens.mining")


def _concat(frames) -> pd.DataFrame:
    """Tables read one by one (each checked, errors naming its own file and row), as one table."""
    nonempty = [f for f in frames if len(f)]
    return pd.concat(nonempty, ignore_index=True) if nonempty else frames[0]


def _volumes(path: Path, columns=None) -> pd.DataFrame:
    return read_table(path, {**VOLUMES, **(columns or {})}, "volume table, a preprocessed volumes.parquet")


def _lesions(path: Path, columns=None) -> pd.DataFrame:
    return read_table(path, {**ANNOTATIONS, **(columns or {})}, "lesion table, a preprocessed lesions.parquet",
                      boxes=BOX)


def _slice_table(path: Path, columns: dict, what: str, **checks) -> pd.DataFrame:
    """A table of 2D boxes, one slice each (proposals, tracklets): ``read_table`` and a 3D box table refused.
    A 3D table of `lens propose --out3d` has a key slice ``z`` and tracklet ids too, so it passed the
    column checks and mining ran on it to an empty output with exit 0."""
    df = read_table(path, columns, what, **checks)
    if {"z1", "z2"} <= set(df.columns):
        raise InputError(f"{path}: a 3D box table (z1, z2 columns); expected the {what}, one 2D box per slice "
                         f"(lens propose --out, not --out3d)")
    return df


def _tracklets(path: Path, patient: bool = False) -> pd.DataFrame:
    return _slice_table(path, TRACKLETS_WITH_PATIENT if patient else TRACKLETS,
                        "tracklet table of lens build-tracklets", boxes=BOX)


def _mined(path: Path, what: str, kinds) -> pd.DataFrame:
    """A mining table whose every ``label_kind`` is one of ``kinds``."""
    df = read_table(path, MINED, what, boxes=BOX)
    bad = ~df["label_kind"].isin(kinds).to_numpy()
    if bad.any():
        i = int(bad.argmax())
        raise InputError(f"{path} ({what}): row {i}: label_kind {df['label_kind'].iloc[i]!r}, expected one of "
                         f"{list(kinds)}")
    return df


def _train_only(df, volumes_path: Path | None, split: str = "train"):
    """Mining runs on the training split (the paper mines DeepLesion's training set); ``split`` val mines the
    validation patients as if they were training data, to measure its precision on their full 3D boxes."""
    if volumes_path is None:
        return df
    vols = _volumes(volumes_path)
    keep = set(vols.loc[vols["split"] == split, "volume_id"])
    return df[df["volume_id"].isin(keep)].reset_index(drop=True)


def add_parser(sub) -> None:
    p = sub.add_parser("build-tracklets", help="group 2D proposals across adjacent slices (Sec. V-A)",
                       description="Group 2D proposals of a volume on adjacent slices with IoU > theta into "
                                   "tracklets (numba kernel); a box that joins nothing is a tracklet of one.")
    p.add_argument("--proposals", nargs="+", type=Path, required=True, help="2D proposal tables (shards)")
    p.add_argument("--volumes", type=Path, help="volumes.parquet: keep the training split only")
    p.add_argument("--theta", type=iou_threshold, default=THETA)
    p.add_argument("--min-score", type=probability, default=0.0,
                   help="proposals below this fused score are dropped (the paper: none, config mining.tracklet_min_score)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_build_tracklets)

    p = sub.add_parser("mine-cross-slice", help="cross-slice box propagation from key-slice annotations (Sec. V-A)")
    p.add_argument("--tracklets", type=Path, required=True)
    p.add_argument("--lesions", type=Path, required=True, help="the dataset's lesions.parquet")
    p.add_argument("--volumes", type=Path, help="volumes.parquet: keep the training split only")
    p.add_argument("--split", default="train", choices=["train", "val"],
                   help="mine this split (val: the validation patients as if training data, lens mining-precision)")
    p.add_argument("--theta", type=iou_threshold, default=THETA)
    p.add_argument("--extent-ratio", type=positive_float, default=None,
                   help="a lesion spans at most this x its long axis in z: slices farther from the key slice "
                        "are not mined (needs --volumes for the spacing; default: no limit)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cross_slice)

    p = sub.add_parser("mine-cross-dataset", help="uncertain lesions from the single-type experts (Sec. V-C)",
                       description="Proposals of the single-type experts scoring above sigma that overlap no "
                                   "existing or mined annotation become uncertain boxes (ignored in retraining); "
                                   "this covers unlabeled slices too.")
    p.add_argument("--proposals", nargs="+", type=Path, required=True)
    p.add_argument("--volumes", type=Path, help="volumes.parquet: keep the training split only")
    p.add_argument("--labels", nargs="+", type=Path, required=True, help="annotations and mined tables")
    p.add_argument("--experts", default="luna,lits,nihln",
                   help="single-type experts (score_<name> columns); 'none' when the model has none")
    p.add_argument("--sigma", type=probability, default=0.5)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cross_dataset)

    p = sub.add_parser("merge-labels", help="annotations + mined boxes (ground truth) + uncertain boxes (ignore)")
    p.add_argument("--lesions", type=Path, required=True)
    p.add_argument("--mined", nargs="*", type=Path, default=[], help="mined tables, highest priority first")
    p.add_argument("--uncertain", type=Path)
    p.add_argument("--theta", type=iou_threshold, default=THETA)
    p.add_argument("--review", type=Path, help="review.parquet (lens review-import): a reviewer's verdicts on the "
                                                "mined boxes (accepted/fixed: lesions, rejected: dropped)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_merge)
    add_embedding_parsers(sub)


def add_embedding_parsers(sub) -> None:
    p = sub.add_parser("embed-lesions", help="lesion embeddings of annotations and tracklet centres (Sec. V-B)",
                       description="Embed every annotation and every tracklet's centre slice. source 'learned': a "
                                   "small encoder trained by metric learning on the user's own annotations and "
                                   "tracklets (never the truth), plus body position and size; 'position': position "
                                   "and size only; or the path of a user embedding table (Parquet).")
    p.add_argument("--prep-dir", type=Path, required=True, help="the dataset's preprocessed folder")
    p.add_argument("--tracklets", type=Path, required=True)
    p.add_argument("--source", default="learned", help="learned | position | appearance | PATH.parquet")
    p.add_argument("--steps", type=positive_int, default=150, help="encoder training steps (learned; config mining.encoder_steps)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--theta", type=iou_threshold, default=THETA)
    p.add_argument("--encoder-out", type=Path, help="where to keep the trained encoder (learned)")
    p.add_argument("--out", type=Path, required=True, help="embeddings.h5")
    add_resume_arg(p, "<encoder-out stem>.checkpoint.pt, every 50 encoder steps")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_embed)

    p = sub.add_parser("audit-delta", help="precision/recall of intra-patient matching against delta (an audit)",
                       description="Sweep the intra-patient distance threshold delta on the validation split of the "
                                   "built-in corpus (correct = same hidden-truth lesion instance) and plot precision "
                                   "and recall with the configured delta marked. An audit: it decides nothing.")
    p.add_argument("--prep-dir", type=Path, required=True)
    p.add_argument("--truth", type=Path, default=None,
                   help="the hidden truth (results/truth/deeplesion.parquet; default PREP_DIR/truth.parquet)")
    p.add_argument("--tracklets", type=Path, required=True)
    p.add_argument("--embeddings", type=Path, required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--delta", type=positive_float, required=True, help="the configured delta, marked on the plot")
    p.add_argument("--theta", type=iou_threshold, default=THETA)
    p.add_argument("--out", type=Path, required=True, help="delta_audit.parquet (the curve)")
    p.add_argument("--plot", type=Path, required=True, help="delta_audit.png")
    p.set_defaults(func=_audit_delta)

    p = sub.add_parser("mine-intra-patient", help="intra-patient lesion matching (Sec. V-B)")
    p.add_argument("--prep-dir", type=Path, required=True)
    p.add_argument("--tracklets", type=Path, required=True)
    p.add_argument("--embeddings", type=Path, required=True)
    p.add_argument("--delta", required=True, help="a number, or a JSON file {\"delta\": number}")
    p.add_argument("--theta", type=iou_threshold, default=THETA)
    p.add_argument("--split", default="train", choices=["train", "val"],
                   help="mine this split (val: the validation patients as if training data, lens mining-precision)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_intra_patient)

    p = sub.add_parser("mining-precision", help="mined boxes of the validation patients against their full 3D boxes",
                       description="Precision of cross-slice propagation and intra-patient matching without any "
                                   "hidden truth: the validation patients are mined as if they were training data "
                                   "(--split val of both steps) and each mined box is scored against the split's "
                                   "fully annotated 3D boxes (test3d.parquet: the manual 3D set on real DeepLesion). "
                                   "A measurement: no threshold is chosen on it.")
    p.add_argument("--prep-dir", type=Path, required=True, help="the dataset's folder (lesions, volumes, test3d)")
    p.add_argument("--cross-slice", type=Path, required=True, help="lens mine-cross-slice --split val")
    p.add_argument("--intra-patient", type=Path, required=True, help="lens mine-intra-patient --split val")
    p.add_argument("--split", default="val")
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--out-parquet", type=Path, required=True)
    p.set_defaults(func=_mining_precision)

    p = sub.add_parser("audit-mining", help="mined boxes against the built-in corpus's hidden truth (+ montage)")
    p.add_argument("--prep-dir", type=Path, required=True)
    p.add_argument("--truth", type=Path, default=None,
                   help="the hidden truth (results/truth/deeplesion.parquet; default PREP_DIR/truth.parquet)")
    p.add_argument("--cross-slice", type=Path, required=True)
    p.add_argument("--intra-patient", type=Path, required=True)
    p.add_argument("--uncertain", type=Path, required=True)
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--out-parquet", type=Path, required=True)
    p.add_argument("--montage", type=Path, required=True)
    p.add_argument("--n-review", type=non_negative_int, default=24)
    p.set_defaults(func=_audit)


def _split_volumes(prep_dir: Path, split: str) -> set:
    vols = _volumes(prep_dir / "volumes.parquet")
    return set(vols.loc[vols["split"] == split, "volume_id"])


def _embed(args) -> int:
    check_output(args.out)
    if args.encoder_out:
        check_output(args.encoder_out, "--encoder-out")
    lesions = _lesions(args.prep_dir / "lesions.parquet")
    lesions = lesions[lesions["label_kind"] == "gt"]
    trk = _tracklets(args.tracklets, patient=True)
    centres = tracklet_centres(trk) if len(trk) else trk
    boxes = pd.concat([lesions, centres], ignore_index=True)
    config = {"source": str(args.source), "theta": args.theta}
    encoder = None
    if args.source in ("learned", "appearance"):
        # lazy: torch, for the learned encoder only (not for lens --help nor the other mining steps)
        from ..training.engine import checkpoint_beside
        from .embed_model import EncoderTraining, save_encoder

        train = _split_volumes(args.prep_dir, "train")
        groups = training_groups(lesions[lesions["volume_id"].isin(train)], trk[trk["volume_id"].isin(train)],
                                 args.theta)
        cfg = EncoderTraining(steps=args.steps, seed=args.seed, threads=args.threads or EncoderTraining.threads)
        ckpt = checkpoint_beside(args.encoder_out or args.out)
        encoder, cfg, history = fit_encoder(groups, args.prep_dir, cfg=cfg, log=log.info, checkpoint=ckpt,
                                            resume=args.resume, progress=not args.no_progress)
        config["encoder"] = cfg.to_dict()
        if args.encoder_out:
            save_encoder(encoder, cfg, args.encoder_out)
    keys, emb = embed(boxes, args.prep_dir, args.source, encoder=encoder)
    write_embeddings_h5(args.out, box_keys(boxes) if len(keys) != len(boxes) else keys, emb, config)
    if encoder is not None:
        ckpt.unlink(missing_ok=True)  # both outputs written: a forced rerun trains anew
    log.info("embedded %d annotations and %d tracklet centres (d = %d)", len(lesions), len(centres), emb.shape[1])
    return 0


def _val_tables(args, split):
    """Annotations, tracklet centres and tracklet boxes of one split, with their embeddings."""
    keys, emb, _ = read_embeddings_h5(args.embeddings)
    vols = _split_volumes(args.prep_dir, split)
    lesions = _lesions(args.prep_dir / "lesions.parquet")
    lesions = lesions[(lesions["label_kind"] == "gt") & lesions["volume_id"].isin(vols)].reset_index(drop=True)
    trk = _tracklets(args.tracklets, patient=True)
    trk = trk[trk["volume_id"].isin(vols)].reset_index(drop=True)
    centres = tracklet_centres(trk).reset_index(drop=True) if len(trk) else trk
    return (lesions, lookup(keys, emb, lesions, str(args.embeddings)), centres,
            lookup(keys, emb, centres, str(args.embeddings)) if len(centres) else emb[:0], trk)


def _audit_delta(args) -> int:
    check_output(args.out)
    check_output(args.plot, "--plot")
    truth_path = _truth_path(args)
    if not truth_path.exists():
        raise InputError(f"{truth_path}: the delta audit needs the built-in corpus's truth")
    lesions, ann_emb, centres, trk_emb, trk = _val_tables(args, args.split)
    truth = read_table(truth_path, {**TRUTH, "split": "text"}, "hidden truth table, truth.parquet", boxes=BOX)
    truth = truth[truth["split"] == args.split]
    curve = delta_curve(lesions, ann_emb, centres, trk_emb, trk, truth, pad_px=annotation_pad_px(args.prep_dir),
                        iou_threshold=args.theta)
    n = int(curve.attrs.get("n_findable", 0))
    # the plot first: it is the step that can still fail; then the table
    plot_delta_audit(curve, args.delta, args.plot,
                     title=f"intra-patient matching on the {args.split} split ({n} findable tracklets)")
    write_parquet(curve, args.out, {"split": args.split, "delta": args.delta, "n_findable": n})
    log.info("delta audit (%d findable tracklets):\n%s", n, curve.to_string(index=False))
    return 0


def _delta(text: str) -> float:
    """--delta: a number >= 0, or a JSON file {"delta": number}."""
    try:
        value, source = float(text), f"--delta {text}"
    except ValueError:
        path, source = Path(text), f"{text} (delta file)"
        if not path.is_file():
            raise InputError(f"{source}: no such file; --delta takes a number or a delta.json") from None
        try:
            value = json.loads(path.read_text())["delta"]
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{source}: not JSON ({e})") from None
        except (KeyError, TypeError):
            raise InputError(f"{source}: no 'delta' entry") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InputError(f"{source}: delta = {value!r}, expected a distance >= 0 (0: no lesion matched)")
    return float(value)


def _intra_patient(args) -> int:
    check_output(args.out)
    delta = _delta(args.delta)
    lesions, ann_emb, centres, trk_emb, trk = _val_tables(args, args.split)
    mined = mine_intra_patient(lesions, ann_emb, centres, trk_emb, trk, delta, args.theta)
    write_mining_table(mined, args.out, {"delta": delta, "theta": args.theta, "rule": "mine_intra_patient"})
    log.info("intra-patient matching (delta %.3f) mined %d boxes from %d tracklets", delta, len(mined),
             mined["tracklet_id"].nunique() if len(mined) else 0)
    return 0


def _audit(args) -> int:
    check_output(args.out_md, "--out-md")
    check_output(args.out_parquet, "--out-parquet")
    check_output(args.montage, "--montage")
    lesions = _lesions(args.prep_dir / "lesions.parquet")
    truth = read_table(_truth_path(args), TRUTH, "hidden truth table, truth.parquet", boxes=BOX)
    volumes = _volumes(args.prep_dir / "volumes.parquet")
    mined = {"cross_slice": _mined(args.cross_slice, "cross-slice mining table", ["mined_cross_slice"]),
             "intra_patient": _mined(args.intra_patient, "intra-patient mining table", ["mined_intra_patient"]),
             "uncertain": _mined(args.uncertain, "uncertain table of lens mine-cross-dataset", ["uncertain"])}
    pad = annotation_pad_px(args.prep_dir)
    table = audit_mining(lesions, mined, truth, volumes=volumes, split="train", pad_px=pad)
    review = sample_for_review(pd.concat([m for m in mined.values() if len(m)] or [mined["cross_slice"]],
                                         ignore_index=True), n=args.n_review)
    slices = truth_slices(truth, pad)
    verdict = (classify_boxes(review, slices, _labeled_slice_mask(lesions, slices, 0.3))["verdict"].to_numpy()
               if len(review) else None)
    # the montage first: it reads the images and is the step that can still fail on bad input
    write_montage(review, args.prep_dir, args.montage, verdict=verdict,
                  title="mined lesions for review (green: a real missed lesion, orange: already labeled, red: FP)")
    write_audit(table, args.out_md, args.out_parquet)
    log.info("mining audit:\n%s", table.to_string(index=False))
    return 0


def _truth_path(args) -> Path:
    """The hidden truth an audit reads: --truth, else (a standalone run) PREP_DIR/truth.parquet."""
    return args.truth if getattr(args, "truth", None) is not None else args.prep_dir / "truth.parquet"


def _mining_precision(args) -> int:
    check_output(args.out_md, "--out-md")
    check_output(args.out_parquet, "--out-parquet")
    boxes_path = args.prep_dir / "test3d.parquet"
    boxes = read_table(boxes_path, {"volume_id": "text", "split": "text", **dict.fromkeys(
        ["x1", "y1", "z1", "x2", "y2", "z2"], "number")}, "fully annotated 3D boxes, test3d.parquet",
        boxes=["x1", "y1", "z1", "x2", "y2", "z2"])
    boxes = boxes[boxes["split"] == args.split].reset_index(drop=True)
    if boxes.empty:
        raise InputError(f"{boxes_path}: no 3D boxes in split {args.split!r}: nothing to measure mining against "
                         f"(real DeepLesion: lens import-manual-3d)")
    # each 3D box one lesion, in the audit's truth form (its key slice: the box's middle)
    truth = boxes.assign(instance_id=[f"{v}/{i}" for i, v in enumerate(boxes["volume_id"])],
                         z=np.floor((boxes["z1"] + boxes["z2"]) / 2).astype(np.int64))
    mined = {"cross_slice": _mined(args.cross_slice, "cross-slice mining table", ["mined_cross_slice"]),
             "intra_patient": _mined(args.intra_patient, "intra-patient mining table", ["mined_intra_patient"])}
    table = audit_mining(_lesions(args.prep_dir / "lesions.parquet"), mined, truth,
                         volumes=_volumes(args.prep_dir / "volumes.parquet"), split=args.split,
                         pad_px=annotation_pad_px(args.prep_dir))
    table = table[table["strategy"].isin(["cross_slice", "intra_patient"])].reset_index(drop=True)
    cols = ["strategy", "boxes", "tp", "duplicate", "fp", "precision", "recall_missing_cum", "new_instances"]
    write_parquet(table[cols], args.out_parquet, {"split": args.split, "truth": "test3d.parquet"})
    lines = [f"# Mining precision on the {args.split} split (its fully annotated 3D boxes, no hidden truth)", "",
             "| strategy | boxes | precision | recall of missing lesion-slices (cumulative) | new 3D lesions |",
             "|---|---:|---:|---:|---:|"]
    for r in table.itertuples():
        lines.append(f"| {r.strategy} | {r.boxes} | {100 * r.precision:.1f} % | {100 * r.recall_missing_cum:.1f} % "
                     f"| {r.new_instances} |")
    write_text(args.out_md, "\n".join(lines) + "\n")
    log.info("mining precision on %s:\n%s", args.split, table[cols].to_string(index=False))
    return 0


def _volume_dataset(path: Path, lesions) -> dict:
    """volume_id -> dataset name, from the prep folder's volumes.parquet beside lesions.parquet."""
    vols = Path(path).with_name("volumes.parquet")
    if vols.exists():
        v = _volumes(vols, {"dataset": "text"})
        return dict(zip(v["volume_id"], v["dataset"]))
    return dict(zip(lesions["volume_id"], lesions["dataset"]))


def _build_tracklets(args) -> int:
    check_output(args.out)
    frames = []
    for path in args.proposals:
        # a box clipped at the image border may be empty; one that is kept must not be (the kernel's IoU)
        df = _slice_table(path, PROPOSALS_2D, "2D proposal table of lens propose", boxes=BOX, empty_boxes=True)
        empty = ((df["score"] >= args.min_score) & ((df["x2"] <= df["x1"]) | (df["y2"] <= df["y1"]))).to_numpy()
        if empty.any():
            i = int(empty.argmax())
            raise InputError(f"{path}: row {i}: empty box {df.loc[i, BOX].tolist()} scores "
                             f"{df['score'].iloc[i]} >= --min-score {args.min_score}")
        frames.append(df)
    props = _train_only(_concat(frames), args.volumes)
    props = props[props["score"] >= args.min_score].reset_index(drop=True)
    trk = tracklets_from_table(props, args.theta)
    write_parquet(trk, args.out, {"theta": args.theta, "min_score": args.min_score})
    log.info("%d proposals -> %d tracklets", len(trk), trk["tracklet_id"].nunique() if len(trk) else 0)
    return 0


def _cross_slice(args) -> int:
    check_output(args.out)
    if args.extent_ratio is not None and args.volumes is None:
        raise InputError("--extent-ratio needs --volumes (pixel and slice spacing)")
    if args.split != "train" and args.volumes is None:
        raise InputError(f"--split {args.split} needs --volumes (which volumes are in it)")
    tracklets = _train_only(_tracklets(args.tracklets), args.volumes, args.split)
    lesions = _lesions(args.lesions)
    if args.extent_ratio is not None:
        sp = _volumes(args.volumes, {"spacing_x": "number", "spacing_z": "number"}).set_index("volume_id")
        unknown = ~lesions["volume_id"].isin(sp.index).to_numpy()
        if unknown.any():
            i = int(unknown.argmax())
            raise InputError(f"{args.lesions}: row {i}: volume {lesions['volume_id'].iloc[i]!r} is not in "
                             f"{args.volumes}")
        sp = sp[["spacing_x", "spacing_z"]].loc[lesions["volume_id"]].to_numpy()
        long_mm = np.maximum(lesions["x2"] - lesions["x1"], lesions["y2"] - lesions["y1"]).to_numpy() * sp[:, 0]
        lesions = lesions.assign(max_dz=np.ceil(args.extent_ratio * long_mm / sp[:, 1]))
    mined = mine_cross_slice(tracklets, lesions, args.theta)
    write_mining_table(mined, args.out, {"theta": args.theta, "rule": "mine_cross_slice"})
    log.info("cross-slice propagation mined %d boxes", len(mined))
    return 0


def _cross_dataset(args) -> int:
    check_output(args.out)
    experts = tuple(f"score_{e}" for e in args.experts.split(",") if e and e != "none")
    # a box clipped at the image border may be empty, never inverted: an inverted one would become an
    # uncertain region that covers nothing
    props = _train_only(_concat([_slice_table(p, {**PROPOSALS_2D, **dict.fromkeys(experts, "number")},
                                              "2D proposal table of lens propose", boxes=BOX, empty_boxes=True)
                                 for p in args.proposals]), args.volumes)
    labels = _concat([read_table(p, MINED, "label table: annotations or mined boxes", boxes=BOX)
                      for p in args.labels])
    if not experts:  # a single-dataset model has no single-type expert to mine with
        write_mining_table(props.iloc[:0].assign(label_kind="uncertain"), args.out,
                           {"sigma": args.sigma, "experts": [], "rule": "mine_cross_dataset"})
        log.info("cross-dataset mining: no single-type expert in this model, nothing mined")
        return 0
    unc = mine_uncertain(props, labels, experts, args.sigma)
    write_mining_table(unc, args.out, {"sigma": args.sigma, "experts": list(experts), "rule": "mine_cross_dataset"})
    log.info("cross-dataset mining: %d uncertain boxes", len(unc))
    return 0


def _merge(args) -> int:
    check_output(args.out)
    lesions = _lesions(args.lesions, {"dataset": "any"})
    bad = ~lesions["label_kind"].isin(GT_LIKE_KINDS + IGNORE_KINDS).to_numpy()
    if bad.any():
        i = int(bad.argmax())
        raise InputError(f"{args.lesions}: row {i}: unknown label_kind {lesions['label_kind'].iloc[i]!r}")
    mined = [_mined(p, "cross-slice or intra-patient mining table", GT_LIKE_KINDS) for p in args.mined]
    unc = _mined(args.uncertain, "uncertain table of lens mine-cross-dataset", ["uncertain"]) \
        if args.uncertain else None
    review = None
    if args.review:
        review = read_review(args.review)
        log.info("%s: %s", args.review, json.dumps(review["decision"].value_counts().to_dict()))
    try:
        labels = merge_round2(lesions, mined, unc, args.theta, review=review)
    except UnknownVerdict as e:
        raise InputError(f"{args.review}: {e}") from None
    # round-2 training takes a dataset's rows by their `dataset` column: boxes mined from proposals
    # (uncertain ones above all) carry the dataset of the volume they were found in
    known = labels["dataset"].where(labels["dataset"].astype(str).str.len() > 0)  # "" = not known
    labels["dataset"] = known.fillna(labels["volume_id"].map(_volume_dataset(args.lesions, lesions)))
    if labels["dataset"].isna().any():
        bad = labels.loc[labels["dataset"].isna(), "volume_id"].iloc[0]
        raise InputError(f"{args.lesions}: no dataset known for volume {bad!r} of the mined labels")
    meta = {"theta": args.theta, "mined": [str(p) for p in args.mined],
            "uncertain": str(args.uncertain) if args.uncertain else None}
    if review is not None:  # only then: without verdicts the table stays byte-identical to an unreviewed merge
        meta["review"] = {"path": str(args.review), **review["decision"].value_counts().to_dict()}
    write_mining_table(labels, args.out, meta)
    counts = labels["label_kind"].value_counts().to_dict()
    log.info("labels_round2: %s; %d training slices", json.dumps(counts), len(training_slices(labels)))
    return 0
