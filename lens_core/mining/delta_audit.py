"""Audit of delta, the intra-patient matching distance (paper Sec. V-B, Fig. 5's precision analogue).

delta is the paper's 0.15 (config ``mining.delta``), or a value of the Fig. 5 sweep chosen on the
validation split's detection sensitivity; this module decides nothing. On the validation split, every
tracklet is matched as :func:`mine_intra_patient` would: to its nearest annotation in another volume
of the patient, skipping tracklets that overlap an annotation of their own volume. A match is correct
when the tracklet and the annotation show the same truth lesion instance (``instance_id``: the hidden
truth, so the curve is an audit read by the report only). Sweeping delta gives precision (correct /
matched) and recall (correct / tracklets whose lesion is annotated in another volume), with the
configured delta marked.

Also here: :func:`proposals_from_truth`, stand-in detector proposals for development and tests until
the detector's round-1 proposals exist (they come from the truth, so they must never feed training).
"""

from __future__ import annotations

import textwrap

from pathlib import Path

import numpy as np
import pandas as pd

from lens_core.io import read_table, save_figure
from lens_core.mining.audit import annotation_pad_px, match_truth, truth_slices
from lens_core.mining.intra_patient import match_intra_patient
from lens_core.mining.overlap import same_slice_iou

__all__ = ["proposals_from_truth", "nearest_matches", "precision_recall_curve", "delta_curve",
           "plot_delta_audit"]

BOX_COLS = ["x1", "y1", "x2", "y2"]
EXPERT_OF_TYPE = {"lung_nodule": "luna", "liver_tumor": "lits", "lymph_node": "nihln"}


def proposals_from_truth(truth: pd.DataFrame, prep_dir: str | Path, *, jitter_px: float = 1.0,
                         fp_per_slice: float = 0.3, miss_p: float = 0.05, seed: int = 0,
                         experts=("deeplesion", "luna", "lits", "nihln")) -> pd.DataFrame:
    """Stand-in 2D proposals (docs/artifacts.md columns) for development and tests.

    Every truth lesion-slice (:func:`~lens_core.mining.audit.truth_slices`, padded like the dataset's
    boxes) gives a box jittered by ``jitter_px`` (s.d.) with score in [0.6, 1.0), dropped with
    probability ``miss_p``; plus false positives, ``fp_per_slice`` per slice on average, placed inside
    the image and lasting 1-4 slices (detector FPs persist across slices) with score in [0.05, 0.6).
    ``score_<expert>``: the single-type expert of the lesion's type scores it like ``score``, the others
    low; the DeepLesion expert is ``score``.
    """
    rng = np.random.default_rng(seed)
    prep_dir = Path(prep_dir)
    vols = read_table(prep_dir / "volumes.parquet", ["volume_id", "n_slices", "width", "height"], "volume table")
    pad = annotation_pad_px(prep_dir)
    sl = truth_slices(truth, pad)
    sl = sl[sl["volume_id"].isin(set(vols["volume_id"]))].reset_index(drop=True)
    sl = sl[rng.random(len(sl)) >= miss_p].reset_index(drop=True)
    b = sl[BOX_COLS].to_numpy(float) + rng.normal(0, jitter_px, (len(sl), 4))
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1.0)
    types = truth["lesion_type"].astype(str).to_numpy()[sl["truth_row"].to_numpy()] if "lesion_type" in truth else \
        np.full(len(sl), "unknown")
    tp = pd.DataFrame({"volume_id": sl["volume_id"], "z": sl["z"].astype(np.int64),
                       "x1": b[:, 0], "y1": b[:, 1], "x2": b[:, 2], "y2": b[:, 3],
                       "score": rng.uniform(0.6, 1.0, len(sl)), "_type": types})
    fps = []
    for v in vols.itertuples(index=False):
        n_fp = rng.poisson(fp_per_slice * v.n_slices / 2.5)  # each FP lasts 2.5 slices on average
        for _ in range(n_fp):
            w, h = rng.uniform(8, 20, 2)
            x1, y1 = rng.uniform(0, max(v.width - w, 1)), rng.uniform(0, max(v.height - h, 1))
            z0, length, s = int(rng.integers(v.n_slices)), int(rng.integers(1, 5)), rng.uniform(0.05, 0.6)
            for z in range(z0, min(z0 + length, v.n_slices)):
                j = rng.normal(0, jitter_px, 4)
                fps.append((v.volume_id, z, x1 + j[0], y1 + j[1], x1 + w + j[2], y1 + h + j[3], s, "fp"))
    fp = pd.DataFrame(fps, columns=["volume_id", "z", "x1", "y1", "x2", "y2", "score", "_type"])
    out = pd.concat([tp, fp], ignore_index=True)
    for e in experts:
        if e == "deeplesion":
            out[f"score_{e}"] = out["score"]
        else:
            mine = out["_type"].map(EXPERT_OF_TYPE).to_numpy() == e
            out[f"score_{e}"] = np.where(mine, out["score"], rng.uniform(0.0, 0.3, len(out)))
    ids = vols.set_index("volume_id")[["patient_id", "study_id", "series_id"]]
    out = out.drop(columns="_type").join(ids, on="volume_id")
    front = ["volume_id", "patient_id", "study_id", "series_id", "z", *BOX_COLS]
    out = out[front + [c for c in out.columns if c not in front]]
    return out.sort_values(["volume_id", "z", "x1"], kind="stable").reset_index(drop=True)


