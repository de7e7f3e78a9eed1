"""Intra-patient lesion matching (paper Sec. V-B, Fig. 4b-c): find an annotated lesion again in the
patient's other studies and series.

Within one patient, every annotation is compared with every tracklet of a *different* volume by the
L2 distance of their lesion embeddings; a pair closer than delta makes the whole tracklet a mined
annotation of that lesion. :func:`match_intra_patient` is the array-level matcher (a numba kernel over
patient-grouped arrays); :func:`mine_intra_patient` turns matches into a mining table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numba import njit

from lens_core.io import InputError, require_columns
from lens_core.mining.overlap import one_box_per_slice, same_slice_iou
from lens_core.mining.schema import conform

__all__ = ["match_intra_patient", "mine_intra_patient"]


@njit(cache=True)
def _group_bounds(sorted_keys):
    """Start of each run of equal keys in a sorted array, plus the end sentinel."""
    n = sorted_keys.shape[0]
    count = 0
    for i in range(n):
        if i == 0 or sorted_keys[i] != sorted_keys[i - 1]:
            count += 1
    bounds = np.empty(count + 1, dtype=np.int64)
    k = 0
    for i in range(n):
        if i == 0 or sorted_keys[i] != sorted_keys[i - 1]:
            bounds[k] = i
            k += 1
    bounds[count] = n
    return bounds


@njit(cache=True)
def _match_kernel(a_pat, a_vol, a_emb, a_bounds, t_pat, t_vol, t_emb, t_bounds, delta, fill,
                  out_a, out_t, out_d):
    """Count (fill=False) or write (fill=True) the pairs of one patient, other volume, distance < delta.

    a_*/t_* are sorted by patient; *_bounds from _group_bounds. Indices written are sorted positions.
    """
    d = a_emb.shape[1]
    # Stop summing a pair once its partial squared distance is clearly past delta^2; the margin keeps
    # the final, exact test (sqrt(s) < delta) the only one that decides borderline pairs.
    stop = delta * delta * (1.0 + 1e-6) + 1e-12
    count = 0
    ga = 0
    gt = 0
    n_ga = a_bounds.shape[0] - 1
    n_gt = t_bounds.shape[0] - 1
    while ga < n_ga and gt < n_gt:  # merge walk over the two patient-sorted arrays
        pa = a_pat[a_bounds[ga]]
        pt = t_pat[t_bounds[gt]]
        if pa < pt:
            ga += 1
        elif pt < pa:
            gt += 1
        else:
            for i in range(a_bounds[ga], a_bounds[ga + 1]):
                for j in range(t_bounds[gt], t_bounds[gt + 1]):
                    if a_vol[i] == t_vol[j]:
                        continue  # same volume: cross-slice propagation's job, not this rule's
                    s = 0.0
                    for k in range(d):
                        diff = np.float64(a_emb[i, k]) - np.float64(t_emb[j, k])
                        s += diff * diff
                        if s > stop:
                            break
                    dist = np.sqrt(s)
                    if dist < delta:
                        if fill:
                            out_a[count] = i
                            out_t[count] = j
                            out_d[count] = dist
                        count += 1
            ga += 1
            gt += 1
    return count


def _check(name, patient, volume, emb):
    patient, volume, emb = np.asarray(patient), np.asarray(volume), np.asarray(emb)
    if patient.ndim != 1 or volume.shape != patient.shape:
        raise ValueError(f"{name}_patient and {name}_volume must be 1-D of one length, got "
                         f"{patient.shape} and {volume.shape}")
    if not (np.issubdtype(patient.dtype, np.integer) and np.issubdtype(volume.dtype, np.integer)):
        raise InputError(f"{name}_patient and {name}_volume must be integer ids (factorise strings first)")
    if emb.ndim != 2 or emb.shape[0] != patient.shape[0]:
        raise ValueError(f"{name}_emb must be [{patient.shape[0]}, d], got {emb.shape}")
    if not np.issubdtype(emb.dtype, np.floating):
        raise InputError(f"{name}_emb must be a float array, got {emb.dtype}")
    emb = np.asarray(emb, dtype=np.float32)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}_emb row {int(np.flatnonzero(bad)[0])} is not finite")
    return patient.astype(np.int64, copy=False), volume.astype(np.int64, copy=False), emb


def match_intra_patient(ann_patient: np.ndarray, ann_volume: np.ndarray, ann_emb: np.ndarray,
                        trk_patient: np.ndarray, trk_volume: np.ndarray, trk_emb: np.ndarray,
                        delta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Annotation/tracklet pairs of one patient, different volumes, embedding L2 distance < delta.

    ann_*: int64 [n] patient and volume ids, float32 [n, d] embeddings; trk_*: the same for m
    tracklets (ids in the same id space as the annotations'). Returns ``(ann_index, trk_index,
    distance)``: int64, int64, float64 [k], indices into the inputs, sorted by (ann_index, trk_index).
    """
    a_pat, a_vol, a_emb = _check("ann", ann_patient, ann_volume, ann_emb)
    t_pat, t_vol, t_emb = _check("trk", trk_patient, trk_volume, trk_emb)
    if a_emb.shape[1] != t_emb.shape[1]:
        raise ValueError(f"embedding sizes differ: annotations {a_emb.shape[1]}, tracklets {t_emb.shape[1]}")
    if not (np.isfinite(delta) and delta >= 0):  # 0: nothing matches (Fig. 5's "no matched lesion added")
        raise ValueError(f"delta must be a distance >= 0, got {delta}")
    a_ord = np.argsort(a_pat, kind="stable")
    t_ord = np.argsort(t_pat, kind="stable")
    args = (a_pat[a_ord], a_vol[a_ord], np.ascontiguousarray(a_emb[a_ord]), _group_bounds(a_pat[a_ord]),
            t_pat[t_ord], t_vol[t_ord], np.ascontiguousarray(t_emb[t_ord]), _group_bounds(t_pat[t_ord]),
            float(delta))
    # Two passes (count, then fill) so the hot loop never grows an array.
    empty_i, empty_d = np.empty(0, np.int64), np.empty(0, np.float64)
    k = _match_kernel(*args, False, empty_i, empty_i, empty_d)
    out_a, out_t, out_d = np.empty(k, np.int64), np.empty(k, np.int64), np.empty(k, np.float64)
    _match_kernel(*args, True, out_a, out_t, out_d)
    ann_index, trk_index = a_ord[out_a], t_ord[out_t]
    order = np.lexsort((trk_index, ann_index))
    return ann_index[order], trk_index[order], out_d[order]


