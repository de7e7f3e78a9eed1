"""Which lesion-embedding blocks find the same lesion again within a patient (Sec. V-B)?

On a preprocessed DeepLesion-like corpus: stand-in proposals from the truth (jittered boxes + false
positives, ``delta_audit.proposals_from_truth``) are grouped into tracklets; the appearance encoder is
trained on the *train* split from annotations and tracklets only; then on the *validation* split each
tracklet is matched to its nearest annotation in another volume of its patient, and the truth
instance ids (evaluation only) say whether the match is right. Printed per embedding:

- top-1: share of findable tracklets (their lesion is annotated in another volume) whose nearest
  annotation is that lesion;
- AP: average precision of all (annotation, tracklet) pairs of a patient, other volume, ranked by
  distance, against "same instance";
- at --delta (the paper's 0.15): precision and recall. An audit of the embedding against the truth: it
  chooses nothing (the embedding's blocks have equal, fixed weights).

    python benchmarks/embedding_ablation.py --prep results/prep/deeplesion [--steps 300] [--seed 0]

Bigger validation splits give steadier numbers: ``lens synthesize --config`` with
``corpus: {deeplesion: {patients: 80}}``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd


def average_precision(dist: np.ndarray, same: np.ndarray) -> float:
    if not same.any():
        return float("nan")
    order = np.argsort(dist, kind="stable")
    s = same[order]
    hits = np.cumsum(s)
    return float((hits[s] / (np.flatnonzero(s) + 1)).mean())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prep", required=True, type=Path, help="preprocessed DeepLesion-like folder (with truth.parquet)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--delta", type=float, default=0.15, help="the delta to report precision/recall at (paper: 0.15)")
    args = ap.parse_args(argv)

    from lens_core.mining import delta_audit, embedding
    from lens_core.mining.audit import annotation_pad_px, match_truth, truth_slices
    from lens_core.mining.embed_model import EncoderTraining
    from lens_core.mining.intra_patient import match_intra_patient
    from lens_core.tracklets import tracklets_from_table

    prep = args.prep
    vols = pd.read_parquet(prep / "volumes.parquet")
    ann = pd.read_parquet(prep / "lesions.parquet")
    ann = ann[ann["label_kind"] == "gt"].reset_index(drop=True)
    truth = pd.read_parquet(prep / "truth.parquet")
    split = vols.set_index("volume_id")["split"]
    props = delta_audit.proposals_from_truth(truth, prep, seed=args.seed)
    trk = tracklets_from_table(props, 0.5)
    print(f"corpus {prep}: {len(vols)} volumes, {len(ann)} annotations, {len(truth)} truth lesions; "
          f"{len(props)} stand-in proposals, {trk['tracklet_id'].nunique()} tracklets")

    t0 = time.perf_counter()
    tr = lambda df: df[df["volume_id"].map(split) == "train"]  # noqa: E731
    va = lambda df: df[df["volume_id"].map(split) == "val"].reset_index(drop=True)  # noqa: E731
    groups = embedding.training_groups(tr(ann), tr(trk))
    cfg = EncoderTraining(steps=args.steps, seed=args.seed, threads=args.threads)
    model, cfg, hist = embedding.fit_encoder(groups, prep, cfg=cfg)
    t_train = time.perf_counter() - t0
    print(f"encoder: {groups['group'].nunique()} groups / {len(groups)} boxes (train split), {cfg.steps} steps "
          f"in {t_train:.1f} s; NT-Xent loss {np.mean([h['loss'] for h in hist[:20]]):.2f} -> "
          f"{np.mean([h['loss'] for h in hist[-20:]]):.2f}")

    a_val, t_val = va(ann), va(trk)
    centres = embedding.tracklet_centres(t_val)
    pad = annotation_pad_px(prep)
    sl = truth_slices(truth, pad)
    a_inst = match_truth(a_val, sl)["instance_id"].to_numpy()
    c_inst = match_truth(centres, sl)["instance_id"].to_numpy()
    print(f"validation: {a_val['patient_id'].nunique()} patients, {len(a_val)} annotations, {len(centres)} tracklets")

    variants = [("(a) position + size", "position"), ("(b) appearance only", "appearance"),
                ("(c) combined (the default: equal weight)", "learned")]
    rows = []
    for name, source in variants:
        _, ea = embedding.embed(a_val, prep, source, encoder=model)
        _, et = embedding.embed(centres, prep, source, encoder=model)
        pat, _ = pd.factorize(pd.concat([a_val["patient_id"], centres["patient_id"]]).astype(str))
        vol, _ = pd.factorize(pd.concat([a_val["volume_id"], centres["volume_id"]]).astype(str))
        n = len(a_val)
        ai, ti, d = match_intra_patient(pat[:n], vol[:n], ea, pat[n:], vol[n:], et, 1e9)
        same = (c_inst[ti] != "") & (c_inst[ti] == a_inst[ai])
        curve = delta_audit.delta_curve(a_val, ea, centres, et, t_val, truth, pad_px=pad, deltas=[args.delta])
        m, nf = delta_audit.nearest_matches(a_val, ea, centres, et, t_val, truth, pad_px=pad)
        findable = m[m["tracklet_instance"] != ""]
        # top-1 among findable tracklets (whose instance is annotated elsewhere in the patient)
        top1 = findable["correct"].sum() / nf if nf else float("nan")
        at = curve.iloc[0]
        rows.append({"embedding": name, "dim": ea.shape[1], "top-1": top1, "pair AP": average_precision(d, same),
                     "delta": args.delta, "precision@delta": at["precision"], "recall@delta": at["recall"]})
    out = pd.DataFrame(rows)
    print(f"\n{int(nf)} findable validation tracklets; pairs: {len(d)} (same instance: {int(same.sum())})")
    print(out.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
