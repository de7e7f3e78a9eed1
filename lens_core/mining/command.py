"""`lens` mining steps (paper Sec. V): one subcommand per strategy, each writing its own artifact."""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("lens.mining")


def _read(paths) -> "pd.DataFrame":  # noqa: F821
    import pandas as pd

    frames = [pd.read_parquet(p) for p in paths]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.read_parquet(paths[0])


def _train_only(df, volumes_path: Path | None):
    """Mining runs on the training split only (the paper mines DeepLesion's training set)."""
    import pandas as pd

    if volumes_path is None:
        return df
    vols = pd.read_parquet(volumes_path)
    keep = set(vols.loc[vols["split"] == "train", "volume_id"])
    return df[df["volume_id"].isin(keep)].reset_index(drop=True)


def add_parser(sub) -> None:
    p = sub.add_parser("build-tracklets", help="group 2D proposals across adjacent slices (Sec. V-A)",
                       description="Group 2D proposals of a volume on adjacent slices with IoU > theta into "
                                   "tracklets (numba kernel); a box that joins nothing is a tracklet of one.")
    p.add_argument("--proposals", nargs="+", type=Path, required=True, help="2D proposal tables (shards)")
    p.add_argument("--volumes", type=Path, help="volumes.parquet: keep the training split only")
    p.add_argument("--theta", type=float, default=0.5)
    p.add_argument("--min-score", type=float, default=0.3, help="proposals below this fused score are dropped")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_build_tracklets)

    p = sub.add_parser("mine-cross-slice", help="cross-slice box propagation from key-slice annotations (Sec. V-A)")
    p.add_argument("--tracklets", type=Path, required=True)
    p.add_argument("--lesions", type=Path, required=True, help="the dataset's lesions.parquet")
    p.add_argument("--volumes", type=Path, help="volumes.parquet: keep the training split only")
    p.add_argument("--theta", type=float, default=0.5)
    p.add_argument("--extent-ratio", type=float, default=None,
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
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cross_dataset)

    p = sub.add_parser("merge-labels", help="annotations + mined boxes (ground truth) + uncertain boxes (ignore)")
    p.add_argument("--lesions", type=Path, required=True)
    p.add_argument("--mined", nargs="*", type=Path, default=[], help="mined tables, highest priority first")
    p.add_argument("--uncertain", type=Path)
    p.add_argument("--theta", type=float, default=0.5)
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
    p.add_argument("--steps", type=int, default=300, help="encoder training steps (learned)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--theta", type=float, default=0.5)
    p.add_argument("--encoder-out", type=Path, help="where to keep the trained encoder (learned)")
    p.add_argument("--out", type=Path, required=True, help="embeddings.h5")
    p.set_defaults(func=_embed)

    p = sub.add_parser("calibrate-delta", help="choose delta from precision/recall on the validation split (Fig. 5)",
                       description="Sweep the intra-patient distance threshold delta on the validation split of the "
                                   "built-in corpus (correct = same hidden-truth lesion instance) and pick the largest "
                                   "delta whose precision is at least --min-precision.")
    p.add_argument("--prep-dir", type=Path, required=True)
    p.add_argument("--tracklets", type=Path, required=True)
    p.add_argument("--embeddings", type=Path, required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--min-precision", type=float, default=0.9)
    p.add_argument("--fallback", type=float, default=0.15,
                   help="delta when the split has fewer than --min-pairs pairs to calibrate on")
    p.add_argument("--min-pairs", type=int, default=20,
                   help="findable pairs (a lesion annotated in one volume, detected in another) needed to trust "
                        "the curve: a precision measured on a handful of pairs says little")
    p.add_argument("--theta", type=float, default=0.5)
    p.add_argument("--out", type=Path, required=True, help="delta.json (+ .parquet curve and .png plot beside it)")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("mine-intra-patient", help="intra-patient lesion matching (Sec. V-B)")
    p.add_argument("--prep-dir", type=Path, required=True)
    p.add_argument("--tracklets", type=Path, required=True)
    p.add_argument("--embeddings", type=Path, required=True)
    p.add_argument("--delta", required=True, help="a number, or delta.json from calibrate-delta")
    p.add_argument("--theta", type=float, default=0.5)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_intra_patient)

    p = sub.add_parser("audit-mining", help="mined boxes against the built-in corpus's hidden truth (+ montage)")
    p.add_argument("--prep-dir", type=Path, required=True)
    p.add_argument("--cross-slice", type=Path, required=True)
    p.add_argument("--intra-patient", type=Path, required=True)
    p.add_argument("--uncertain", type=Path, required=True)
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--out-parquet", type=Path, required=True)
    p.add_argument("--montage", type=Path, required=True)
    p.add_argument("--n-review", type=int, default=24)
    p.set_defaults(func=_audit)


