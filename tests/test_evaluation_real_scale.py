"""The evaluator at real scale: DeepLesion's 800 manually annotated test sub-volumes (4,155 boxes),
detections made from jittered ground truth plus random false positives, checked against the plain
per-prediction loop of tests/reference_froc.py."""

import numpy as np
import pytest
from reference_froc import DATA, as_lists, plain_froc, synthetic_predictions

from lens_core.evaluation import evaluate, froc_curve, load_manual_3d, match_lens3d, sensitivity_at


@pytest.fixture(scope="module")
def manual_test_set():
    return load_manual_3d(DATA / "boxes.csv", DATA / "subvolumes.csv", split="test")


def test_loader_gives_the_papers_test_set(manual_test_set):
    truth, subvolumes = manual_test_set
    assert len(subvolumes) == 800 and len(truth) == 4155  # Sec. VI-A
    assert len(set(subvolumes) - set(truth["subvolume"])) == 31  # lesion-free sub-volumes still listed
    # inclusive extents -> exclusive upper bounds: every box spans at least one pixel and slice
    assert ((truth[["x2", "y2", "z2"]].to_numpy() - truth[["x1", "y1", "z1"]].to_numpy()) >= 1).all()
    first = truth["subvolume"].str.rsplit("_", n=1).str[1].str.split("-").str[0].astype(int)
    rel, _ = load_manual_3d(DATA / "boxes.csv", DATA / "subvolumes.csv", split="test", relative_z=True)
    np.testing.assert_array_equal(rel["z1"], truth["z1"] - first)


def test_loader_names_the_file_of_a_bad_row(tmp_path):
    bad = (DATA / "boxes.csv").read_text().splitlines()
    bad.append("test,999999_01_01_001-002,999999_01_01,1,2,0,0,1,5,5,2")
    (tmp_path / "boxes.csv").write_text("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match=r"boxes\.csv: row \d+: sub-volume '999999_01_01_001-002'"):
        load_manual_3d(tmp_path / "boxes.csv", DATA / "subvolumes.csv")


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_plain_loop_on_800_subvolumes(manual_test_set, seed):
    truth, subvolumes = manual_test_set
    pred = synthetic_predictions(truth, subvolumes, DATA / "subvolumes.csv", per_subvolume=20, seed=seed)
    assert pred["score"].duplicated().any()  # ties are part of the check

    m = match_lens3d(pred, truth, subvolumes)
    curve = froc_curve(m.truth["hit_score"], m.false_positives["score"], m.n_units)
    ref_curve, ref_sens = plain_froc(*as_lists(pred, truth), subvolumes)

    # the loop has a point after every distinct score; drop those where nothing changed
    ref_points = [p for i, p in enumerate(ref_curve) if i == 0 or p != ref_curve[i - 1]]
    assert list(zip(curve["n_fp"].astype(int), curve["n_tp"].astype(int))) == ref_points
    np.testing.assert_allclose(sensitivity_at(curve), ref_sens, rtol=0, atol=1e-12)

    _, summary = evaluate(pred, truth, "lens3d", "jittered", units=subvolumes)
    assert summary.loc[0, "average"] == pytest.approx(np.mean(ref_sens), abs=1e-12)
    assert 0.1 < summary.loc[0, "average"] < 0.95  # a non-trivial operating range was exercised


def test_every_real_box_falls_in_its_own_subvolume_range(manual_test_set):
    from lens_core.evaluation.lens3d import assign_subvolumes, subvolume_ranges

    truth, _ = manual_test_set
    ranges = subvolume_ranges(DATA / "subvolumes.csv", split="test")
    back = assign_subvolumes(truth.drop(columns="subvolume").assign(orig=truth["subvolume"]), ranges)
    assert len(back) == len(truth) and (back["subvolume"] == back["orig"]).all()
