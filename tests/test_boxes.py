"""Box algebra (lens_core.boxes): IoU and IoBB in 2D and 3D under the exclusive-upper-bound convention."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lens_core import boxes as B


def test_iobb_is_intersection_over_the_predicted_box():
    gt = [0, 0, 0, 20, 20, 10]  # a large lesion
    part = [5, 5, 2, 10, 10, 4]  # a detection of a small part of it (Sec. VI-C)
    assert B.iobb(part, gt)[0] == 1.0
    assert B.iou(part, gt)[0] == pytest.approx(50 / 4000)
    assert B.iobb(gt, part)[0] == pytest.approx(50 / 4000)  # not symmetric


def test_inclusive_pixel_extents_become_exact_pixel_counts():
    # columns 10..19, rows 0..9, slices 3..5 inclusive: 10 x 10 x 3 voxels
    box = B.inclusive_to_exclusive([10, 0, 3, 19, 9, 5])
    assert box.tolist() == [[10, 0, 3, 20, 10, 6]]
    assert B.box_volume(box)[0] == 300
    # two boxes sharing exactly one column of pixels overlap by that column
    a = B.inclusive_to_exclusive([0, 0, 9, 9])
    b = B.inclusive_to_exclusive([9, 0, 18, 9])
    assert B.intersection(a, b)[0] == 10


def test_touching_and_disjoint_boxes_do_not_overlap():
    assert B.iou([0, 0, 10, 10], [10, 0, 20, 10])[0] == 0
    assert B.pairwise_iobb([[0, 0, 0, 5, 5, 5]], [[0, 0, 5, 5, 5, 9]]).tolist() == [[0.0]]


def test_degenerate_boxes_have_zero_overlap_not_nan():
    assert B.iobb([3, 3, 3, 3], [0, 0, 10, 10])[0] == 0
    assert B.pairwise_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


def test_mixed_dimensions_are_rejected():
    with pytest.raises(ValueError, match="2D and 3D"):
        B.pairwise_iou([[0, 0, 1, 1]], [[0, 0, 0, 1, 1, 1]])
    with pytest.raises(ValueError, match=r"\[N, 4\] or \[N, 6\]"):
        B.box_volume([[0, 0, 1]])


boxes2d = st.lists(
    st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(1, 30), st.integers(1, 30)),
    min_size=1, max_size=8,
).map(lambda r: np.array([[x, y, x + w, y + h] for x, y, w, h in r], dtype=float))


@settings(max_examples=50, deadline=None)
@given(boxes2d, boxes2d)
def test_pairwise_iou_agrees_with_torchvision(a, b):
    torch = pytest.importorskip("torch")
    from torchvision.ops import box_iou

    expected = box_iou(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    np.testing.assert_allclose(B.pairwise_iou(a, b), expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(boxes2d, boxes2d)
def test_pairwise_matches_the_paired_form_and_3d_extrusion(a, b):
    iou, iobb = B.pairwise_iou(a, b), B.pairwise_iobb(a, b)
    i, j = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
    np.testing.assert_array_equal(iou.ravel(), B.iou(a[i.ravel()], b[j.ravel()]))
    assert (iobb >= iou - 1e-12).all() and (iobb <= 1 + 1e-12).all()
    # extruding both boxes over the same slices leaves every ratio unchanged
    a3 = np.c_[a[:, :2], np.zeros(len(a)), a[:, 2:], np.full(len(a), 3.0)]
    b3 = np.c_[b[:, :2], np.zeros(len(b)), b[:, 2:], np.full(len(b), 3.0)]
    np.testing.assert_allclose(B.pairwise_iou(a3, b3), iou, rtol=1e-12)
    np.testing.assert_allclose(B.pairwise_iobb(a3, b3), iobb, rtol=1e-12)