def nearest_matches(annotations: pd.DataFrame, ann_emb: np.ndarray, centres: pd.DataFrame, trk_emb: np.ndarray,
                    tracklet_boxes: pd.DataFrame, truth: pd.DataFrame, *, pad_px=0.0, iou_threshold: float = 0.5,
                    truth_iou: float = 0.3) -> tuple[pd.DataFrame, int]:
    """Per tracklet (one row of ``centres``, embedded as ``trk_emb``): its nearest annotation in another
    volume of its patient, the distance and whether both are the same truth instance; plus the number
    of tracklets whose lesion is annotated in another volume (the recall denominator).

    Tracklets overlapping an annotation of their own volume (IoU > iou_threshold on some slice) are
    left out, as in :func:`~lens_core.mining.intra_patient.mine_intra_patient`.
    """
    ann = annotations.reset_index(drop=True)
    trk = centres.reset_index(drop=True)
    boxes = tracklet_boxes.reset_index(drop=True)
    known = same_slice_iou(boxes, ann, b_span=True)
    known = set(boxes["tracklet_id"].to_numpy()[known["a_row"].to_numpy()[known["iou"].to_numpy() > iou_threshold]])
    free = ~trk["tracklet_id"].isin(known).to_numpy()
    pat, _ = pd.factorize(pd.concat([ann["patient_id"], trk["patient_id"]], ignore_index=True).astype(str))
    vol, _ = pd.factorize(pd.concat([ann["volume_id"], trk["volume_id"]], ignore_index=True).astype(str))
    n = len(ann)
    ai, ti, d = match_intra_patient(pat[:n], vol[:n], ann_emb, pat[n:], vol[n:], trk_emb, 1e9)
    pairs = pd.DataFrame({"ann_row": ai, "trk_row": ti, "distance": d})
    pairs = pairs[free[ti]]
    best = pairs.sort_values(["trk_row", "distance", "ann_row"], kind="stable").drop_duplicates("trk_row")

    sl = truth_slices(truth, pad_px)
    ann_inst = match_truth(ann, sl, truth_iou)["instance_id"].to_numpy()
    trk_inst = match_truth(trk, sl, truth_iou)["instance_id"].to_numpy()
    a_rows, t_rows = best["ann_row"].to_numpy(), best["trk_row"].to_numpy()
    correct = (trk_inst[t_rows] != "") & (trk_inst[t_rows] == ann_inst[a_rows])
    out = pd.DataFrame({"tracklet_id": trk["tracklet_id"].to_numpy()[t_rows], "ann_row": a_rows,
                        "distance": best["distance"].to_numpy(), "correct": correct,
                        "tracklet_instance": trk_inst[t_rows], "annotation_instance": ann_inst[a_rows]})
    # findable: a free tracklet of a real lesion annotated in another volume of the same patient
    ann_keys = set(zip(ann["patient_id"].astype(str), ann_inst, ann["volume_id"].astype(str)))
    by_inst: dict[tuple, set] = {}
    for p, i, v in ann_keys:
        if i:
            by_inst.setdefault((p, i), set()).add(v)
    findable = sum(1 for p, i, v, f in zip(trk["patient_id"].astype(str), trk_inst, trk["volume_id"].astype(str), free)
                   if f and i and (by_inst.get((p, i), set()) - {v}))
    return out, int(findable)


def precision_recall_curve(matches: pd.DataFrame, n_findable: int, deltas) -> pd.DataFrame:
    """``delta, matched, correct, precision, recall`` for each delta (match = distance < delta)."""
    d = matches["distance"].to_numpy(float)
    ok = matches["correct"].to_numpy(bool)
    rows = []
    for delta in np.asarray(deltas, float):
        m = d < delta
        k, c = int(m.sum()), int((m & ok).sum())
        rows.append({"delta": float(delta), "matched": k, "correct": c,
                     "precision": c / k if k else np.nan, "recall": c / n_findable if n_findable else np.nan})
    return pd.DataFrame(rows)


def delta_curve(annotations: pd.DataFrame, ann_emb: np.ndarray, centres: pd.DataFrame, trk_emb: np.ndarray,
                tracklet_boxes: pd.DataFrame, truth: pd.DataFrame, *, deltas=None, pad_px=0.0,
                iou_threshold: float = 0.5) -> pd.DataFrame:
    """The precision/recall table of :func:`precision_recall_curve` on the given (validation) tables.

    ``deltas`` defaults to 50 steps over (0, 1] of the normalised embedding (distances in [0, 2]). The
    table's attrs hold ``n_findable``.
    """
    matches, n_findable = nearest_matches(annotations, ann_emb, centres, trk_emb, tracklet_boxes, truth,
                                          pad_px=pad_px, iou_threshold=iou_threshold)
    if deltas is None:
        deltas = np.linspace(0, 1.0, 51)[1:]
    curve = precision_recall_curve(matches, n_findable, deltas)
    curve.attrs["n_findable"] = n_findable
    return curve


def plot_delta_audit(curve: pd.DataFrame, delta: float, path: str | Path, title: str = "") -> None:
    """Precision and recall against delta with the configured delta marked, PNG, atomic."""
    # lazy: matplotlib, for the plot only (not for lens --help nor the other mining steps)
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on the cluster
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.plot(curve["delta"], curve["precision"], "-o", ms=3, label="precision")
    ax.plot(curve["delta"], curve["recall"], "-s", ms=3, label="recall")
    ax.axvline(delta, color="k", ls="--", lw=1, label=f"configured δ = {delta:.3f}")
    ax.set_xlabel("δ (embedding L2 distance)")
    ax.set_ylim(-0.02, 1.02)
    # the whole title, wrapped (it was cut at the figure's edge), and the legend below the axes, on no curve
    ax.set_title("\n".join(textwrap.wrap(title or "Intra-patient matching on the validation split (audit)", 50)),
                 fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
