"""Command-line arguments that several steps share. The steps' command modules import this module;
`cli.py` imports the steps, so no step needs the CLI itself."""
from __future__ import annotations

import argparse


def add_torch_args(p: argparse.ArgumentParser) -> None:
    """--device and --threads, for every step that runs a network."""
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core machine 2 threads ran up to 7x slower)")


def set_torch_threads(args: argparse.Namespace) -> None:
    import torch

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

