"""Preprocessing throughput: MB of raw CT (original voxels, as stored) per second per core.

    scripts/in-env python benchmarks/preprocess.py [--size-px 128] [--patients 16]

Writes the built-in corpus to a temporary folder, then times `preprocess_dataset` for each format on one
process (one core), at the CPU preset (2 mm / 4 mm) and at the paper's sampling (0.8 mm / 2 mm).
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: SimpleITK's resampler is multi-threaded

import SimpleITK as sitk  # noqa: E402

from lens_core.corpus.write import write_corpus  # noqa: E402
from lens_core.preprocess.volumes import PrepParams, preprocess_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-px", type=int, default=128)
    ap.add_argument("--patients", type=int, default=16)
    args = ap.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        write_corpus(root, {"size_px": args.size_px, "deeplesion": {"patients": args.patients}}, progress=False)
        print(f"{'format':<11} {'preset':<6} {'volumes':>7} {'raw MB':>8} {'seconds':>8} {'MB/s/core':>10}")
        for preset, params in (("cpu", PrepParams(2.0, 4.0)), ("paper", PrepParams(0.8, 2.0))):
            for fmt in ("deeplesion", "luna", "lits", "nihln"):
                t = time.perf_counter()
                res = preprocess_dataset(fmt, root / fmt, Path(tmp) / preset / fmt, params, progress=False)
                dt = time.perf_counter() - t
                mb = res["raw_bytes"] / 1e6
                print(f"{fmt:<11} {preset:<6} {res['volumes']:>7} {mb:>8.1f} {dt:>8.2f} {mb / dt:>10.1f}")


if __name__ == "__main__":
    main()
