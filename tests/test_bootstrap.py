"""Patient bootstrap of FROC averages: the vectorised draws against a plain loop over draws that rebuilds
each resampled test set and scores it with the ordinary FROC functions; pooling over seeds, the paired
difference, and the matches.parquet round trip."""

import numpy as np
import pandas as pd
import pytest

from lens_core.evaluation.api import match
from lens_core.evaluation.bootstrap import (
    PatientItems,
    bootstrap_average,
    draw_counts,
    from_matching,
    from_matches_table,
    matches_table,
    paired_difference,
    pooled_average,
    resample_indices,
    resampled_sensitivities,
    run_averages,
)
from lens_core.evaluation.froc import LENS_FP_RATES, froc_curve, sensitivity_at


def loop_sensitivities(items: PatientItems, indices: np.ndarray) -> np.ndarray:
    """The reference: per draw, concatenate the drawn patients' lesions, FPs and units (a patient drawn
    twice contributes twice) and score that test set with froc_curve + sensitivity_at."""
    out = []
    for draw in indices:
        hits, fps, n_units = [], [], 0
        for p in draw:
            hits += list(items.gt_hit[items.gt_patient == p])
            fps += list(items.fp_score[items.fp_patient == p])
            n_units += int(items.units_per_patient[p])
        curve = froc_curve(np.array(hits), np.array(fps), n_units)
        out.append(sensitivity_at(curve, items.fp_rates) if hits else np.full(len(items.fp_rates), np.nan))
    return np.array(out)


def canonical(items: PatientItems) -> PatientItems:
    """Patients in sorted order: the order the bootstrap functions draw them in."""
    return items.aligned_to(sorted(items.patients))


def synthetic(seed=0, n_patients=25, quality=0.0):
    """A test set of patients with 1-3 sub-volumes each, 0-3 lesions per sub-volume, some missed; scores
    on a coarse grid so that ties across patients are common. ``quality`` shifts the hit scores up."""
    rng = np.random.default_rng(seed)
    units, patients = [], []
    for p in range(n_patients):
        for s in range(rng.integers(1, 4)):
            units.append(f"P{p}_S{s}")
            patients.append(f"P{p}")
    n_units = len(units)
    gt_unit = rng.integers(0, n_units, size=int(1.5 * n_units))
    hit = np.round(np.clip(rng.uniform(0.2, 1.0, len(gt_unit)) + quality, 0, 1), 1)
    hit[rng.uniform(size=len(gt_unit)) < 0.2] = -np.inf
    fp_unit = rng.integers(0, n_units, size=4 * n_units)
    fp = np.round(rng.uniform(0.0, 0.9, len(fp_unit)), 1)
    from lens_core.evaluation.froc import Matching

    m = Matching("lens3d", pd.DataFrame({"unit_index": gt_unit, "hit_score": hit}),
                 pd.DataFrame({"unit_index": fp_unit, "score": fp}), np.array(units, dtype=object), LENS_FP_RATES,
                 unit_info=pd.DataFrame({"patient_id": patients}, index=pd.Index(units)))
    return m


def test_vectorised_draws_equal_the_plain_loop():
    items = canonical(from_matching(synthetic()))
    idx = resample_indices(items.n_patients, 300, seed=7)
    fast = resampled_sensitivities(items, draw_counts(idx, items.n_patients))
    slow = loop_sensitivities(items, idx)
    assert fast.shape == (300, 7)
    np.testing.assert_array_equal(fast, slow)  # the same arithmetic, so the same floats
    # and the interval from the same seed is the interval of the loop's averages
    ci = bootstrap_average(items, n_boot=300, seed=7)
    assert (ci["low"], ci["high"]) == pytest.approx(tuple(np.quantile(slow.mean(axis=1), [0.025, 0.975])), abs=1e-12)


def test_small_blocks_give_the_same_draws(monkeypatch):
    import lens_core.evaluation.bootstrap as b

    items = from_matching(synthetic(3))
    counts = draw_counts(resample_indices(items.n_patients, 50, 1), items.n_patients)
    whole = resampled_sensitivities(items, counts)
    monkeypatch.setattr(b, "BLOCK_ELEMENTS", 1)  # one draw per block
    np.testing.assert_array_equal(resampled_sensitivities(items, counts), whole)


