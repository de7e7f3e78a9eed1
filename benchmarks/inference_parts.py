"""Where one slice of `lens propose` spends its time, part by part (issue 22), for each AFP trunk side by side.

    scripts/in-env python benchmarks/inference_parts.py [--threads 1] [--precision bf16] [--reps 2] [--config C ...]

Columns: the paper's per-dataset AFPs and the shared trunk, at LENS's default size, then the model of each --config
C (its train: section's afp_trunk, fpn_channels, afp_pre_nms, proposals_per_afp, pool_top_n).

Runs `propose_volume` (the path `lens propose` and `lens detect` share) on the CT-like 32-slice 112 x 144 volume of
benchmarks/lens_speed.py, with random weights, and times the model's parts by wrapping their methods: the
backbone's CNN stages and FPN, the AFPs (the centerness maps, the boxes at the best cells, their NMS), ROIAlign and
the head's FC layers. Parts nest (the AFPs' boxes include their size branch at the proposing cells); "propose_volume"
is everything, and what its parts leave is Python around them: stacking, fusion and the table.
"""
from __future__ import annotations

import argparse
import collections
import functools
import time
from pathlib import Path

import torch

from lens_speed import DATASETS, ct_volume, model_settings  # the same volume, experts and settings


def timed_parts(totals: collections.Counter) -> None:
    """Wrap the methods whose time is reported; each adds its seconds to ``totals[label]``."""
    from lens_core.inference import expert_proposals
    from lens_core.model import afp, backbone, head, lens

    parts = [(backbone._CpuStages, "forward", "backbone: CNN stages"),
             (backbone.Backbone, "_finest_fpn_level", "backbone: FPN"),
             (lens.LENS, "_pooled_proposals", "AFPs: all (maps, boxes, NMS, pooling)"),
             (lens.LENS, "_trunk", "AFPs: shared trunk maps"),
             (afp.AnchorFreeProposalNetwork, "centerness", "AFPs: per-AFP centerness maps"),
             (afp.AnchorFreeProposalNetwork, "proposals", "AFPs: boxes at the best cells + NMS"),
             (afp.AnchorFreeProposalNetwork, "distances_at", "AFPs: size branch at those cells"),
             (head.MultiTaskHead, "shared_features", "head: ROIAlign + shared FCs"),
             (lens.LENS, "detect", "LENS.detect"),
             (expert_proposals, "propose_volume", "propose_volume")]
    for owner, name, label in parts:
        fn = getattr(owner, name, None)
        if fn is None or getattr(fn, "_timed", False):
            continue

        def wrapper(*a, _fn=fn, _label=label, **k):
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                totals[_label] += time.perf_counter() - t

        functools.update_wrapper(wrapper, fn)
        wrapper._timed = True
        setattr(owner, name, wrapper)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (the default run proposes with 1)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--reps", type=int, default=2, help="timed passes over the volume")
    p.add_argument("--config", type=Path, action="append", default=[], help="one more column: this config's model")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from lens_core.inference import expert_proposals
    from lens_core.model.lens import LENS

    totals: collections.Counter = collections.Counter()
    timed_parts(totals)
    volume = ct_volume(112, 144, 32)
    rows = {}
    columns = {"per_dataset": {}, "shared": {"afp_trunk": "shared"}}
    for c in a.config:
        columns[c.parent.name or str(c)] = model_settings(argparse.Namespace(config=c, afp_trunk=None))
    for name, settings in columns.items():
        torch.manual_seed(0)
        model = LENS(DATASETS, preset="cpu", n_slices=6, **settings).eval()
        run = functools.partial(expert_proposals.propose_volume, model, volume, DATASETS, torch.device("cpu"),
                                precision=a.precision)
        run()  # warm-up
        totals.clear()
        for _ in range(a.reps):
            run()
        rows[name] = {k: 1000 * v / (a.reps * len(volume)) for k, v in totals.items()}
    print(f"ms per slice, {a.threads} thread(s), {a.precision}, 4 AFPs/experts, 112 x 144 slices, random weights")
    labels = sorted({k for r in rows.values() for k in r}, key=lambda k: -rows["per_dataset"].get(k, 0))
    print(f"{'part':42s}" + "".join(f" {n:>12s}" for n in rows))
    for k in labels:
        print(f"{k:42s}" + "".join(f" {r.get(k, 0):12.2f}" for r in rows.values()))
    for name in list(rows)[1:]:
        ratio = rows["per_dataset"]["propose_volume"] / rows[name]["propose_volume"]
        print(f"{name} / per_dataset slices per second: {ratio:.2f}x")


if __name__ == "__main__":
    main()
