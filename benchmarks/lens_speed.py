"""LENS training and inference speed per backbone preset (issue 3; paper Sec. VI-B: 54 ms per slice
on a Quadro RTX 6000 for the paper's model).

Times full training steps (forward, Eq. 3 losses, backward, RAdam step; batches of 4 images from one
dataset, 4 dataset AFPs/experts) and inference (all experts, proposal fusion) on random images.
Prints samples/s, slices/s and ms/slice for each preset side by side; the `cpu` preset is the one
meant for this 2-core machine, `paper` (DenseNet-121, 9 slices) is run at a small count here.

    python benchmarks/lens_speed.py [--size 128] [--device auto|cpu|cuda] [--steps 10] [--paper-steps 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from lens_core.inference.fusion import fuse_experts
from lens_core.model.lens import LENS, ImageTargets, total_loss
from lens_core.runtime import autocast, resolve_device
from lens_core.training.targets import batch_targets

DATASETS = ["deeplesion", "luna", "lits", "nihln"]
PAPER_MS_PER_SLICE = 54.0  # Quadro RTX 6000, Sec. VI-B


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench(preset: str, slices: int, size: int, steps: int, infer_slices: int, dev: torch.device) -> dict:
    torch.manual_seed(0)
    model = LENS(DATASETS, preset=preset, n_slices=slices).to(dev)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-4)
    b = 4
    images = torch.randn(b, slices, size, size, device=dev)
    boxes = [torch.tensor([[20.0 + 8 * i, 30.0, 44.0 + 8 * i, 50.0]]) for i in range(b)]
    ign = [torch.zeros(0, 4)] * b
    afp = batch_targets(boxes, ign, (size // model.stride, size // model.stride), model.stride).to(dev)
    targets = [ImageTargets(x, y).to(dev) for x, y in zip(boxes, ign)]

    def train_step(i):
        with autocast(dev):
            loss = total_loss(model.losses(images, DATASETS[i % 4], afp, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    train_step(0)  # warm-up
    sync(dev)
    t = time.perf_counter()
    for i in range(steps):
        train_step(i + 1)
    sync(dev)
    train_s = time.perf_counter() - t

    model.eval()
    batch = infer_slices
    x = torch.randn(batch, slices, size, size, device=dev)

    def infer():
        with autocast(dev):
            dets = model.detect(x)
        for d in dets:
            fuse_experts(d["boxes"].float().cpu(), d["scores"].float().cpu(), list(range(len(DATASETS))))

    infer()
    sync(dev)
    t = time.perf_counter()
    reps = max(1, steps // 2)
    for _ in range(reps):
        infer()
    sync(dev)
    infer_s = time.perf_counter() - t
    return {"samples_per_s": steps * b / train_s, "slices_per_s": reps * batch / infer_s,
            "ms_per_slice": 1000 * infer_s / (reps * batch)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--paper-size", type=int, default=None, help="image side for the paper preset (default --size)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps of the cpu preset")
    p.add_argument("--paper-steps", type=int, default=2, help="timed training steps of the paper preset")
    p.add_argument("--infer-slices", type=int, default=8, help="slices per inference batch")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; images {a.size}x{a.size}; train batch 4; {len(DATASETS)} datasets")
    rows = [("cpu", 3, a.size, a.steps), ("paper", 9, a.paper_size or a.size, a.paper_steps)]
    results = {}
    for preset, slices, size, steps in rows:
        results[preset] = r = bench(preset, slices, size, steps, a.infer_slices, dev)
        print(f"{preset:>5} preset ({slices} slices, {size}^2): train {r['samples_per_s']:7.1f} samples/s | "
              f"inference {r['slices_per_s']:7.1f} slices/s = {r['ms_per_slice']:7.1f} ms/slice "
              f"(paper: {PAPER_MS_PER_SLICE:.0f} ms/slice on a Quadro RTX 6000, ratio "
              f"{r['ms_per_slice'] / PAPER_MS_PER_SLICE:.2f}x)")
    c, pp = results["cpu"], results["paper"]
    print(f"cpu / paper preset speed ratio: training {c['samples_per_s'] / pp['samples_per_s']:.1f}x, "
          f"inference {c['slices_per_s'] / pp['slices_per_s']:.1f}x")


if __name__ == "__main__":
    main()