def _split_volumes(prep_dir: Path, split: str) -> set:
    import pandas as pd

    vols = pd.read_parquet(prep_dir / "volumes.parquet")
    return set(vols.loc[vols["split"] == split, "volume_id"])


def _embed(args) -> int:
    import pandas as pd

    from .embedding import (box_keys, embed, fit_encoder, training_groups, tracklet_centres,
                            write_embeddings_h5)

    lesions = pd.read_parquet(args.prep_dir / "lesions.parquet")
    lesions = lesions[lesions["label_kind"] == "gt"]
    trk = pd.read_parquet(args.tracklets)
    centres = tracklet_centres(trk) if len(trk) else trk
    boxes = pd.concat([lesions, centres], ignore_index=True)
    config = {"source": str(args.source), "theta": args.theta}
    encoder = None
    if args.source in ("learned", "appearance"):
        from .embed_model import EncoderTraining, save_encoder

        train = _split_volumes(args.prep_dir, "train")
        groups = training_groups(lesions[lesions["volume_id"].isin(train)], trk[trk["volume_id"].isin(train)],
                                 args.theta)
        cfg = EncoderTraining(steps=args.steps, seed=args.seed, threads=args.threads or EncoderTraining.threads)
        encoder, cfg, history = fit_encoder(groups, args.prep_dir, cfg=cfg, log=log.info)
        config["encoder"] = cfg.to_dict()
        if args.encoder_out:
            save_encoder(encoder, cfg, args.encoder_out)
    keys, emb = embed(boxes, args.prep_dir, args.source, encoder=encoder)
    write_embeddings_h5(args.out, box_keys(boxes) if len(keys) != len(boxes) else keys, emb, config)
    log.info("embedded %d annotations and %d tracklet centres (d = %d)", len(lesions), len(centres), emb.shape[1])
    return 0


def _val_tables(args, split):
    """Annotations, tracklet centres and tracklet boxes of one split, with their embeddings."""
    import pandas as pd

    from .embedding import lookup, read_embeddings_h5, tracklet_centres

    keys, emb, _ = read_embeddings_h5(args.embeddings)
    vols = _split_volumes(args.prep_dir, split)
    lesions = pd.read_parquet(args.prep_dir / "lesions.parquet")
    lesions = lesions[(lesions["label_kind"] == "gt") & lesions["volume_id"].isin(vols)].reset_index(drop=True)
    trk = pd.read_parquet(args.tracklets)
    trk = trk[trk["volume_id"].isin(vols)].reset_index(drop=True)
    centres = tracklet_centres(trk).reset_index(drop=True) if len(trk) else trk
    return (lesions, lookup(keys, emb, lesions, str(args.embeddings)), centres,
            lookup(keys, emb, centres, str(args.embeddings)) if len(centres) else emb[:0], trk)


