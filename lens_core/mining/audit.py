"""Audit of missing-annotation mining against the built-in corpus's hidden truth (no paper table gives
this; Table IV gives the counts, Sec. VI-D's "we randomly checked 100 ... 90% are true lesions" the
precision of intra-patient matching).

The truth holds every lesion's 3D box (its ellipsoid's extent) in every volume. A lesion covers the
slices ``[z1, z2)``; on slice k its 2D box is the ellipsoid's cross-section there, padded the way the
dataset pads its boxes (DeepLesion's boxes are the RECIST extent +- 5 px, and detectors learn that
padding) -- :func:`truth_slices`. A mined 2D box is then

- ``TP``: it matches (IoU > 0.3) a lesion-slice that the dataset did *not* label: a recovered missing
  annotation;
- ``duplicate``: it matches a lesion-slice that is already labeled (an annotation of that lesion on
  that slice): harmless, nothing new;
- ``FP``: it matches no lesion.

IoU > 0.3 rather than 0.5 because a cross-section near a lesion's end is small and a detector's box
there is loose; the threshold is a parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from lens_core.io import InputError, read_meta, require_columns, write_parquet, write_text

from lens_core.mining.merge import merge_round2, training_slices
from lens_core.mining.overlap import same_slice_iou
from lens_core.label_kinds import GT_LIKE_KINDS
from lens_core.mining.schema import conform

__all__ = ["annotation_pad_px", "truth_slices", "match_truth", "classify_boxes", "audit_mining", "write_audit",
           "STRATEGY_ORDER"]

BOX_COLS = ["x1", "y1", "x2", "y2"]
RECIST_PAD_ORIG_PX = 5.0  # DeepLesion Bounding_boxes = RECIST extent +- 5 px of the original scan
# Table IV's rows, in its order (each adds to the one before).
STRATEGY_ORDER = ("no_mining", "cross_slice", "intra_patient", "cross_dataset", "unlabeled")


def annotation_pad_px(prep_dir: str | Path, orig_pad_px: float | None = None) -> dict[str, float]:
    """Per volume: the box padding of ``orig_pad_px`` original pixels in resampled pixels (x).

    By default the margin the DeepLesion reader used (recorded in lesions.parquet's metadata)."""
    if orig_pad_px is None:
        meta = read_meta(Path(prep_dir) / "lesions.parquet")
        orig_pad_px = float(meta.get("reader", {}).get("dl_box_pad_px", RECIST_PAD_ORIG_PX))
    path = Path(prep_dir) / "volumes.h5"
    out = {}
    try:
        with h5py.File(path, "r") as f:
            for vid, g in f.items():
                orig, new = np.asarray(g.attrs["orig_spacing"], float), np.asarray(g.attrs["spacing"], float)
                out[vid] = float(orig_pad_px * orig[2] / new[2])
    except (OSError, KeyError) as e:
        raise InputError(f"{path}: not readable as preprocessed volumes with their spacings ({e})") from e
    return out


def truth_slices(truth: pd.DataFrame, pad_px: float | Mapping[str, float] = 0.0, min_scale: float = 0.2) -> pd.DataFrame:
    """One row per (truth lesion, slice it covers): ``truth_row, volume_id, patient_id, instance_id,
    labeled_lesion, z, x1, y1, x2, y2``.

    The 2D box is the ellipsoid's cross-section at the slice centre (semi-axes scaled by
    ``sqrt(1 - dz^2)``, at least ``min_scale``), padded by ``pad_px`` (one number or per volume_id).
    """
    require_columns(truth, ["volume_id", "z", "x1", "y1", "z1", "x2", "y2", "z2", "instance_id"], "truth table")
    t = truth.reset_index(drop=True)
    z1 = np.floor(t["z1"].to_numpy(float)).astype(np.int64)
    z2 = np.ceil(t["z2"].to_numpy(float)).astype(np.int64)
    n = np.maximum(z2 - z1, 1)
    row = np.repeat(np.arange(len(t)), n)
    z = np.repeat(z1, n) + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
    cz = t["z"].to_numpy(float)[row] + 0.5
    # the z semi-axis: the box may be clipped by the scan's ends, so take the longer side from the centre
    rz = np.maximum(np.maximum(t["z2"].to_numpy(float) - (t["z"].to_numpy(float) + 0.5),
                               (t["z"].to_numpy(float) + 0.5) - t["z1"].to_numpy(float)), 0.5)[row]
    scale = np.sqrt(np.clip(1 - ((z + 0.5 - cz) / rz) ** 2, min_scale ** 2, 1.0))
    b = t[BOX_COLS].to_numpy(float)[row]
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    hx, hy = (b[:, 2] - b[:, 0]) / 2 * scale, (b[:, 3] - b[:, 1]) / 2 * scale
    vols = t["volume_id"].astype(str).to_numpy()[row]
    pad = (np.array([pad_px.get(v, 0.0) for v in vols]) if isinstance(pad_px, Mapping)
           else np.full(len(row), float(pad_px)))
    out = pd.DataFrame({"truth_row": row, "volume_id": vols,
                        "patient_id": t["patient_id"].astype(str).to_numpy()[row] if "patient_id" in t else "",
                        "instance_id": t["instance_id"].astype(str).to_numpy()[row],
                        "labeled_lesion": t["labeled"].to_numpy(bool)[row] if "labeled" in t else False,
                        "z": z, "x1": cx - hx - pad, "y1": cy - hy - pad, "x2": cx + hx + pad, "y2": cy + hy + pad})
    return out


def match_truth(boxes: pd.DataFrame, slices: pd.DataFrame, iou_threshold: float = 0.3) -> pd.DataFrame:
    """Best truth lesion-slice of each box on its slice: ``slice_row`` (-1 if none with IoU >
    threshold), ``instance_id`` ("" if none), ``iou``; one row per box, in order."""
    b = boxes.reset_index(drop=True)
    out = pd.DataFrame({"slice_row": np.full(len(b), -1, np.int64), "instance_id": np.full(len(b), "", object),
                        "iou": np.zeros(len(b))})
    if len(b) == 0 or len(slices) == 0:
        return out
    pairs = same_slice_iou(b, slices.reset_index(drop=True))
    pairs = pairs[pairs["iou"] > iou_threshold].sort_values(["a_row", "iou", "b_row"], ascending=[True, False, True])
    best = pairs.drop_duplicates("a_row")
    a, s = best["a_row"].to_numpy(), best["b_row"].to_numpy()
    out.loc[a, "slice_row"] = s
    out.loc[a, "instance_id"] = slices["instance_id"].to_numpy()[s]
    out.loc[a, "iou"] = best["iou"].to_numpy()
    return out


def _labeled_slice_mask(annotations: pd.DataFrame, slices: pd.DataFrame, iou_threshold: float) -> np.ndarray:
    """bool [len(slices)]: the dataset labels this lesion on this slice (a ``gt`` annotation matches
    it there; a 3D annotation counts on every slice of its z1..z2 span)."""
    ann = annotations.reset_index(drop=True)
    if "label_kind" in ann.columns:
        ann = ann[ann["label_kind"] == "gt"].reset_index(drop=True)
    hit = np.zeros(len(slices), bool)
    if len(ann) and len(slices):
        pairs = same_slice_iou(slices.reset_index(drop=True), ann, b_span=True)
        hit[pairs["a_row"].to_numpy()[pairs["iou"].to_numpy() > iou_threshold]] = True
    return hit


def classify_boxes(boxes: pd.DataFrame, slices: pd.DataFrame, labeled: np.ndarray,
                   iou_threshold: float = 0.3) -> pd.DataFrame:
    """:func:`match_truth` plus ``verdict``: ``TP`` / ``duplicate`` / ``FP`` (module docstring)."""
    m = match_truth(boxes, slices, iou_threshold)
    s = m["slice_row"].to_numpy()
    verdict = np.where(s < 0, "FP", np.where(labeled[np.maximum(s, 0)], "duplicate", "TP"))
    return m.assign(verdict=verdict)


def _in_split(df: pd.DataFrame, vols: set[str] | None) -> pd.DataFrame:
    if vols is None:
        return df.reset_index(drop=True)
    return df[df["volume_id"].astype(str).isin(vols)].reset_index(drop=True)


def audit_mining(annotations: pd.DataFrame, mined: Mapping[str, pd.DataFrame], truth: pd.DataFrame, *,
                 volumes: pd.DataFrame | None = None, split: str | None = "train", iou_threshold: float = 0.3,
                 pad_px: float | Mapping[str, float] = 0.0) -> pd.DataFrame:
    """Per strategy, in Table IV's order: what it mined and how much of it is real.

    annotations: the dataset's lesions table. mined: ``{"cross_slice": df, "intra_patient": df,
    "uncertain": df}`` (any may be missing or empty; MINING_SCHEMA tables). truth: truth.parquet.
    Only volumes of ``split`` count (from ``volumes`` or the truth's own ``split`` column; None = all).

    Columns: ``strategy`` (no_mining, cross_slice, intra_patient, cross_dataset = uncertain boxes on
    slices that hold a ground-truth-like box, unlabeled = uncertain boxes on the other slices),
    ``boxes`` (mined by it), ``tp``, ``duplicate``, ``fp``, ``precision`` (tp / boxes), ``duplicate_rate``,
    ``recall_missing`` (share of the unlabeled truth lesion-slices that its boxes hit),
    ``recall_missing_cum`` (with the strategies above it; uncertain boxes are ignored in training, so
    they do not add to it), ``new_instances`` (truth lesions of a volume that had no label there and
    that it hit), then Table IV's cumulative columns ``n_3d_gt, n_2d_gt, n_2d_uncertain, n_training_slices``.
    """
    vols = None
    if split is not None:
        src = volumes if volumes is not None else truth
        if "split" not in src.columns:
            raise InputError("audit needs a split column (in volumes or truth) or split=None")
        vols = set(src.loc[src["split"] == split, "volume_id"].astype(str))
    truth = _in_split(truth, vols)
    ann = _in_split(conform(annotations), vols)
    slices = truth_slices(truth, pad_px)
    labeled = _labeled_slice_mask(ann, slices, iou_threshold)
    lesion_labeled = np.zeros(len(truth), bool)  # a lesion labeled on any of its slices in this volume
    lesion_labeled[slices["truth_row"].to_numpy()[labeled]] = True
    missing = ~labeled
    n_missing = int(missing.sum())

    tables = {k: _in_split(conform(mined[k]), vols) if k in mined and mined[k] is not None and len(mined[k])
              else conform(pd.DataFrame(columns=["volume_id", "z", *BOX_COLS, "label_kind"]))
              for k in ("cross_slice", "intra_patient", "uncertain")}
    gt_like = pd.concat([ann[ann["label_kind"].isin(GT_LIKE_KINDS)], tables["cross_slice"], tables["intra_patient"]],
                        ignore_index=True)
    gt_slices = set(zip(gt_like["volume_id"].astype(str), gt_like["z"].astype(np.int64)))
    unc = tables["uncertain"]
    on_gt = np.array([(v, z) in gt_slices for v, z in zip(unc["volume_id"].astype(str), unc["z"].astype(np.int64))],
                     dtype=bool)
    parts = {"no_mining": ann.iloc[0:0], "cross_slice": tables["cross_slice"], "intra_patient": tables["intra_patient"],
             "cross_dataset": unc[on_gt].reset_index(drop=True), "unlabeled": unc[~on_gt].reset_index(drop=True)}

    rows = []
    hit_cum = np.zeros(len(slices), bool)
    kept_mined: list[pd.DataFrame] = []
    uncertain_so_far: list[pd.DataFrame] = []
    for name in STRATEGY_ORDER:
        df = parts[name]
        c = classify_boxes(df, slices, labeled, iou_threshold)
        hit = np.zeros(len(slices), bool)
        s = c["slice_row"].to_numpy()
        hit[s[(s >= 0)]] = True
        hit &= missing
        if name in ("cross_slice", "intra_patient"):
            hit_cum |= hit
            kept_mined.append(df)
        elif name in ("cross_dataset", "unlabeled"):
            uncertain_so_far.append(df)
        new_inst = np.unique(slices["truth_row"].to_numpy()[hit])
        new_inst = int((~lesion_labeled[new_inst]).sum())
        n = len(df)
        tp, dup = int((c["verdict"] == "TP").sum()), int((c["verdict"] == "duplicate").sum())
        labels = merge_round2(ann, kept_mined, pd.concat(uncertain_so_far, ignore_index=True) if uncertain_so_far else None)
        ts = training_slices(labels)
        if name != "unlabeled":  # Table IV: unlabeled slices join training only in the last row
            ts = ts[~ts["unlabeled"]]
        gt_rows = labels[labels["label_kind"].isin(GT_LIKE_KINDS)]
        # 3D lesions (Table IV "# 3D GT"): the annotated ones plus one per intra-patient tracklet kept;
        # cross-slice boxes add slices to annotated lesions, not lesions
        ann_rows = gt_rows[gt_rows["source_rule"] == "annotation"]
        trk_rows = gt_rows[gt_rows["source_rule"] == "intra_patient"]
        lesion_key = ann_rows["lesion_id"].where(ann_rows["lesion_id"] != "", "row" + ann_rows.index.astype(str))
        n_3d = (pd.DataFrame({"v": ann_rows["volume_id"], "k": lesion_key}).drop_duplicates().shape[0]
                + trk_rows[["volume_id", "tracklet_id"]].drop_duplicates().shape[0])
        rows.append({"strategy": name, "boxes": n, "tp": tp, "duplicate": dup, "fp": n - tp - dup,
                     "precision": tp / n if n else np.nan, "duplicate_rate": dup / n if n else np.nan,
                     "recall_missing": hit.sum() / n_missing if n_missing else np.nan,
                     "recall_missing_cum": hit_cum.sum() / n_missing if n_missing else np.nan,
                     "new_instances": new_inst,
                     "n_3d_gt": int(n_3d), "n_2d_gt": int(len(gt_rows)),
                     "n_2d_uncertain": int((labels["label_kind"] == "uncertain").sum()),
                     "n_training_slices": int(len(ts))})
    out = pd.DataFrame(rows)
    out.attrs.update({"missing_lesion_slices": n_missing, "truth_lesions": int(len(truth)),
                      "split": split or "all", "iou_threshold": iou_threshold})
    return out


def write_audit(table: pd.DataFrame, md_path: str | Path, parquet_path: str | Path | None = None) -> None:
    """audit.md (a Markdown table with a one-line legend) and, if given, audit.parquet, atomically."""
    md_path = Path(md_path)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    fmt = table.copy()
    for c in ("precision", "duplicate_rate", "recall_missing", "recall_missing_cum"):
        fmt[c] = [("–" if pd.isna(v) else f"{100 * v:.1f}%") for v in fmt[c]]
    cols = list(fmt.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in fmt.itertuples(index=False)]
    a = table.attrs
    text = ("# Mining audit against the hidden truth\n\n"
            f"Split: {a.get('split', '?')}; {a.get('truth_lesions', '?')} truth lesions, "
            f"{a.get('missing_lesion_slices', '?')} unlabeled lesion-slices (the missing annotations). "
            f"A mined box is TP when it matches (IoU > {a.get('iou_threshold', 0.3)}) an unlabeled truth "
            "lesion-slice, duplicate when that lesion is already labeled on that slice, FP otherwise. "
            "Table IV columns (n_3d_gt .. n_training_slices) are cumulative down the rows; "
            "cross_dataset = uncertain boxes on slices with ground truth, unlabeled = on the other slices.\n\n"
            + "\n".join(lines) + "\n")
    write_text(md_path, text)
    if parquet_path is not None:
        plain = pd.DataFrame(table)
        plain.attrs = {}
        write_parquet(plain, parquet_path, {k: v for k, v in table.attrs.items()})
