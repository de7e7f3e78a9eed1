"""`lens <step>`: one subcommand per pipeline step (each Snakemake rule calls one of these).

Heavy imports (torch, matplotlib) happen inside the handlers that use them, and `lens <step>` imports only its
step's command module, so a step does not pay for importing another package's steps or torch it does not need.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import shutil
import sys
from pathlib import Path

import lens_core
from lens_core.errors import InputError

# every step, in the order the pipeline runs them (the order of `lens --help`), and the command module
# (one `command.py` per package) whose `add_parser(subparsers)` registers it
STEPS = {
    "synthesize": "lens_core.corpus.command",
    "import-manual-3d": "lens_core.datasets.command",
    "preprocess": "lens_core.preprocess.command",
    "gather-prep": "lens_core.preprocess.command",
    "train": "lens_core.training.command",
    "bn-drift": "lens_core.training.command",
    "propose": "lens_core.inference.command",
    "concat": "lens_core.inference.command",
    "build-tracklets": "lens_core.mining.command",
    "mine-cross-slice": "lens_core.mining.command",
    "embed-lesions": "lens_core.mining.command",
    "audit-delta": "lens_core.mining.command",
    "mine-intra-patient": "lens_core.mining.command",
    "mine-cross-dataset": "lens_core.mining.command",
    "merge-labels": "lens_core.mining.command",
    "audit-mining": "lens_core.mining.command",
    "mining-precision": "lens_core.mining.command",
    "review-boxes": "lens_core.review.command",
    "review": "lens_core.review.command",
    "review-import": "lens_core.review.command",
    "review-simulate": "lens_core.review.command",
    "train-fpr": "lens_core.fpr.command",
    "score-fpr": "lens_core.fpr.command",
    "evaluate": "lens_core.evaluation.command",
    "froc-plot": "lens_core.evaluation.command",
    "ablation-table": "lens_core.paper_tables.command",
    "fig5-table": "lens_core.paper_tables.command",
    "fig7-table": "lens_core.paper_tables.command",
    "review-value": "lens_core.review.command",
    "report": "lens_core.report.command",
    "detect": "lens_core.inference.command",
}


class LensParser(argparse.ArgumentParser):
    """Usage errors (a bad flag value, a missing argument) are bad input like any other: one line naming the
    step and the argument, exit status 1 (argparse's default is the usage text and status 2)."""

    def error(self, message: str):
        self.exit(1, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `lens` parser. Given the command line, only the named step's module is imported: a step does
    not pay for importing the others (`lens synthesize`'s readers need SimpleITK, pydicom, scipy)."""
    p = LensParser(prog="lens", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"lens {lens_core.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="STEP")
    step = next((a for a in argv or [] if not a.startswith("-")), None)
    modules = [STEPS[step]] if step in STEPS else list(dict.fromkeys(STEPS.values()))
    for name in modules:
        importlib.import_module(name).add_parser(sub)
    unlisted = sorted(set(sub.choices) - set(STEPS))
    if unlisted:
        raise RuntimeError(f"steps {unlisted} are missing from lens_core.cli.STEPS")
    # a module registers its steps together; the help lists them in pipeline order instead
    order = list(STEPS)
    sub._choices_actions.sort(key=lambda action: order.index(action.dest))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        # bad input (InputError, a ValueError, above all): one line naming the file and row (the exception
        # says which), exit status 1; the traceback only with --verbose
        msg = " ".join(str(e).split())
        logging.getLogger("lens").error("%s", msg if isinstance(e, InputError) else f"{type(e).__name__}: {msg}")
        if args.verbose:
            raise
        return 1
    except OSError as e:
        # the machine said no (permission, disk full, a read-only folder): one line naming the file, exit 1
        where = e.filename or (_output(args) if e.errno == errno.ENOSPC else None)
        logging.getLogger("lens").error("%s%s (%s)", f"{where}: " if where else "", e.strerror or e, type(e).__name__)
        if args.verbose:
            raise
        return 1
    except RuntimeError as e:
        # torch.save and SimpleITK's writers report a full disk as a RuntimeError: one line too; any other
        # RuntimeError is a bug, with its traceback
        out = _output(args)
        if not _disk_full(e, out):
            raise
        logging.getLogger("lens").error("%s: No space left on device (%s: %s)", out or "output",
                                        type(e).__name__, str(e).strip().splitlines()[0][:200])
        if args.verbose:
            raise
        return 1


def _output(args) -> str | None:
    """The step's output (its --out, else --out3d), for a write error that names no file."""
    out = getattr(args, "out", None) or getattr(args, "out3d", None)
    return str(out) if out else None


def _disk_full(e: BaseException, out: str | None) -> bool:
    """Did ``e`` come from a full disk: its message says so, or the output's disk has under 1 MiB free."""
    if "No space left on device" in str(e) or "errno = 28" in str(e):
        return True
    if out is None:
        return False
    folder = Path(out).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free < (1 << 20)


if __name__ == "__main__":
    sys.exit(main())
