"""Tracklet kernel vs the pure-Python reference (issue 5): throughput, ratio, scaling.

Synthetic proposals at ~10 boxes per slice, 100 slices per volume: half the boxes follow lesions that
persist over several slices (small jitter), half are scattered false positives, as 2D proposals of a
detector look. Prints boxes/s for the kernel alone (sorted input), the public wrapper on sorted input
and on shuffled input (which adds the (volume, z) sort), and the reference where it finishes in time.

    python benchmarks/tracklets.py [--sizes 1e4 1e5 1e6 1e7] [--reference-max 1e5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_tracklets import reference_tracklets  # noqa: E402

from lens_core.tracklets import _tracklet_kernel, build_tracklets  # noqa: E402

BOXES_PER_SLICE = 10
SLICES_PER_VOLUME = 100


def synthetic(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_slices = -(-n // BOXES_PER_SLICE)
    slice_idx = np.repeat(np.arange(n_slices), BOXES_PER_SLICE)[:n]
    volume = (slice_idx // SLICES_PER_VOLUME).astype(np.int64)
    z = (slice_idx % SLICES_PER_VOLUME).astype(np.int64)
    k = np.arange(n) % BOXES_PER_SLICE
    # Lesion k of a volume: a fixed centre with a small per-slice jitter; lesions last ~8 slices.
    lesion = k < BOXES_PER_SLICE // 2
    centre = rng.uniform(50, 450, size=(volume.max() + 1, BOXES_PER_SLICE, 2, 1 + SLICES_PER_VOLUME // 8))
    c = centre[volume, k, :, z // 8] + rng.normal(0, 1.0, size=(n, 2))
    c = np.where(lesion[:, None], c, rng.uniform(0, 512, size=(n, 2)))
    half = np.where(lesion, 10.0, rng.uniform(3, 20, size=n))[:, None] + rng.normal(0, 0.5, size=(n, 1))
    half = np.maximum(half, 1.0)
    boxes = np.concatenate([c - half, c + half], axis=1).astype(np.float32)
    return volume, z, boxes


def best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7])
    ap.add_argument("--reference-max", type=float, default=1e5)
    ap.add_argument("--theta", type=float, default=0.5)
    args = ap.parse_args(argv)

    v, z, b = synthetic(1000)
    build_tracklets(v, z, b, args.theta)  # compile (or load the numba cache) outside the timings
    print(f"{'boxes':>10} {'kernel Mbox/s':>14} {'wrapper sorted':>15} {'wrapper shuffled':>17} "
          f"{'reference box/s':>16} {'kernel/ref':>11} {'tracklets':>10}")
    prev = None
    for size in args.sizes:
        n = int(size)
        v, z, b = synthetic(n)
        reps = 5 if n <= 1e6 else 2
        t_k, ids = best_of(lambda: _tracklet_kernel(v, z, b, args.theta), reps)
        t_w, _ = best_of(lambda: build_tracklets(v, z, b, args.theta), reps)
        perm = np.random.default_rng(1).permutation(n)
        vs, zs, bs = v[perm], z[perm], b[perm]
        t_s, ids_s = best_of(lambda: build_tracklets(vs, zs, bs, args.theta), reps)
        # Numbering follows the order inside a slice, so compare the partitions, not the ids.
        pairs = np.unique(np.stack([ids_s, ids[perm]]), axis=1).shape[1]
        assert pairs == len(np.unique(ids_s)) == len(np.unique(ids))
        ref = ratio = "-"
        if n <= args.reference_max:
            t_r, ref_ids = best_of(lambda: reference_tracklets(v, z, b, args.theta), 1)
            if ref_ids != ids.tolist():
                raise SystemExit(f"kernel and reference disagree at n={n}")
            ref, ratio = f"{n / t_r:16,.0f}", f"{t_r / t_k:10.0f}x"
        print(f"{n:>10,} {n / t_k / 1e6:14.1f} {n / t_w / 1e6:15.1f} {n / t_s / 1e6:17.1f} "
              f"{ref:>16} {ratio:>11} {int(ids.max()) + 1:>10,}")
        if prev is not None:
            print(f"{'':>10} scaling: time x{t_k / prev[1]:.1f} for boxes x{n / prev[0]:.0f}")
        prev = (n, t_k)
    print("target: >= 10 M boxes/s on one core (kernel), >= 100x the reference")


if __name__ == "__main__":
    main()
