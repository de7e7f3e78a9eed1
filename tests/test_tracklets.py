"""Tracklets (paper Sec. V-A) and 2D->3D stacking (Sec. IV-C): the numba kernel against the reference."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lens_core.io import InputError
from lens_core.tracklets import build_tracklets, stack_to_3d, tracklets_from_table
from reference_tracklets import reference_tracklets


@st.composite
def box_sets(draw, max_boxes=60):
    """Boxes in a few volumes and slices (with gaps); small integer corners make IoU == theta ties
    common, half-pixel ones exercise non-integer coordinates."""
    n = draw(st.integers(0, max_boxes))
    n_vol = draw(st.integers(1, 3))
    vol = draw(st.lists(st.integers(0, n_vol - 1), min_size=n, max_size=n))
    z = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    corner = st.integers(0, 8).map(float) | st.integers(0, 16).map(lambda v: v / 2)
    size = st.integers(1, 6).map(float)
    boxes = []
    for _ in range(n):
        x1, y1, w, h = draw(corner), draw(corner), draw(size), draw(size)
        boxes.append((x1, y1, x1 + w, y1 + h))
    return (np.array(vol, dtype=np.int64), np.array(z, dtype=np.int64),
            np.array(boxes, dtype=np.float32).reshape(n, 4))


@settings(max_examples=300, deadline=None)
@given(box_sets(), st.sampled_from([0.0, 0.25, 0.5, 0.7]))
def test_kernel_matches_reference_on_random_boxes(data, theta):
    vol, z, boxes = data
    got = build_tracklets(vol, z, boxes, theta)
    assert got.dtype == np.int64 and got.shape == (len(vol),)
    assert got.tolist() == reference_tracklets(vol, z, boxes, theta)


@settings(max_examples=100, deadline=None)
@given(box_sets(), st.randoms(use_true_random=False))
def test_grouping_does_not_depend_on_input_order(data, rnd):
    vol, z, boxes = data
    perm = np.arange(len(vol))
    rnd.shuffle(perm)
    a = build_tracklets(vol, z, boxes)
    b = build_tracklets(vol[perm], z[perm], boxes[perm])
    # Same partition: two boxes share a tracklet in one order iff they do in the other.
    assert (a[perm][:, None] == a[perm][None, :]).tolist() == (b[:, None] == b[None, :]).tolist()


def test_lesion_seen_on_three_slices_is_one_tracklet_and_a_gap_splits_it():
    box = [10, 10, 20, 20]
    shifted = [11, 10, 21, 20]  # IoU 9/11 with box
    z = np.array([3, 4, 5, 7])  # slice 6 missing: slice 7 starts a new lesion
    ids = build_tracklets(np.zeros(4, np.int64), z, np.array([box, shifted, box, box], np.float32))
    assert ids.tolist() == [0, 0, 0, 1]


def test_boxes_of_different_volumes_or_the_same_slice_never_link():
    box = np.array([[0, 0, 10, 10]] * 3, np.float32)
    assert build_tracklets(np.array([0, 1, 1]), np.array([0, 1, 1]), box).tolist() == [0, 1, 2]


def test_iou_equal_to_theta_does_not_link():
    # [0,0,2,2] vs [0,0,2,1]: IoU exactly 1/2; the paper's rule is a strict IoU > theta.
    boxes = np.array([[0, 0, 2, 2], [0, 0, 2, 1]], np.float32)
    assert build_tracklets(np.zeros(2, np.int64), np.array([0, 1]), boxes, 0.5).tolist() == [0, 1]
    assert build_tracklets(np.zeros(2, np.int64), np.array([0, 1]), boxes, 0.49).tolist() == [0, 0]


def test_branching_tracklet_joins_both_boxes_of_a_slice():
    # Two boxes on slice 1 both overlap the big box on slice 0: one connected component.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 6], [0, 4, 10, 10], [50, 50, 60, 60]], np.float32)
    ids = build_tracklets(np.zeros(4, np.int64), np.array([0, 1, 1, 1]), boxes, 0.3)
    assert ids.tolist() == [0, 0, 0, 1]


def test_empty_and_single_box():
    assert build_tracklets(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.float32)).shape == (0,)
    assert build_tracklets(np.array([5]), np.array([9]), np.array([[0, 0, 1, 1]], np.float32)).tolist() == [0]


@pytest.mark.parametrize("boxes, match", [
    (np.array([[0, 0, 1, np.nan]], np.float32), "non-finite"),
    (np.array([[2, 0, 1, 1]], np.float32), "x2 > x1"),
    (np.array([[0, 0, 1]], np.float32), "boxes"),
])
def test_bad_boxes_are_rejected_with_the_row(boxes, match):
    with pytest.raises(ValueError, match=match):
        build_tracklets(np.zeros(1, np.int64), np.zeros(1, np.int64), boxes)


def test_float_slice_index_is_rejected():
    with pytest.raises(InputError, match="z must be an integer"):
        build_tracklets(np.zeros(1, np.int64), np.zeros(1), np.array([[0, 0, 1, 1]], np.float32))


def _proposals():
    return pd.DataFrame({
        "volume_id": ["b", "b", "b", "a", "a"],
        "patient_id": ["p1", "p1", "p1", "p0", "p0"],
        "z": [4, 5, 6, 0, 0],
        "x1": [10.0, 12.0, 10.0, 0.0, 40.0], "y1": [10.0, 10.0, 10.0, 0.0, 40.0],
        "x2": [20.0, 22.0, 20.0, 8.0, 48.0], "y2": [20.0, 20.0, 20.0, 8.0, 48.0],
        "score_luna": [0.1, 0.9, 0.2, 0.3, 0.0],
        "score": [0.2, 0.6, 0.2, 0.5, 0.0],
    })


def test_tracklets_from_table_factorises_volume_ids():
    out = tracklets_from_table(_proposals())
    # Volume "a" sorts first, so its two boxes get ids 0 and 1; the three slices of "b" share id 2.
    assert out["tracklet_id"].tolist() == [2, 2, 2, 0, 1]


def test_stack_to_3d_weights_coordinates_by_score_and_keeps_the_max_scores():
    out = stack_to_3d(_proposals()).set_index("tracklet_id")
    b = out.loc[2]
    assert b["volume_id"] == "b" and b["patient_id"] == "p1"
    assert (b["z1"], b["z2"], b["n_slices"], b["z"]) == (4, 7, 3, 5)
    assert b["x1"] == pytest.approx((0.2 * 10 + 0.6 * 12 + 0.2 * 10) / 1.0)
    assert b["x2"] == pytest.approx(0.2 * 20 + 0.6 * 22 + 0.2 * 20)
    assert (b["score"], b["score_luna"]) == (pytest.approx(0.6), pytest.approx(0.9))
    zero = out.loc[1]  # all-zero score: plain mean, still a valid box
    assert (zero["x1"], zero["x2"], zero["z1"], zero["z2"]) == (40, 48, 0, 1)
