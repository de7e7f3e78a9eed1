"""`lens <step>`: one subcommand per pipeline step (each Snakemake rule calls one of these).

Heavy imports (torch, SimpleITK, numba) happen inside the handlers, so `lens --help` is instant and a
step that does not need torch does not pay for importing it.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

# modules that contribute subcommands through `add_parser(subparsers)`
COMMAND_MODULES = [
    "lens_core.commands",
    "lens_core.evaluation.command",
    "lens_core.evaluation.ablation",
    "lens_core.evaluation.fig7",
    "lens_core.training.command",
    "lens_core.inference.command",
    "lens_core.mining.command",
    "lens_core.review.command",
    "lens_core.fpr.command",
    "lens_core.detect_command",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lens", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="STEP")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a step not built yet
                continue
            raise
        mod.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        # bad input: one clear line naming the file/row (the exception says which), non-zero exit
        logging.getLogger("lens").error("%s: %s", type(e).__name__, e)
        if args.verbose:
            raise
        return 2


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


def existing_path(text: str) -> Path:
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{p} does not exist")
    return p


if __name__ == "__main__":
    sys.exit(main())
