"""DeepLesion's official 2D protocol and the LUNA16 protocol on hand-computed cases."""

import numpy as np
import pandas as pd
import pytest

from lens_core.evaluation import evaluate
from lens_core.evaluation.api import match
from lens_core.evaluation.froc import average_sensitivity, froc_curve, sensitivity_at
from lens_core.evaluation.luna import bootstrap_cpm, points_from_boxes


def curve_of(m):
    return froc_curve(m.truth["hit_score"], m.false_positives["score"], m.n_units)


# ---- DeepLesion 2D: per key-slice image, IoU >= 0.5 ------------------------------------------

DL_TRUTH = pd.DataFrame(
    [("v1", 5, 0, 0, 10, 10), ("v1", 5, 20, 20, 30, 30), ("v2", 3, 0, 0, 10, 10)],
    columns=["volume_id", "z", "x1", "y1", "x2", "y2"],
)
DL_PRED = pd.DataFrame(
    [
        ("v1", 5, 0, 0, 10, 10, 0.9),     # hits the first lesion
        ("v1", 5, 1, 1, 11, 11, 0.8),     # IoU 81/119 with it again: neither
        ("v1", 5, 20, 20, 25, 25, 0.7),   # inside the second lesion but IoU 0.25: FP (IoBB would hit)
        ("v2", 3, 40, 40, 50, 50, 0.65),  # FP
        ("v2", 3, 0, 0, 10, 12, 0.6),     # IoU 100/120: hits
        ("v1", 6, 0, 0, 10, 10, 0.95),    # not a key slice: not part of the test images
    ],
    columns=["volume_id", "z", "x1", "y1", "x2", "y2", "score"],
)


def test_deeplesion2d_hand_computed():
    m = match(DL_PRED, DL_TRUTH, "deeplesion2d")
    assert m.n_units == 2  # the two key-slice images
    assert m.truth["hit_score"].tolist() == [0.9, -np.inf, 0.6]
    curve = curve_of(m)
    assert curve["n_fp"].tolist() == [0, 0, 1, 2, 2]
    assert curve["n_tp"].tolist() == [0, 1, 1, 1, 2]
    # FPs per image at 0.5, 1, 2, 4, 8, 16: 1 FP/2 images -> 1/3 found; 2 FPs/2 -> 2/3
    np.testing.assert_allclose(sensitivity_at(curve, m.fp_rates), [1 / 3] + [2 / 3] * 5)
    _, summary = evaluate(DL_PRED, DL_TRUTH, "deeplesion2d", "toy")
    assert list(summary.columns[summary.columns.str.startswith("FP@")]) == [
        "FP@0.5", "FP@1", "FP@2", "FP@4", "FP@8", "FP@16"]


def test_deeplesion2d_threshold_is_iou():
    m = match(DL_PRED, DL_TRUTH, "deeplesion2d", threshold=0.25)  # now the 0.25-IoU box hits
    assert m.truth["hit_score"].tolist()[1] == 0.7


# ---- LUNA16: distance to the centre below the radius; excluded findings ignored --------------

NODULES = pd.DataFrame(
    [
        ("S1", 0, 0, 0, 10.0, False),   # n1
        ("S1", 30, 0, 0, 6.0, False),   # n2 (radius 3)
        ("S1", 60, 0, 0, -1.0, True),   # excluded finding, no diameter: 10 mm as in the script
        ("S2", 0, 0, 0, 8.0, False),    # n3, missed
    ],
    columns=["scan", "x", "y", "z", "diameter_mm", "excluded"],
)
MARKS = pd.DataFrame(
    [
        ("S1", 1, 1, 1, 0.9),     # hits n1
        ("S1", 2, 0, 0, 0.8),     # n1 hit by a second mark: neither
        ("S1", 60, 3, 0, 0.7),    # on the excluded finding: neither
        ("S1", 30, 2.9, 0, 0.6),  # 2.9 mm from n2: hits
        ("S1", 30, 3, 0, 0.95),   # exactly on the radius: not below it -> FP
        ("S3", 0, 0, 0, 0.5),     # scan without nodules: FP
        ("S2", 10, 0, 0, 0.4),    # 10 mm from n3 (radius 4): FP
    ],
    columns=["scan", "x", "y", "z", "score"],
)
SCANS = ["S1", "S2", "S3"]


