"""LENS 3D FROC evaluator vs the plain per-prediction loop (issue 4): same numbers, speed ratio.

Input: DeepLesion's 800 manually annotated test sub-volumes (4,155 real boxes) with ~50
detections per sub-volume made from jittered ground truth plus random false positives
(tests/reference_froc.py builds them; the plain loop lives there too). Prints the sensitivities of
both, their timings (best of --repeat, after one warm-up call of the evaluator that loads its numba
kernel) and the ratio. Target: identical numbers, >= 20x faster.

    python benchmarks/froc_speed.py [--per-subvolume 50] [--repeat 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_froc import DATA, as_lists, plain_froc, synthetic_predictions  # noqa: E402

from lens_core.evaluation import froc_curve, load_manual_3d, match_lens3d, sensitivity_at  # noqa: E402


def evaluator(pred, truth, subvolumes):
    m = match_lens3d(pred, truth, subvolumes)
    return sensitivity_at(froc_curve(m.truth["hit_score"], m.false_positives["score"], m.n_units))


def best_time(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-subvolume", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    truth, subvolumes = load_manual_3d(DATA / "boxes.csv", DATA / "subvolumes.csv", split="test")
    pred = synthetic_predictions(truth, subvolumes, DATA / "subvolumes.csv", args.per_subvolume, args.seed)
    print(f"input: {len(subvolumes)} sub-volumes, {len(truth)} lesions, {len(pred)} predictions "
          f"({len(pred) / len(subvolumes):.1f} per sub-volume, {pred['score'].duplicated().sum()} tied scores)")

    evaluator(pred, truth, subvolumes)  # warm-up: loads (or compiles once) the numba matching kernel
    t_fast, sens_fast = best_time(lambda: evaluator(pred, truth, subvolumes), args.repeat)
    # the plain loop takes plain lists; converting the tables is not counted against it
    preds, gts = as_lists(pred, truth)
    t_plain, (_, sens_plain) = best_time(lambda: plain_froc(preds, gts, subvolumes), max(1, args.repeat // 2))

    rates = ["1/8", "1/4", "1/2", "1", "2", "4", "8"]
    print(f"{'FPs/sub-volume':>15} " + " ".join(f"{r:>7}" for r in rates) + "  average")
    for name, s in (("evaluator", sens_fast), ("plain loop", sens_plain)):
        print(f"{name:>15} " + " ".join(f"{100 * v:7.2f}" for v in s) + f"  {100 * np.mean(s):7.2f}")
    identical = np.array_equal(np.asarray(sens_fast), np.asarray(sens_plain))
    max_diff = float(np.max(np.abs(np.asarray(sens_fast) - np.asarray(sens_plain))))
    print(f"identical numbers: {identical} (max |diff| = {max_diff:.2e})")
    print(f"evaluator: {1000 * t_fast:8.1f} ms   plain loop: {1000 * t_plain:8.1f} ms   "
          f"speed-up: {t_plain / t_fast:5.1f}x (target >= 20x)")
    return 0 if max_diff <= 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())
