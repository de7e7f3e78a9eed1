"""The matching kernel and the curve arithmetic against slow, plain formulations on random input."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lens_core import boxes as B
from lens_core.evaluation.froc import (
    froc_curve,
    pair_candidates,
    ranked_items,
    weighted_operating_points,
)
from lens_core.evaluation.matching import match_pairs


def random_boxes(rng, n, d):
    lo = rng.integers(0, 20, (n, d)).astype(float)
    return np.hstack([lo, lo + rng.integers(1, 10, (n, d))])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(2, "iou", 0.5), (3, "iobb", 0.3), (3, "iou", 0.1), (2, "iobb", 0.7)]))
def test_kernel_agrees_with_the_box_algebra(seed, spec):
    d, overlap, thr = spec
    rng = np.random.default_rng(seed)
    n_pred, n_gt, n_units = rng.integers(0, 30), rng.integers(0, 12), 4
    pred, gt = random_boxes(rng, n_pred, d), random_boxes(rng, n_gt, d)
    pu, gu = rng.integers(0, n_units, n_pred), rng.integers(0, n_units, n_gt)
    scores = rng.integers(0, 5, n_pred) / 4
    hit, is_fp = match_pairs(pred, pu, scores, gt, gu, n_units, overlap, thr)

    ratio = (B.pairwise_iou if overlap == "iou" else B.pairwise_iobb)(pred, gt)  # [P, G]
    match = (ratio >= thr) & (pu[:, None] == gu[None, :])
    np.testing.assert_array_equal(is_fp, ~match.any(axis=1))
    best = np.where(match, scores[:, None], -np.inf).max(axis=0, initial=-np.inf)
    np.testing.assert_array_equal(hit, best)


def test_pair_candidates_lists_exactly_the_same_unit_pairs():
    rng = np.random.default_rng(0)
    pu, gu = rng.integers(0, 7, 50), rng.integers(0, 7, 20)
    pi, gi = pair_candidates(pu, gu)
    expected = {(i, j) for i in range(50) for j in range(20) if pu[i] == gu[j]}
    assert set(zip(pi.tolist(), gi.tolist())) == expected and len(pi) == len(expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.just(-np.inf), st.integers(0, 6).map(lambda v: v / 6)), max_size=15),
       st.lists(st.integers(0, 6).map(lambda v: v / 6), max_size=20))
def test_counting_curve_equals_the_ranked_cumulative_curve(hits, fps):
    curve = froc_curve(hits, fps, n_units=3)
    scores, is_tp, _ = ranked_items(hits, fps)
    thr, n_fp, n_tp = weighted_operating_points(scores, is_tp.astype(float), (~is_tp).astype(float))
    np.testing.assert_array_equal(curve["threshold"], thr)
    np.testing.assert_array_equal(curve["n_fp"], n_fp)
    np.testing.assert_array_equal(curve["n_tp"], n_tp)