def test_luna_hand_computed():
    m = match(MARKS, NODULES, "luna", units=SCANS)
    assert m.truth["hit_score"].tolist() == [0.9, 0.6, -np.inf]  # the missed nodule stays in
    assert sorted(m.false_positives["score"]) == [0.4, 0.5, 0.95]
    curve = curve_of(m)
    assert curve["n_fp"].tolist() == [0, 1, 1, 1, 2, 3]
    assert curve["n_tp"].tolist() == [0, 0, 1, 2, 2, 2]
    np.testing.assert_allclose(sensitivity_at(curve), [0, 0, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert average_sensitivity(curve) == pytest.approx(10 / 21)  # the CPM


def test_luna_keeps_at_most_max_marks_per_scan():
    m = match(MARKS, NODULES, "luna", units=SCANS, max_marks=2)  # S1 keeps 0.95 and 0.9 only
    assert m.truth["hit_score"].tolist() == [0.9, -np.inf, -np.inf]
    assert sorted(m.false_positives["score"]) == [0.4, 0.5, 0.95]


def test_luna_excluded_via_label_kind_and_bad_diameter():
    nod = NODULES.drop(columns="excluded").assign(label_kind=["gt", "gt", "excluded", "gt"])
    assert match(MARKS, nod, "luna", units=SCANS).truth["hit_score"].tolist() == [0.9, 0.6, -np.inf]
    with pytest.raises(ValueError, match="row 1: diameter must be positive"):
        match(MARKS, NODULES.assign(diameter_mm=[10, 0, 10, 8]), "luna", units=SCANS)


def test_luna_points_from_pixel_boxes():
    vols = pd.DataFrame({"volume_id": ["S1"], "spacing_x": [0.5], "spacing_y": [0.5], "spacing_z": [2.0]})
    # a nodule of diameter 6 mm at (10, 20, 30) mm, boxed as centre +- d/2 in pixels
    box = pd.DataFrame({"volume_id": ["S1"], "x1": [14.0], "y1": [34.0], "z1": [13.5],
                        "x2": [26.0], "y2": [46.0], "z2": [16.5]})
    p = points_from_boxes(box, vols)
    assert p[["scan", "x", "y", "z", "diameter_mm"]].iloc[0].tolist() == ["S1", 10.0, 20.0, 30.0, 6.0]
    with pytest.raises(ValueError, match="has no spacing"):
        points_from_boxes(box.assign(volume_id="S9"), vols)


def test_bootstrap_interval_brackets_the_cpm_and_collapses_on_identical_scans():
    rng = np.random.default_rng(1)
    scans = [f"s{i}" for i in range(60)]
    nod = pd.DataFrame({"scan": np.repeat(scans, 2), "x": rng.uniform(0, 100, 120), "y": 0.0, "z": 0.0,
                        "diameter_mm": 8.0})
    hits = nod.sample(frac=0.7, random_state=1).assign(score=rng.uniform(0.3, 1, 84))[["scan", "x", "y", "z", "score"]]
    fps = pd.DataFrame({"scan": rng.choice(scans, 300), "x": 500.0, "y": 0.0, "z": 0.0, "score": rng.uniform(0, 0.9, 300)})
    marks = pd.concat([hits, fps], ignore_index=True)
    m = match(marks, nod, "luna", units=scans)
    cpm = average_sensitivity(curve_of(m))
    ci = bootstrap_cpm(m, n_boot=200, seed=0)
    assert ci["low"] < cpm < ci["high"]
    assert bootstrap_cpm(m, n_boot=200, seed=0)["low"] == ci["low"]  # seeded: reproducible
    # every scan alike: any resample gives the same curve, so the interval is a point
    marks2 = pd.concat([MARKS[MARKS.scan == "S1"].assign(scan=s) for s in "abc"])
    nod2 = pd.concat([NODULES[NODULES.scan == "S1"].assign(scan=s) for s in "abc"])
    m2 = match(marks2, nod2, "luna")
    ci2 = bootstrap_cpm(m2, n_boot=50)
    assert ci2["low"] == pytest.approx(ci2["high"]) == pytest.approx(average_sensitivity(curve_of(m2)))