ID_COLS = ["volume_id", "patient_id", "study_id", "series_id"]


def mine_intra_patient(annotations: pd.DataFrame, ann_emb: np.ndarray, tracklets: pd.DataFrame,
                       trk_emb: np.ndarray, tracklet_boxes: pd.DataFrame, delta: float,
                       iou_threshold: float = 0.5) -> pd.DataFrame:
    """Mined 2D boxes (``label_kind = mined_intra_patient``), one row per slice of each matched tracklet.

    annotations: lesion rows (``volume_id, patient_id, lesion_id, z, x1..y2``), row i embedded as
    ``ann_emb[i]``. tracklets: one row per tracklet (``tracklet_id, volume_id, patient_id``), row j
    embedded as ``trk_emb[j]`` (e.g. at its centre slice, Sec. V-B). tracklet_boxes: the 2D proposals
    with ``tracklet_id`` whose boxes become the mined annotations.

    Choices the paper leaves open:
    - a tracklet that overlaps an annotation of its own volume (IoU > iou_threshold on a slice) is a
      known lesion, not a missing one, and is skipped (cross-slice propagation covers its slices);
    - a tracklet matched to several annotations takes the nearest (its ``lesion_id`` and ``dataset``
      are copied; the lesion is the same instance seen at another time point or in another series);
    - one box per slice, the highest-scoring one, as in cross-slice propagation.
    """
    require_columns(annotations, ["volume_id", "patient_id", "lesion_id"], "annotation table")
    require_columns(tracklets, ["tracklet_id", "volume_id", "patient_id"], "tracklet table")
    require_columns(tracklet_boxes, ["tracklet_id", "volume_id", "z", "x1", "y1", "x2", "y2"], "tracklet boxes")
    ann = annotations.reset_index(drop=True)
    trk = tracklets.reset_index(drop=True)
    boxes = tracklet_boxes.reset_index(drop=True)
    if len(ann) != len(ann_emb) or len(trk) != len(trk_emb):
        raise ValueError(f"embeddings do not line up with their tables: {len(ann)} annotations vs "
                         f"{len(ann_emb)} embeddings, {len(trk)} tracklets vs {len(trk_emb)} embeddings")
    # One integer id space for both sides.
    pat_codes, _ = pd.factorize(pd.concat([ann["patient_id"], trk["patient_id"]], ignore_index=True).astype(str))
    vol_codes, _ = pd.factorize(pd.concat([ann["volume_id"], trk["volume_id"]], ignore_index=True).astype(str))
    n = len(ann)
    ai, ti, dist = match_intra_patient(pat_codes[:n], vol_codes[:n], ann_emb, pat_codes[n:], vol_codes[n:],
                                       trk_emb, delta)
    pairs = pd.DataFrame({"ann_row": ai, "tracklet_id": trk["tracklet_id"].to_numpy()[ti], "distance": dist})

    if len(ann) and "z" in ann.columns:
        known = same_slice_iou(boxes, ann, b_span=True)
        known = boxes["tracklet_id"].to_numpy()[known["a_row"].to_numpy()[known["iou"].to_numpy() > iou_threshold]]
        pairs = pairs[~pairs["tracklet_id"].isin(known)]
    best = (pairs.sort_values(["tracklet_id", "distance", "ann_row"], kind="stable")
            .drop_duplicates("tracklet_id"))

    cand = boxes.assign(_row=np.arange(len(boxes))).merge(best, on="tracklet_id", how="inner")
    cand = one_box_per_slice(cand)
    a = ann.iloc[cand["ann_row"].to_numpy()].reset_index(drop=True)
    out = pd.DataFrame(index=pd.RangeIndex(len(cand)))
    for c in ID_COLS:  # the boxes' own ids, else the tracklet table's
        if c in cand.columns:
            out[c] = cand[c].to_numpy()
        elif c in trk.columns:
            out[c] = cand["tracklet_id"].map(trk.drop_duplicates("tracklet_id").set_index("tracklet_id")[c]).to_numpy()
    for c in ["dataset", "lesion_id", "lesion_type"]:
        if c in a.columns:
            out[c] = a[c].to_numpy()
    for c in ["z", "x1", "y1", "x2", "y2", "tracklet_id", "score"]:
        if c in cand.columns:
            out[c] = cand[c].to_numpy()
    out["embedding_distance"] = cand["distance"].to_numpy()
    out["kind"] = "2d"
    out["label_kind"] = "mined_intra_patient"
    out["source_rule"] = "intra_patient"
    return conform(out)