def _calibrate(args) -> int:
    import pandas as pd

    from ..io import atomic_path, write_parquet
    from .audit import annotation_pad_px
    from .calibrate import calibrate_delta, plot_calibration

    truth_path = args.prep_dir / "truth.parquet"
    if not truth_path.exists():
        raise FileNotFoundError(f"{truth_path}: calibration needs the built-in corpus's truth; "
                                "set mining.delta to a number for real data")
    lesions, ann_emb, centres, trk_emb, trk = _val_tables(args, args.split)
    truth = pd.read_parquet(truth_path)
    truth = truth[truth["split"] == args.split]
    delta, curve = calibrate_delta(lesions, ann_emb, centres, trk_emb, trk, truth,
                                   min_precision=args.min_precision, pad_px=annotation_pad_px(args.prep_dir),
                                   iou_threshold=args.theta)
    n_pairs = int(curve.attrs.get("n_findable", 0))
    met = bool(curve.attrs.get("met_target", False))
    fallback = n_pairs < args.min_pairs
    if fallback:
        log.warning("the %s split has %d findable pairs (< %d): delta falls back to %.3f (calibrated %.3f)",
                    args.split, n_pairs, args.min_pairs, args.fallback, delta)
        delta = args.fallback
    base = args.out.with_suffix("")
    write_parquet(curve, base.with_suffix(".parquet"), {"split": args.split})
    plot_calibration(curve, delta, base.with_suffix(".png"),
                     title=f"intra-patient matching on the {args.split} split (delta = {delta:.3f})")
    result = {"delta": float(delta), "met_target": met, "n_findable": n_pairs, "min_precision": args.min_precision,
              "split": args.split, "rule": curve.attrs.get("rule", ""), "fallback_used": fallback,
              "min_pairs": args.min_pairs}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    log.info("delta = %.4f (%s)", delta, json.dumps(result))
    return 0


def _intra_patient(args) -> int:
    from .intra_patient import mine_intra_patient
    from .schema import write_mining_table

    try:
        delta = float(args.delta)
    except ValueError:
        delta = float(json.loads(Path(args.delta).read_text())["delta"])
    lesions, ann_emb, centres, trk_emb, trk = _val_tables(args, "train")
    mined = mine_intra_patient(lesions, ann_emb, centres, trk_emb, trk, delta, args.theta)
    write_mining_table(mined, args.out, {"delta": delta, "theta": args.theta, "rule": "mine_intra_patient"})
    log.info("intra-patient matching (delta %.3f) mined %d boxes from %d tracklets", delta, len(mined),
             mined["tracklet_id"].nunique() if len(mined) else 0)
    return 0


def _audit(args) -> int:
    import pandas as pd

    from .audit import _labeled_slice_mask, annotation_pad_px, audit_mining, classify_boxes, truth_slices, write_audit
    from .montage import sample_for_review, write_montage

    lesions = pd.read_parquet(args.prep_dir / "lesions.parquet")
    truth = pd.read_parquet(args.prep_dir / "truth.parquet")
    volumes = pd.read_parquet(args.prep_dir / "volumes.parquet")
    mined = {"cross_slice": pd.read_parquet(args.cross_slice), "intra_patient": pd.read_parquet(args.intra_patient),
             "uncertain": pd.read_parquet(args.uncertain)}
    pad = annotation_pad_px(args.prep_dir)
    table = audit_mining(lesions, mined, truth, volumes=volumes, split="train", pad_px=pad)
    write_audit(table, args.out_md, args.out_parquet)
    review = sample_for_review(pd.concat([m for m in mined.values() if len(m)] or [mined["cross_slice"]],
                                         ignore_index=True), n=args.n_review)
    slices = truth_slices(truth, pad)
    verdict = (classify_boxes(review, slices, _labeled_slice_mask(lesions, slices, 0.3))["verdict"].to_numpy()
               if len(review) else None)
    write_montage(review, args.prep_dir, args.montage, verdict=verdict,
                  title="mined lesions for review (green: a real missed lesion, orange: already labeled, red: FP)")
    log.info("mining audit:\n%s", table.to_string(index=False))
    return 0


def _volume_dataset(path: Path, lesions) -> dict:
    """volume_id -> dataset name, from the prep folder's volumes.parquet beside lesions.parquet."""
    import pandas as pd

    vols = Path(path).with_name("volumes.parquet")
    if vols.exists():
        v = pd.read_parquet(vols, columns=["volume_id", "dataset"])
        return dict(zip(v["volume_id"], v["dataset"]))
    return dict(zip(lesions["volume_id"], lesions["dataset"]))


def _build_tracklets(args) -> int:
    from ..io import write_parquet
    from .tracklets import tracklets_from_table

    props = _train_only(_read(args.proposals), args.volumes)
    props = props[props["score"] >= args.min_score].reset_index(drop=True)
    trk = tracklets_from_table(props, args.theta)
    write_parquet(trk, args.out, {"theta": args.theta, "min_score": args.min_score})
    log.info("%d proposals -> %d tracklets", len(trk), trk["tracklet_id"].nunique() if len(trk) else 0)
    return 0


