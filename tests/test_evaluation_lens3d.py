"""The LENS 3D protocol (paper Sec. VI-C) on hand-computed cases, plus properties of the FROC."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lens_core.evaluation import evaluate, froc_curve, match_lens3d, sensitivity_at
from lens_core.evaluation.froc import interpolate_sensitivity
from lens_core.evaluation.stratify import froc_table, size_bin

COLS = ["subvolume", "x1", "y1", "z1", "x2", "y2", "z2"]


def table(rows, score=False):
    return pd.DataFrame(rows, columns=COLS + (["score"] if score else []))


# sub-volumes A, B (with lesions) and C (none); g1 and g2 overlap on x in [5, 10)
TRUTH = table([
    ("A", 0, 0, 0, 10, 10, 2),   # g1
    ("A", 5, 0, 0, 15, 10, 2),   # g2
    ("B", 0, 0, 0, 4, 4, 1),     # g3
])
PRED = table([
    ("A", 0, 0, 0, 5, 10, 2, 0.9),      # p1: inside g1 only -> hits g1
    ("A", 0, 0, 0, 6, 10, 2, 0.8),      # p2: g1 again (IoBB with g2 = 20/120) -> neither hit nor FP
    ("C", 0, 0, 0, 8, 8, 2, 0.7),       # p3: sub-volume without lesions -> FP
    ("B", 2, 2, 0, 12, 12, 1, 0.6),     # p4: IoBB with g3 = 4/100 < 0.3 -> FP
    ("B", 0, 0, 0, 4, 4, 1, 0.6),       # p6: ties with p4, hits g3
    ("A", 5, 0, 0, 10, 10, 2, 0.5),     # p5: inside g1 (already hit) and g2 -> hits g2
], score=True)
UNITS = ["A", "B", "C"]


def test_hand_computed_curve_and_sensitivities():
    m = match_lens3d(PRED, TRUTH, UNITS)
    assert m.truth["hit_score"].tolist() == [0.9, 0.5, 0.6]
    assert sorted(m.false_positives["score"]) == [0.6, 0.7]
    curve = froc_curve(m.truth["hit_score"], m.false_positives["score"], m.n_units)
    # operating points only between distinct scores: the tie (p4, p6) enters together;
    # p2 (score 0.8) changes nothing, so no point of its own
    assert curve["threshold"].tolist() == [np.inf, 0.9, 0.7, 0.6, 0.5]
    assert curve["n_fp"].tolist() == [0, 0, 1, 2, 2]
    assert curve["n_tp"].tolist() == [0, 1, 1, 2, 3]
    sens = sensitivity_at(curve)
    # 3 sub-volumes: 1/8 and 1/4 FP lie before the first FP; 1/2 on the tie's diagonal
    # from (1/3, 1/3) to (2/3, 2/3); from 2/3 FP on, the top: every lesion found
    np.testing.assert_allclose(sens, [1 / 3, 1 / 3, 1 / 2, 1, 1, 1, 1])
    froc, summary = evaluate(PRED, TRUTH, "lens3d", "toy", units=UNITS)
    assert summary.loc[0, "average"] == pytest.approx(31 / 42)
    assert summary.loc[0, "n_gt"] == 3 and summary.loc[0, "n_units"] == 3


def test_empty_subvolumes_count_in_the_fp_rate():
    with_c = froc_curve(*_scores(match_lens3d(PRED, TRUTH, UNITS)))
    without_c = match_lens3d(PRED[PRED.subvolume != "C"], TRUTH, ["A", "B"])
    assert with_c["fp_rate"].iloc[-1] == pytest.approx(2 / 3)
    assert froc_curve(*_scores(without_c))["fp_rate"].iloc[-1] == pytest.approx(1 / 2)
    # listing more lesion-free sub-volumes lowers the FP rate of the same detections
    assert froc_curve(*_scores(match_lens3d(PRED, TRUTH, UNITS + ["D", "E", "F"])))["fp_rate"].iloc[-1] == pytest.approx(1 / 3)


def _scores(m):
    return m.truth["hit_score"], m.false_positives["score"], m.n_units


def test_no_predictions_gives_zero_sensitivity_everywhere():
    froc, summary = evaluate(PRED.iloc[:0], TRUTH, "lens3d", "none", units=UNITS)
    assert froc.loc[froc.stratum_by == "all", "n_tp"].tolist() == [0]
    assert summary.loc[0, ["FP@0.125", "FP@8", "average"]].tolist() == [0, 0, 0]


def test_a_prediction_on_only_already_hit_lesions_is_neither():
    dup = PRED.iloc[[0, 1]]  # p1 and its duplicate p2
    m = match_lens3d(dup, TRUTH, UNITS)
    assert len(m.false_positives) == 0 and m.truth["hit_score"].tolist()[0] == 0.9


def test_threshold_is_inclusive_at_point_three():
    gt = table([("A", 0, 0, 0, 3, 10, 1)])
    pred = table([("A", 0, 0, 0, 10, 10, 1, 1.0)], score=True)  # IoBB exactly 0.3
    assert match_lens3d(pred, gt).truth["hit_score"].tolist() == [1.0]
    assert len(match_lens3d(pred, gt, iobb_threshold=0.31).false_positives) == 1


def test_bad_rows_are_named_and_unknown_subvolumes_rejected():
    bad = PRED.copy()
    bad.loc[3, "x2"] = 1  # x2 < x1
    with pytest.raises(ValueError, match="predictions.*row 3"):
        match_lens3d(bad, TRUTH, UNITS)
    with pytest.raises(ValueError, match="none of its 'subvolume' values"):
        match_lens3d(PRED.assign(subvolume="Z"), TRUTH, UNITS)
    with pytest.raises(ValueError, match="missing column"):
        match_lens3d(PRED.drop(columns="score"), TRUTH, UNITS)


def test_stratified_sensitivity_keeps_all_fps_but_only_its_lesions():
    truth = TRUTH.assign(lesion_type=["liver", "lung", "liver"], size_mm=[25.0, 8.0, 40.0], dataset="DL")
    froc = froc_table(match_lens3d(PRED, truth, UNITS), "toy")
    lung = froc[(froc.stratum_by == "lesion_type") & (froc.stratum == "lung")]
    assert lung["n_gt"].iloc[0] == 1 and lung["n_fp"].max() == 2
    assert set(froc.loc[froc.stratum_by == "size_bin", "stratum"]) == {"<10 mm", "20-30 mm", ">=30 mm"}
    ds = froc[froc.stratum_by == "dataset"]
    # sub-volume C has no lesion and no unit_info: its dataset is unknown, its FP goes there
    assert dict(ds.groupby("stratum")["n_fp"].max()) == {"DL": 1, "unknown": 1}
    assert size_bin([9.99, 10, 30, np.nan]).tolist() == ["<10 mm", "10-20 mm", ">=30 mm", "unknown size"]


# ---- properties -------------------------------------------------------------------------------

box = st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 5),
                st.integers(1, 12), st.integers(1, 12), st.integers(1, 4))
case = st.tuples(
    st.lists(st.tuples(st.integers(0, 4), box), max_size=12),  # ground truths
    st.lists(st.tuples(st.integers(0, 4), box, st.integers(0, 10)), max_size=25),  # predictions (score in tenths)
)


def frames(gts, preds):
    def row(u, b):
        x, y, z, w, h, d = b
        return (f"s{u}", x, y, z, x + w, y + h, z + d)

    truth = table([row(u, b) for u, b in gts])
    pred = table([row(u, b) + (s / 10,) for u, b, s in preds], score=True)
    return truth, pred


def sens(pred, truth, units):
    m = match_lens3d(pred, truth, units)
    return sensitivity_at(froc_curve(*_scores(m)))


UNITS5 = [f"s{i}" for i in range(5)]


@settings(max_examples=80, deadline=None)
@given(case)
def test_curve_is_monotone(c):
    truth, pred = frames(*c)
    m = match_lens3d(pred, truth, UNITS5)
    curve = froc_curve(*_scores(m))
    assert (np.diff(curve["fp_rate"]) >= 0).all() and (np.diff(curve["n_tp"]) >= 0).all()
    assert (np.diff(curve["threshold"]) < 0).all()
    grid = np.linspace(0, 10, 200)
    s = interpolate_sensitivity(curve["fp_rate"], curve["sensitivity"], grid)
    if len(truth):
        assert (np.diff(s) >= -1e-12).all() and s.max() <= 1


@settings(max_examples=80, deadline=None)
@given(case, st.integers(0, 11), st.integers(0, 10))
def test_adding_a_perfect_detection_never_lowers_sensitivity(c, which, score):
    truth, pred = frames(*c)
    if len(truth) == 0:
        return
    perfect = truth.iloc[[which % len(truth)]].assign(score=score / 10)
    before = sens(pred, truth, UNITS5)
    after = sens(pd.concat([pred, perfect], ignore_index=True), truth, UNITS5)
    assert (after >= before - 1e-12).all()


@settings(max_examples=80, deadline=None)
@given(case, st.randoms(use_true_random=False))
def test_permuting_subvolumes_and_rows_changes_nothing(c, rnd):
    truth, pred = frames(*c)
    perm = UNITS5[:]
    rnd.shuffle(perm)
    rename = dict(zip(UNITS5, perm))  # relabel the sub-volumes and list them in another order
    shuffled_units = sorted(perm, key=lambda _: rnd.random())
    p2 = pred.assign(subvolume=pred.subvolume.map(rename)).sample(frac=1, random_state=rnd.randint(0, 99))
    t2 = truth.assign(subvolume=truth.subvolume.map(rename)).sample(frac=1, random_state=rnd.randint(0, 99))
    np.testing.assert_array_equal(sens(pred, truth, UNITS5), sens(p2, t2, shuffled_units))


def test_volume_detections_are_assigned_to_the_subvolume_holding_their_centre():
    from lens_core.evaluation.lens3d import assign_subvolumes

    ranges = pd.DataFrame({"subvolume": ["v_010-019", "v_030-039"], "volume_id": "v",
                           "z_start": [10.0, 30.0], "z_stop": [20.0, 40.0]})
    pred = pd.DataFrame({"volume_id": ["v", "v", "v", "w"], "z1": [8.0, 18.0, 22.0, 12.0],
                         "z2": [14.0, 24.0, 26.0, 14.0], "score": [0.1, 0.2, 0.3, 0.4]})
    out = assign_subvolumes(pred, ranges)
    # centres 11 (first), 21 and 24 (between the sub-volumes: not annotated), 13 in another volume
    assert out[["subvolume", "score"]].values.tolist() == [["v_010-019", 0.1]]
