"""Intra-patient lesion matching (paper Sec. V-B): a lesion annotated in one study is found in another."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lens_core.mining.intra_patient import match_intra_patient, mine_intra_patient
from lens_core.tracklets import tracklets_from_table


def reference_matches(ap, av, ae, tp, tv, te, delta):
    """Every (annotation, tracklet) pair, brute force: same patient, other volume, distance < delta."""
    out = []
    for i in range(len(ap)):
        for j in range(len(tp)):
            if ap[i] == tp[j] and av[i] != tv[j]:
                s = 0.0
                for k in range(ae.shape[1]):
                    diff = float(ae[i, k]) - float(te[j, k])
                    s += diff * diff
                if math.sqrt(s) < delta:
                    out.append((i, j, math.sqrt(s)))
    return out


@st.composite
def embedded_sets(draw):
    d = draw(st.integers(1, 4))
    def side(n):
        pat = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), np.int64)
        vol = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), np.int64) + 10 * pat
        # Coarse grid values so that distances exactly equal to delta occur.
        emb = np.array(draw(st.lists(st.integers(-3, 3), min_size=n * d, max_size=n * d)), np.float32) / 2
        return pat, vol, emb.reshape(n, d)
    return side(draw(st.integers(0, 15))) + side(draw(st.integers(0, 40)))


@settings(max_examples=300, deadline=None)
@given(embedded_sets(), st.sampled_from([0.5, 1.0, 1.5, 3.0]))
def test_kernel_matches_brute_force(data, delta):
    ai, ti, dist = match_intra_patient(*data, delta)
    assert ai.dtype == ti.dtype == np.int64 and dist.dtype == np.float64
    assert list(zip(ai.tolist(), ti.tolist(), dist.tolist())) == reference_matches(*data, delta)


def test_same_volume_and_other_patients_never_match():
    emb = np.zeros((1, 2), np.float32)
    ai, _, _ = match_intra_patient(np.array([0]), np.array([5]), emb,
                                   np.array([0, 1]), np.array([5, 6]), np.zeros((2, 2), np.float32), 1.0)
    assert ai.size == 0


def test_mismatched_embedding_sizes_are_rejected():
    with pytest.raises(ValueError, match="embedding sizes differ"):
        match_intra_patient(np.array([0]), np.array([0]), np.zeros((1, 2), np.float32),
                            np.array([0]), np.array([1]), np.zeros((1, 3), np.float32), 1.0)


def _lesion_rows(volume_id, zs, box, score=0.9):
    return [(volume_id, z, *box, score) for z in zs]


def _scenario():
    """Patient P: lesion L1 annotated in study 1 (volume s1); study 2 (volume s2) shows it unlabelled
    on slices 7..9 and also shows the annotated lesion L2 of s2. Patient Q has a look-alike tracklet."""
    anns = pd.DataFrame({
        "volume_id": ["s1", "s2"], "patient_id": ["P", "P"], "study_id": [1, 2], "series_id": [1, 1],
        "dataset": ["deeplesion"] * 2, "lesion_id": ["L1", "L2"], "z": [4, 20],
        "x1": [50.0, 200.0], "y1": [50.0, 200.0], "x2": [70.0, 220.0], "y2": [70.0, 220.0],
        "lesion_type": ["lung", "liver"], "label_kind": ["gt", "gt"]})
    rows = (_lesion_rows("s2", [7, 8, 9], (52, 55, 72, 75)) + _lesion_rows("s2", [19, 20, 21], (200, 200, 220, 220))
            + _lesion_rows("q1", [3, 4], (52, 55, 72, 75)) + _lesion_rows("s1", [3, 4, 5], (50, 50, 70, 70)))
    props = pd.DataFrame(rows, columns=["volume_id", "z", "x1", "y1", "x2", "y2", "score"])
    props["patient_id"] = props["volume_id"].map({"s1": "P", "s2": "P", "q1": "Q"})
    boxes = tracklets_from_table(props)
    trk = boxes.groupby("tracklet_id", as_index=False).first()[["tracklet_id", "volume_id", "patient_id"]]
    # Embeddings: L1 and its unlabelled copy close together, everything else far away.
    ann_emb = np.array([[0, 0], [10, 0]], np.float32)
    where = {"s2": {7: [0.3, 0], 19: [10, 0.1]}, "q1": {3: [0, 0.1]}, "s1": {3: [0.05, 0]}}
    first_z = boxes.groupby("tracklet_id")["z"].min()
    trk_emb = np.array([where[v][first_z[t]] for t, v in zip(trk["tracklet_id"], trk["volume_id"])], np.float32)
    return anns, ann_emb, trk, trk_emb, boxes


def test_lesion_annotated_in_study_1_is_recovered_in_study_2():
    anns, ann_emb, trk, trk_emb, boxes = _scenario()
    mined = mine_intra_patient(anns, ann_emb, trk, trk_emb, boxes, delta=1.0)
    assert mined["volume_id"].tolist() == ["s2"] * 3 and mined["z"].tolist() == [7, 8, 9]
    assert set(mined["lesion_id"]) == {"L1"} and set(mined["patient_id"]) == {"P"}
    assert set(mined["label_kind"]) == {"mined_intra_patient"}
    assert mined["embedding_distance"].tolist() == pytest.approx([0.3] * 3)
    # The tracklet of s2's own annotated lesion L2 is close to nothing; the s1 tracklet of L1 is a
    # known lesion of its own volume; patient Q's look-alike belongs to another patient.


def test_a_looser_delta_still_skips_known_lesions_and_takes_the_nearest_annotation():
    anns, ann_emb, trk, trk_emb, boxes = _scenario()
    # A third annotation (study 3) a little farther from the study-2 tracklet than L1 is.
    l3 = anns.iloc[[0]].assign(volume_id="s3", study_id=3, lesion_id="L3")
    anns, ann_emb = pd.concat([anns, l3], ignore_index=True), np.vstack([ann_emb, [[0.7, 0]]]).astype(np.float32)
    mined = mine_intra_patient(anns, ann_emb, trk, trk_emb, boxes, delta=100.0)
    assert set(mined["volume_id"]) == {"s2"} and set(mined["lesion_id"]) == {"L1"}
    assert mined["embedding_distance"].tolist() == pytest.approx([0.3] * 3)


def test_embeddings_must_line_up_with_their_tables():
    anns, ann_emb, trk, trk_emb, boxes = _scenario()
    with pytest.raises(ValueError, match="line up"):
        mine_intra_patient(anns, ann_emb[:1], trk, trk_emb, boxes, delta=1.0)