@pytest.mark.parametrize("margin", [0.05, 1.0, 2.0])  # all, some (51 of 200), no draws redone
def test_draws_scored_from_the_first_false_positives_equal_the_loop(monkeypatch, margin):
    """Many FPs per unit: draws are first scored from the highest-ranked FPs only (PREFIX_MARGIN x the
    highest rate's FPs); a draw whose curve does not pass the highest rate within them is redone with all.
    Scores on a coarse grid put ties across the cut."""
    import lens_core.evaluation.bootstrap as b

    monkeypatch.setattr(b, "PREFIX_MARGIN", margin)
    rng = np.random.default_rng(11)
    units = [f"u{i}" for i in range(40)]
    patients = [f"p{i // 4}" for i in range(40)]
    from lens_core.evaluation.froc import Matching

    m = Matching("lens3d", pd.DataFrame({"unit_index": rng.integers(0, 40, 60),
                                         "hit_score": np.round(rng.uniform(0, 1, 60), 2)}),
                 pd.DataFrame({"unit_index": rng.integers(0, 40, 40 * 30),
                               "score": np.round(rng.uniform(0, 1, 40 * 30), 2)}),
                 np.array(units, dtype=object), LENS_FP_RATES,
                 unit_info=pd.DataFrame({"patient_id": patients}, index=pd.Index(units)))
    items = canonical(from_matching(m))
    idx = resample_indices(items.n_patients, 200, seed=2)
    np.testing.assert_array_equal(resampled_sensitivities(items, draw_counts(idx, items.n_patients)),
                                  loop_sensitivities(items, idx))


def test_draw_without_resampling_is_the_point_estimate():
    m = synthetic(1)
    items = from_matching(m)
    ones = np.ones((1, items.n_patients))
    sens = sensitivity_at(froc_curve(m.truth["hit_score"], m.false_positives["score"], m.n_units))
    np.testing.assert_allclose(resampled_sensitivities(items, ones)[0], sens, rtol=0, atol=1e-12)


def test_resampling_unit_is_the_patient():
    """Two sub-volumes of one patient are drawn together: a patient whose two sub-volumes hold one found
    and one missed lesion gives sensitivity 1/2 in every draw of that patient alone."""
    units = ["a1", "a2", "b1"]
    from lens_core.evaluation.froc import Matching

    m = Matching("lens3d", pd.DataFrame({"unit_index": [0, 1, 2], "hit_score": [0.9, -np.inf, 0.8]}),
                 pd.DataFrame({"unit_index": [2], "score": [0.5]}), np.array(units, dtype=object), LENS_FP_RATES,
                 unit_info=pd.DataFrame({"patient_id": ["A", "A", "B"]}, index=units))
    items = from_matching(m)
    assert items.n_patients == 2 and items.units_per_patient.tolist() == [2, 1]
    idx = resample_indices(2, 400, seed=0)
    sens = resampled_sensitivities(items, draw_counts(idx, 2))
    only_a = (idx == 0).all(axis=1)
    assert only_a.any()
    np.testing.assert_allclose(sens[only_a], 0.5)  # never 0 or 1: a1 and a2 travel together
    np.testing.assert_allclose(sens, loop_sensitivities(items, idx), atol=1e-12)


def test_interval_brackets_the_estimate_is_reproducible_and_shrinks_with_more_patients():
    small, large = from_matching(synthetic(2, 20)), from_matching(synthetic(2, 200))
    ci = bootstrap_average(small, n_boot=500, seed=0)
    point = resampled_sensitivities(small, np.ones((1, small.n_patients))).mean()
    assert ci["low"] < point < ci["high"]
    again = bootstrap_average(small, n_boot=500, seed=0)  # same seed, same numbers
    assert (again["low"], again["high"]) == (ci["low"], ci["high"])
    assert bootstrap_average(small, n_boot=500, seed=1)["low"] != ci["low"]
    wide = ci["high"] - ci["low"]
    ci_large = bootstrap_average(large, n_boot=500, seed=0)
    assert ci_large["high"] - ci_large["low"] < wide / 2  # ~1/sqrt(10)


def test_pooled_over_seeds_resamples_patients_then_seeds_within_each_draw():
    runs = [canonical(from_matching(synthetic(5, quality=q))) for q in (0.0, 0.1, 0.2)]
    pooled = pooled_average(runs, n_boot=200, seed=3)
    idx = resample_indices(runs[0].n_patients, 200, seed=3)
    per_run = np.array([loop_sensitivities(r, idx).mean(axis=1) for r in runs])  # [seeds, draws]
    pick = np.random.default_rng([3, 3, 1]).integers(0, 3, size=(200, 3))  # each draw: 3 seeds, with replacement
    ref = np.array([per_run[pick[b], b].mean() for b in range(200)])
    assert (pooled["low"], pooled["high"]) == pytest.approx(tuple(np.quantile(ref, [0.025, 0.975])), abs=1e-12)


