"""Where a LENS training epoch and a `lens propose` job spend their time (issue 22: profile first).

    scripts/in-env python benchmarks/profile_lens.py [--results results] [--top 15] [--threads 2]

Runs, on a finished default run's outputs (results/prep, results/lens/round1/lens.pt):
  * one epoch of `lens train` with the run's `train:` config (the real loop: sampling, reading, augmenting,
    targets, forward, Eq. 3, backward, RAdam), in a scratch folder;
  * `lens propose` of DeepLesion's validation split with the round-1 model (the real `propose`).
Each under torch.profiler (operators, by self CPU time) and cProfile (Python functions, by own time), and
prints the top entries of both: the operators say what the math costs, the functions what Python costs
around it.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile


def profiled(label: str, fn, top: int) -> None:
    prof_py = cProfile.Profile()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        prof_py.enable()
        fn()
        prof_py.disable()
    wall = time.perf_counter() - t
    print(f"\n=== {label}: {wall:.1f} s under the profilers ===")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40))
    s = io.StringIO()
    pstats.Stats(prof_py, stream=s).sort_stats("tottime").print_stats(top)
    lines = s.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    print("\n".join(lines[start:start + top + 1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--config", type=Path, default=Path("config.yaml"))
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="batches of the epoch (default: the config's epoch)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    from lens_core.inference.expert_proposals import propose
    from lens_core.model.lens import load_lens
    from lens_core.training.config import config_from_mapping
    from lens_core.training.loop import train

    train_cfg = dict(yaml.safe_load(a.config.read_text())["train"])
    train_cfg["epochs"] = 1
    # the steps alone: with val_every the epoch would end in a validation pass (whole-slice inference, as
    # `lens propose`, which is profiled apart below)
    train_cfg["val_every"] = 0
    if a.steps:
        train_cfg["steps_per_epoch"] = a.steps
    cfg = config_from_mapping(train_cfg, str(a.config))
    prep = a.results / "prep"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"train: preset {cfg.preset}, {cfg.slices} slices, crop {cfg.crop_size}, batch {cfg.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        profiled("one training epoch (lens train)",
                 lambda: train(cfg, prep, Path(tmp) / "lens", device="cpu", progress=False), a.top)
    model, meta = load_lens(a.results / "lens" / "round1" / "lens.pt")
    profiled("lens propose deeplesion val (round 1)",
             lambda: propose(model, prep, "deeplesion", "val", (0, 1), meta["fuse_experts"], torch.device("cpu")),
             a.top)


if __name__ == "__main__":
    main()