def _cross_slice(args) -> int:
    import numpy as np
    import pandas as pd

    from .cross_slice import mine_cross_slice
    from .schema import write_mining_table

    tracklets = _train_only(pd.read_parquet(args.tracklets), args.volumes)
    lesions = pd.read_parquet(args.lesions)
    if args.extent_ratio is not None:
        if args.volumes is None:
            raise ValueError("--extent-ratio needs --volumes (pixel and slice spacing)")
        sp = pd.read_parquet(args.volumes).set_index("volume_id")[["spacing_x", "spacing_z"]]
        sp = sp.loc[lesions["volume_id"]].to_numpy()
        long_mm = np.maximum(lesions["x2"] - lesions["x1"], lesions["y2"] - lesions["y1"]).to_numpy() * sp[:, 0]
        lesions = lesions.assign(max_dz=np.ceil(args.extent_ratio * long_mm / sp[:, 1]))
    mined = mine_cross_slice(tracklets, lesions, args.theta)
    write_mining_table(mined, args.out, {"theta": args.theta, "rule": "mine_cross_slice"})
    log.info("cross-slice propagation mined %d boxes", len(mined))
    return 0


def _cross_dataset(args) -> int:
    from .cross_dataset import mine_uncertain
    from .schema import write_mining_table

    props = _train_only(_read(args.proposals), args.volumes)
    labels = _read(args.labels)
    experts = tuple(f"score_{e}" for e in args.experts.split(",") if e and e != "none")
    if not experts:  # a single-dataset model has no single-type expert to mine with
        write_mining_table(props.iloc[:0].assign(label_kind="uncertain"), args.out,
                           {"sigma": args.sigma, "experts": [], "rule": "mine_cross_dataset"})
        log.info("cross-dataset mining: no single-type expert in this model, nothing mined")
        return 0
    missing = [c for c in experts if c not in props.columns]
    if missing:
        raise ValueError(f"{args.proposals[0]}: no column(s) {missing}; the model's experts are "
                         f"{[c for c in props.columns if c.startswith('score_')]}")
    unc = mine_uncertain(props, labels, experts, args.sigma)
    write_mining_table(unc, args.out, {"sigma": args.sigma, "experts": list(experts), "rule": "mine_cross_dataset"})
    log.info("cross-dataset mining: %d uncertain boxes", len(unc))
    return 0


def _merge(args) -> int:
    import pandas as pd

    from .merge import UnknownVerdict, merge_round2, training_slices
    from .schema import write_mining_table

    lesions = pd.read_parquet(args.lesions)
    mined = [pd.read_parquet(p) for p in args.mined]
    unc = pd.read_parquet(args.uncertain) if args.uncertain else None
    review = None
    if args.review:
        from ..review.verdicts import read_review

        review = read_review(args.review)
        log.info("%s: %s", args.review, json.dumps(review["decision"].value_counts().to_dict()))
    try:
        labels = merge_round2(lesions, mined, unc, args.theta, review=review)
    except UnknownVerdict as e:
        raise ValueError(f"{args.review}: {e}") from None
    # round-2 training takes a dataset's rows by their `dataset` column: boxes mined from proposals
    # (uncertain ones above all) carry the dataset of the volume they were found in
    known = labels["dataset"].where(labels["dataset"].astype(str).str.len() > 0)  # "" = not known
    labels["dataset"] = known.fillna(labels["volume_id"].map(_volume_dataset(args.lesions, lesions)))
    if labels["dataset"].isna().any():
        bad = labels.loc[labels["dataset"].isna(), "volume_id"].iloc[0]
        raise ValueError(f"{args.lesions}: no dataset known for volume {bad!r} of the mined labels")
    meta = {"theta": args.theta, "mined": [str(p) for p in args.mined],
            "uncertain": str(args.uncertain) if args.uncertain else None}
    if review is not None:  # only then: without verdicts the table stays byte-identical to an unreviewed merge
        meta["review"] = {"path": str(args.review), **review["decision"].value_counts().to_dict()}
    write_mining_table(labels, args.out, meta)
    counts = labels["label_kind"].value_counts().to_dict()
    log.info("labels_round2: %s; %d training slices", json.dumps(counts), len(training_slices(labels)))
    return 0
