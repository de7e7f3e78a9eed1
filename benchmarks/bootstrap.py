"""Patient bootstrap of the FROC average: the vectorised draws (lens_core.evaluation.bootstrap) against a loop
over draws, at the default run's scale and at the paper's (800 sub-volumes).

The loop is the per-draw numpy computation the evaluator used before (reweight the ranked items by the draw's
patient counts, one cumulative sum and one interpolation per draw); both give the same numbers (checked here,
and against a plain Python rebuild of each draw in tests/test_bootstrap.py).

    scripts/in-env python benchmarks/bootstrap.py [--draws 2000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from lens_core.evaluation.bootstrap import (
    draw_counts,
    from_matching,
    resample_indices,
    resampled_sensitivities,
)
from lens_core.evaluation.froc import LENS_FP_RATES, Matching, interpolate_sensitivity


def synthetic(n_patients: int, units_per_patient: int, lesions_per_unit: float, fps_per_unit: int, seed=0):
    rng = np.random.default_rng(seed)
    n_units = n_patients * units_per_patient
    units = np.array([f"u{i}" for i in range(n_units)], dtype=object)
    patients = [f"p{i // units_per_patient}" for i in range(n_units)]
    gt_unit = rng.integers(0, n_units, int(lesions_per_unit * n_units))
    hit = rng.uniform(0.05, 1, len(gt_unit)).round(3)
    hit[rng.uniform(size=len(hit)) < 0.3] = -np.inf
    fp_unit = rng.integers(0, n_units, fps_per_unit * n_units)
    fp = rng.uniform(0.01, 0.95, len(fp_unit)).round(3)
    return Matching("lens3d", pd.DataFrame({"unit_index": gt_unit, "hit_score": hit}),
                    pd.DataFrame({"unit_index": fp_unit, "score": fp}), units, LENS_FP_RATES,
                    unit_info=pd.DataFrame({"patient_id": patients}, index=pd.Index(units)))


def loop_draws(items, counts):
    """One draw at a time: reweight the ranked items, cumulative sums, interpolate."""
    found = np.isfinite(items.gt_hit)
    scores = np.concatenate([items.gt_hit[found], items.fp_score])
    patient = np.concatenate([items.gt_patient[found], items.fp_patient])
    is_tp = np.r_[np.ones(found.sum(), bool), np.zeros(len(items.fp_score), bool)]
    order = np.argsort(-scores, kind="stable")
    scores, patient, is_tp = scores[order], patient[order], is_tp[order]
    last = np.ones(len(scores), bool)
    last[:-1] = scores[1:] != scores[:-1]
    gt_per_patient = np.bincount(items.gt_patient, minlength=items.n_patients)
    out = np.empty((len(counts), len(items.fp_rates)))
    for b, w in enumerate(counts.astype(np.float64)):
        iw = w[patient]
        n_tp = np.r_[0.0, np.cumsum(np.where(is_tp, iw, 0.0))[last]]
        n_fp = np.r_[0.0, np.cumsum(np.where(is_tp, 0.0, iw))[last]]
        out[b] = interpolate_sensitivity(n_fp / (w @ items.units_per_patient), n_tp / (w @ gt_per_patient),
                                         items.fp_rates)
    return out


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    scales = {
        # the default run: ~20 test volumes of 4 patients, ~2 lesions and ~60 proposals per volume
        "default run (4 patients, 20 volumes)": (4, 5, 2.0, 60),
        # the paper's test set: 800 sub-volumes (~4 lesions each), 50 detections per sub-volume
        "paper scale (400 patients, 800 sub-volumes)": (400, 2, 4.0, 50),
    }
    print(f"{'scale':46s} {'items':>7s} {'loop s':>8s} {'vectorised s':>13s} {'ratio':>6s}")
    for name, spec in scales.items():
        items = from_matching(synthetic(*spec))
        counts = draw_counts(resample_indices(items.n_patients, args.draws, 0), items.n_patients)
        t_loop, slow = best_of(lambda: loop_draws(items, counts), args.repeat)
        t_vec, fast = best_of(lambda: resampled_sensitivities(items, counts), args.repeat)
        assert np.allclose(fast, slow, rtol=0, atol=1e-12, equal_nan=True), "the two disagree"
        n_items = int(np.isfinite(items.gt_hit).sum() + len(items.fp_score))
        print(f"{name:46s} {n_items:7d} {t_loop:8.3f} {t_vec:13.3f} {t_loop / t_vec:5.1f}x")


if __name__ == "__main__":
    main()