def test_the_seeds_spread_widens_the_interval_and_identical_seeds_do_not():
    """Two-level bootstrap (issue 21): a row whose seeds disagree gets a wider interval than patients alone
    give; three copies of one run give that run's interval exactly."""
    one = canonical(from_matching(synthetic(5, quality=0.1)))
    alone = bootstrap_average(one, n_boot=400, seed=0)
    copies = pooled_average([one, one, one], n_boot=400, seed=0)
    assert (copies["low"], copies["high"]) == pytest.approx((alone["low"], alone["high"]), abs=1e-12)
    spread = [canonical(from_matching(synthetic(5, quality=q))) for q in (-0.3, 0.1, 0.5)]
    patients_only = np.quantile(run_averages(spread, 400, 0).mean(axis=0), [0.025, 0.975])
    two_level = pooled_average(spread, n_boot=400, seed=0)
    assert two_level["high"] - two_level["low"] > 1.5 * (patients_only[1] - patients_only[0])


def test_paired_difference_uses_the_same_draws_on_both_sides():
    base = [canonical(from_matching(synthetic(5, quality=0.0)))]
    better = [canonical(from_matching(synthetic(5, quality=0.3)))]
    d = paired_difference(better, base, n_boot=300, seed=0)
    assert d["low"] > 0 and d["excludes_zero"]
    # a set against itself: every draw's difference is exactly 0 (an unpaired bootstrap would not be)
    same = paired_difference(base, base, n_boot=300, seed=0)
    assert same["low"] == same["high"] == 0.0 and not same["excludes_zero"]
    # reference: loop over draws, the same indices for both rows
    idx = resample_indices(base[0].n_patients, 300, seed=0)
    diff = loop_sensitivities(better[0], idx).mean(axis=1) - loop_sensitivities(base[0], idx).mean(axis=1)
    assert (d["low"], d["high"]) == pytest.approx(tuple(np.quantile(diff, [0.025, 0.975])), abs=1e-12)


def test_the_draws_do_not_depend_on_the_order_of_patients_or_runs():
    a, b = from_matching(synthetic(6, quality=0.1)), from_matching(synthetic(6))
    shuffled = a.aligned_to(a.patients[::-1])
    assert bootstrap_average(shuffled, n_boot=100)["low"] == bootstrap_average(a, n_boot=100)["low"]
    ab, ba = paired_difference([a], [b], n_boot=100), paired_difference([b], [a], n_boot=100)
    assert (ab["low"], ab["high"]) == pytest.approx((-ba["high"], -ba["low"]), abs=1e-12)


def test_sets_on_different_patients_cannot_be_paired():
    a, b = from_matching(synthetic(0, 10)), from_matching(synthetic(0, 11))
    with pytest.raises(ValueError, match="not on the same patients"):
        paired_difference([a], [b], n_boot=10)


def test_matches_table_round_trip_keeps_the_draws(tmp_path):
    m = synthetic(4)
    items = from_matching(m)
    t = matches_table(m)
    assert set(t["kind"]) == {"unit", "gt", "fp"} and (t["kind"] == "unit").sum() == m.n_units
    t.to_parquet(tmp_path / "matches.parquet")
    back = from_matches_table(pd.read_parquet(tmp_path / "matches.parquet"), m.fp_rates)
    a, b = bootstrap_average(back, n_boot=100, seed=0), bootstrap_average(items, n_boot=100, seed=0)
    assert (a["low"], a["high"]) == (b["low"], b["high"])
    with pytest.raises(ValueError, match="row 0: kind 'lesion'"):
        from_matches_table(t.assign(kind=["lesion"] + t["kind"].tolist()[1:]), m.fp_rates, "m.parquet")


def test_on_a_real_matching_the_patient_comes_from_the_units_table():
    truth = pd.DataFrame({"volume_id": ["v1", "v2", "v3"], "x1": 0.0, "y1": 0.0, "z1": 0.0, "x2": 4.0, "y2": 4.0,
                          "z2": 2.0})
    pred = truth.assign(score=[0.9, 0.1, 0.5])
    info = pd.DataFrame({"patient_id": ["p1", "p1", "p2"]}, index=pd.Index(["v1", "v2", "v3"]))
    m = match(pred, truth, "lens3d", units=["v1", "v2", "v3"], unit_info=info, unit="volume_id")
    items = from_matching(m)
    assert items.patients.tolist() == ["p1", "p2"] and items.units_per_patient.tolist() == [2, 1]
