"""LENS training and inference speed per backbone preset (issues 3 and 22; paper Sec. VI-B: 54 ms per slice
on a Quadro RTX 6000 for the paper's model).

Training: full steps (forward, Eq. 3 losses, backward, the training loop's optimizer step) on batches from one
dataset, 4 dataset AFPs/experts, at the default run's settings (config.yaml `train:`: 6 slices, 48 px crops,
batch 8, 32 head RoIs per image, the model of config.yaml's `train.afp_trunk`, `fpn_channels`, `afp_pre_nms`,
`proposals_per_afp` and `pool_top_n`). Inference: `propose_volume`, the path
`lens propose` and `lens detect` share (2.5D stacks, every expert, proposal fusion, the per-slice table), on a
CT-sized volume (112 x 144 px, the built-in corpus's mean DeepLesion-like slice at 2 mm). Random weights and
images: the speed, not the result, is measured.

    python benchmarks/lens_speed.py [--size 112,144] [--threads N] [--precision fp32|bf16] [--config C] [--compare REF]

--compare REF runs the same benchmark on another checkout REF (e.g. `git worktree add /tmp/ref d879e6b`) in a
child process, alternating with this checkout, and prints this / REF for each figure: speed is a ratio
measured in one run, on one machine. Each checkout builds the model its own config.yaml describes (--config C:
this checkout builds C's instead; REF always its own).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PAPER_MS_PER_SLICE = 54.0  # Quadro RTX 6000, Sec. VI-B
DATASETS = ["deeplesion", "luna", "lits", "nihln"]


def sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def make_optimizer(model, lr: float):
    """The training loop's optimizer (an older checkout without lens_core.training.loop.make_optimizer
    built plain RAdam there)."""
    import torch
    from lens_core.training import loop

    if hasattr(loop, "make_optimizer"):
        return loop.make_optimizer(model, lr)
    return torch.optim.RAdam(model.parameters(), lr=lr)


def precision_context(dev, precision: str):
    """The autocast of the given precision: lens_core.runtime.autocast where it takes one."""
    from lens_core.runtime import autocast

    if "precision" in inspect.signature(autocast).parameters:
        return autocast(dev, precision)
    if precision != "fp32" and dev.type == "cpu":
        raise SystemExit("this checkout has no CPU precision switch")
    return autocast(dev)


def ct_volume(h: int, w: int, depth: int):
    """A CT-like uint8 volume (window -1024..3071 HU -> 0..255): air around a noisy soft-tissue body."""
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 < 1
    return np.where(body, 66 + rng.normal(0, 3, (depth, h, w)), 0).clip(0, 255).astype(np.uint8)


def bench(preset: str, slices: int, crop: int, batch: int, hw: tuple[int, int], depth: int, steps: int,
          reps: int, dev, precision: str, model: dict | None = None, rois: int = 32) -> dict:
    import torch

    try:
        from lens_core.inference.expert_proposals import propose_volume
    except ImportError:  # a --compare checkout from before the module's rename (d879e6b)
        from lens_core.inference.proposals import propose_volume
    from lens_core.model.lens import LENS, ImageTargets, total_loss
    from lens_core.training.targets import batch_targets

    torch.manual_seed(0)
    # the model's settings where this checkout has them (d879e6b's LENS has none: its values are its defaults)
    known = inspect.signature(LENS).parameters
    missing = {k: v for k, v in (model or {}).items() if k not in known and v != MODEL_DEFAULTS[k]}
    if missing:
        raise SystemExit(f"this checkout's LENS has no {sorted(missing)} (asked for {missing})")
    kw = {k: v for k, v in (model or {}).items() if k in known}
    model = LENS(DATASETS, preset=preset, n_slices=slices, rois_per_image=rois, **kw).to(dev)
    opt = make_optimizer(model, 1e-4)
    images = torch.randn(batch, slices, crop, crop, device=dev)
    boxes = [torch.tensor([[8.0 + (3 * i) % 16, 10.0, 24.0 + (3 * i) % 16, 30.0]]) for i in range(batch)]
    ign = [torch.zeros(0, 4)] * batch
    afp = batch_targets(boxes, ign, (crop // model.stride, crop // model.stride), model.stride).to(dev)
    targets = [ImageTargets(x, y).to(dev) for x, y in zip(boxes, ign)]

    def train_step(i):
        with precision_context(dev, precision):
            loss = total_loss(model.losses(images, DATASETS[i % 4], afp, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
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
    volume = ct_volume(*hw, depth)
    fuse = list(DATASETS)

    # the precision switch reaches propose_volume where this checkout has it
    kw = {"precision": precision} if "precision" in inspect.signature(propose_volume).parameters else {}

    def infer():
        return propose_volume(model, volume, fuse, dev, **kw)

    infer()
    sync(dev)
    t = time.perf_counter()
    for _ in range(reps):
        infer()
    sync(dev)
    infer_s = time.perf_counter() - t
    return {"samples_per_s": steps * batch / train_s, "slices_per_s": reps * depth / infer_s,
            "ms_per_slice": 1000 * infer_s / (reps * depth)}


def run_all(a) -> dict:
    import torch

    from lens_core.runtime import resolve_device

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    hw = tuple(int(v) for v in a.size.split(","))
    rows = {"cpu": ("cpu", a.slices, a.crop, a.batch, hw, a.depth, a.steps, a.reps),
            "paper": ("paper", 9, a.paper_crop, 4, hw, 9, a.paper_steps, 1)}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    out = {"device": name, "rows": {}}
    for preset in a.presets.split(","):
        # the config's model is the cpu preset's; the paper preset keeps LENS's defaults (config/real.yaml's)
        model = model_settings(a) if preset == "cpu" else {}
        out["rows"][preset] = {"setting": rows[preset], **bench(*rows[preset], dev=dev, precision=a.precision,
                                                                 model=model, rois=a.rois)}
    return out


# The model's settings that lens_speed reads from a config's train: section, with the values of a checkout (or a
# config) that has none of them: d879e6b's model. lens_core.model.lens.LATER_ARGS holds the same values, but a
# --compare checkout as old as d879e6b has no LATER_ARGS to import, so they are written here too.
MODEL_DEFAULTS = {"afp_trunk": "per_dataset", "fpn_channels": None, "afp_pre_nms": 300, "proposals_per_afp": 100,
                  "pool_top_n": 200}


def model_settings(a) -> dict:
    """The model of --config's train: section, else of the lens_core checkout's own config.yaml; --afp-trunk
    overrides the trunk."""
    import yaml

    import lens_core

    cfg = a.config or Path(lens_core.__file__).resolve().parent.parent / "config.yaml"
    train = (yaml.safe_load(Path(cfg).read_text()) or {}).get("train", {}) if Path(cfg).exists() else {}
    out = {k: train.get(k, v) for k, v in MODEL_DEFAULTS.items()}
    if a.afp_trunk:
        out["afp_trunk"] = a.afp_trunk
    return out


def model_text(a) -> str:
    m = model_settings(a)
    return (f"AFPs {m['afp_trunk']}, FPN {m['fpn_channels'] or 'preset'}, AFP boxes {m['afp_pre_nms']} -> "
            f"{m['proposals_per_afp']}, head RoIs {m['pool_top_n']}")


def describe(preset: str, r: dict) -> str:
    _, slices, crop, batch, hw, _, _, _ = r["setting"]
    return (f"{preset:>5} preset ({slices} slices, train {batch} x {crop}^2, inference {hw[0]}x{hw[1]}): "
            f"train {r['samples_per_s']:7.1f} samples/s | inference {r['slices_per_s']:7.1f} slices/s = "
            f"{r['ms_per_slice']:7.1f} ms/slice (paper: {PAPER_MS_PER_SLICE:.0f} ms/slice on a Quadro RTX 6000, "
            f"ratio {r['ms_per_slice'] / PAPER_MS_PER_SLICE:.2f}x)")


def child(checkout: Path, argv: list[str]) -> dict:
    """This benchmark, with ``checkout``'s lens_core, in a child process: its figures as JSON."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run([sys.executable, __file__, *argv, "--json"], env=env, cwd=checkout,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"benchmark on {checkout} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="112,144", help="inference slice size H,W in pixels")
    p.add_argument("--depth", type=int, default=32, help="slices of the inference volume")
    p.add_argument("--slices", type=int, default=6, help="input slices of the cpu preset (config train.slices)")
    p.add_argument("--crop", type=int, default=48, help="training crop of the cpu preset (train.crop_size)")
    p.add_argument("--batch", type=int, default=8, help="training batch of the cpu preset (train.batch_size)")
    p.add_argument("--rois", type=int, default=32, help="head RoIs per training image (train.rois_per_image)")
    p.add_argument("--paper-crop", type=int, default=128, help="training crop of the paper preset")
    p.add_argument("--steps", type=int, default=20, help="timed training steps of the cpu preset")
    p.add_argument("--reps", type=int, default=2, help="timed passes over the inference volume")
    p.add_argument("--paper-steps", type=int, default=2, help="timed training steps of the paper preset")
    p.add_argument("--presets", default="cpu,paper", help="comma-separated: cpu, paper")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="autocast precision (bf16 on the CPU: the runtime.precision switch)")
    p.add_argument("--afp-trunk", choices=["per_dataset", "shared"], default=None,
                   help="the AFPs of this checkout (default: its config.yaml's train.afp_trunk); REF keeps its own")
    p.add_argument("--config", type=Path, default=None,
                   help="build the model of this config's train: section (default: the checkout's config.yaml)")
    p.add_argument("--compare", type=Path, default=None, metavar="REF",
                   help="another checkout: run the same benchmark there too and print the ratios")
    p.add_argument("--rounds", type=int, default=2, help="with --compare: alternating runs of each (best kept)")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.json:
        print(json.dumps(run_all(a)))
        return
    if a.compare is None:
        res = run_all(a)
        print(f"device: {res['device']}; {len(DATASETS)} datasets; precision {a.precision}; {model_text(a)}")
        for preset, r in res["rows"].items():
            print(describe(preset, r))
        return
    here = Path(__file__).resolve().parent.parent
    argv = [x for x in sys.argv[1:] if x not in ("--compare", str(a.compare))]
    if a.config:  # the children run in their checkouts' folders
        argv = [str(a.config.resolve()) if Path(x) == a.config else x for x in argv]
    own = ("--precision", "--afp-trunk", "--config")  # this checkout's switches: REF runs at its own defaults
    ref_argv = [x for i, x in enumerate(argv) if x not in own and (i == 0 or argv[i - 1] not in own)]
    best: dict[str, dict] = {}
    for _ in range(a.rounds):  # alternate, so drifting load hits both alike; keep each one's best
        for who, path, args in (("ref", a.compare.resolve(), ref_argv), ("this", here, argv)):
            res = child(path, args)
            for preset, r in res["rows"].items():
                b = best.setdefault(who, {}).setdefault(preset, r)
                for k in ("samples_per_s", "slices_per_s"):
                    b[k] = max(b[k], r[k])
                b["ms_per_slice"] = 1000 / b["slices_per_s"]
    print(f"device: {res['device']}; {len(DATASETS)} datasets; "
          f"this: {here} (precision {a.precision}, {model_text(a)}); "
          f"REF: {a.compare} (fp32); best of {a.rounds} alternating runs each")
    for preset in best["this"]:
        t, r = best["this"][preset], best["ref"][preset]
        print(f"REF  {describe(preset, r)}")
        print(f"this {describe(preset, t)}")
        print(f"this / REF, {preset} preset: training {t['samples_per_s'] / r['samples_per_s']:.2f}x, "
              f"inference {t['slices_per_s'] / r['slices_per_s']:.2f}x")


if __name__ == "__main__":
    main()
