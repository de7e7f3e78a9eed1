"""Command-line arguments that several steps share: the torch flags, `--shard i/n`, and argparse types for
numeric flags (a NaN, an infinity or an out-of-range value is refused when the command line is parsed, with
one line naming the flag, before any work is done). The steps' command modules import this module;
`cli.py` imports the steps, so no step needs the CLI itself."""
from __future__ import annotations

import argparse
import math


def add_torch_args(p: argparse.ArgumentParser) -> None:
    """--device and --threads, for every step that runs a network."""
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine 2 threads ran up to 7x slower)")


def add_numerics_args(p: argparse.ArgumentParser) -> None:
    """--kernels and --precision (README "Speed"): how the CPU computes LENS; both change float rounding."""
    p.add_argument("--kernels", choices=["fast", "exact"], default="fast",
                   help="fast: the same functions in a cheaper order (an AFP's distances at its proposing cells "
                        "only); exact: d879e6b's arithmetic")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16: bfloat16 autocast on the CPU (CUDA always uses bf16 autocast); auto: bf16 where the "
                        "CPU has native bfloat16 (AVX-512 BF16, AMX), else fp32")


def add_resume_arg(p: argparse.ArgumentParser, checkpoint: str) -> None:
    """``--resume``, of the one training loop (lens_core.training.engine) that LENS, the FPR and the encoder use."""
    p.add_argument("--resume", action="store_true",
                   help=f"continue a killed run from {checkpoint} (written as it trains) when it is of the same "
                        f"settings and inputs; the result is that of an uninterrupted run")


def set_torch_threads(args: argparse.Namespace) -> None:
    import torch  # lazy: every command module imports this one, and lens --help needs no torch

    if args.threads:
        torch.set_num_threads(args.threads)


def positive_shard(text: str) -> tuple[int, int]:
    """Parse `--shard i/n` (0-based i)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard wants i/n, got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n")
    return i, n



def _in_range(text: str, cast=float, ok=lambda v: True, expected: str = ""):
    """``text`` as a finite number (``cast``: float or int) for which ``ok`` holds; else one line saying what
    was expected."""
    kind = "whole" if cast is int else "finite"
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if cast is int else ''}number") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a {kind} number {expected}".rstrip())
    return value


def positive_float(text: str) -> float:
    """A size in mm, a distance threshold: finite and > 0 (0 or NaN would resample to nothing or to garbage)."""
    return _in_range(text, float, lambda v: v > 0, "> 0")


def non_negative_float(text: str) -> float:
    """A margin in pixels: finite and >= 0 (a negative one would turn boxes inside out)."""
    return _in_range(text, float, lambda v: v >= 0, ">= 0")


def probability(text: str) -> float:
    """A score or a precision: in [0, 1]."""
    return _in_range(text, float, lambda v: 0 <= v <= 1, "in [0, 1]")


def iou_threshold(text: str) -> float:
    """An IoU threshold: in [0, 1) (an IoU > 1 never happens, so 1 would match nothing)."""
    return _in_range(text, float, lambda v: 0 <= v < 1, "in [0, 1)")


def positive_int(text: str) -> int:
    return _in_range(text, int, lambda v: v > 0, "> 0")


def non_negative_int(text: str) -> int:
    return _in_range(text, int, lambda v: v >= 0, ">= 0")
