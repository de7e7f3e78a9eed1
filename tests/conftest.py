"""Shared fixtures: a tiny built-in corpus and its preprocessed tables, built once per test session."""
from pathlib import Path

import pytest

from lens_core.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "tests" / "data" / "tiny_config.yaml"
FORMATS = ("deeplesion", "luna", "lits", "nihln")


def build_corpus(out: Path, seed: int | None = None) -> Path:
    args = ["synthesize", "--out", str(out), "--config", str(TINY_CONFIG), "--no-progress"]
    if seed is not None:
        args += ["--seed", str(seed)]
    assert main(args) == 0
    return out


def preprocess_all(corpus: Path, out: Path) -> Path:
    for fmt in FORMATS:
        assert main(["preprocess", "--format", fmt, "--root", str(corpus / fmt), "--out", str(out / fmt),
                     "--pixel-mm", "4", "--slice-mm", "5", "--dl-box-pad-px", "0",
                     "--truth", str(corpus / "hidden_truth.parquet"),
                     "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus") / "corpus")


@pytest.fixture(scope="session")
def tiny_prep(tiny_corpus, tmp_path_factory) -> Path:
    return preprocess_all(tiny_corpus, tmp_path_factory.mktemp("prep"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for tests that train: on a shared 2-core machine two threads per process slow
    training ~7x whenever another process is busy (measured: 125 s vs 17 s for the overfit test)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
