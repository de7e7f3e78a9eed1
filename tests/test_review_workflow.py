"""The workflow around review: imported verdicts rerun merge_labels, round 2 and what follows it, and
nothing else, and only when they change; `snakemake review` and `snakemake review_value` plan their jobs."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2"]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
# rules upstream of merge_labels: verdicts never rerun them
UPSTREAM = {"synthesize_corpus", "preprocess", "gather_prep", "train_lens", "build_tracklets", "mine_cross_slice", "embed_lesions", "calibrate_delta", "mine_intra_patient",
            "mine_cross_dataset"}


def _run(args, cwd):
    return subprocess.run(SNAKEMAKE + ["--directory", str(cwd)] + args, capture_output=True, text=True,
                          timeout=300, env=ENV)


def _planned(wd, *args, outputs: list | None = None) -> dict[str, int]:
    """Job counts per rule of a dry run (and, into ``outputs``, every planned output file)."""
    res = _run(["-n", *args], wd)
    assert res.returncode == 0, res.stderr
    if outputs is not None:
        outputs += [f for line in res.stdout.splitlines() if line.strip().startswith("output:")
                    for f in line.split(":", 1)[1].replace(",", " ").split()]
    table = re.search(r"^job\s+count\n-+\s+-+\n(.*?)\ntotal", res.stdout, re.S | re.M)
    if table is None:
        assert "Nothing to be done" in res.stdout + res.stderr, res.stdout
        return {}
    return {name: int(n) for name, n in (line.split() for line in table.group(1).splitlines())}


def _workdir(tmp_path, **review) -> Path:
    cfg = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())
    if review:
        cfg["review"] = review
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Every output of the default DAG exists and is up to date (created, then `snakemake --touch`)."""
    wd = _workdir(tmp_path_factory.mktemp("wf"))
    summary = _run(["--summary"], wd)
    assert summary.returncode == 0, summary.stderr
    for line in summary.stdout.splitlines()[1:]:
        f = wd / line.split("\t")[0]
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
    assert _run(["--touch"], wd).returncode == 0
    return wd


def test_verdicts_rerun_round2_and_what_follows_only_when_they_change(finished):
    assert _planned(finished) == {}
    review = finished / "results" / "lens" / "mining" / "review.parquet"
    review.write_text("verdicts 1")  # lens review-import wrote the verdicts
    outputs = []
    jobs = _planned(finished, outputs=outputs)
    assert jobs.get("merge_labels") == 1 and jobs.get("train_lens_round2")
    assert {"train_fpr", "score_fpr", "evaluate", "froc_plot"} <= set(jobs)  # what follows round 2
    assert not UPSTREAM & set(jobs), UPSTREAM & set(jobs)
    # round 1 and its proposals stay; round 2's proposals are redone
    assert not [f for f in outputs if "/round1/" in f] and any("/round2/proposals/" in f for f in outputs)
    assert _run(["--touch"], finished).returncode == 0
    assert _planned(finished) == {}  # the same verdicts: nothing to redo
    review.write_text("verdicts 1")  # the same verdicts rewritten: Snakemake sees the same content
    assert _planned(finished) == {}
    review.write_text("verdicts 2")  # new verdicts imported
    jobs = _planned(finished)
    assert jobs.get("merge_labels") == 1 and not UPSTREAM & set(jobs)
    assert _run(["--touch"], finished).returncode == 0
    review.unlink()  # verdicts withdrawn: round 2 as without review
    jobs = _planned(finished)
    assert jobs.get("merge_labels") == 1 and jobs.get("train_lens_round2") and not UPSTREAM & set(jobs)


@pytest.mark.parametrize("setting, used", [("auto", True), (None, False)])
def test_config_switch_review_verdicts(tmp_path, setting, used):
    wd = _workdir(tmp_path, verdicts=setting)
    target = ["-n", "-p", "results/lens/mining/labels_round2.parquet"]
    res = _run(target, wd)
    assert res.returncode == 0 and "lens merge-labels" in res.stdout and "--review" not in res.stdout  # none yet
    (wd / "results" / "lens" / "mining").mkdir(parents=True)
    (wd / "results" / "lens" / "mining" / "review.parquet").touch()
    res = _run(target, wd)
    assert res.returncode == 0, res.stderr
    assert ("--review results/lens/mining/review.parquet" in res.stdout) == used


def test_review_page_and_review_value_are_planned(tmp_path):
    wd = _workdir(tmp_path)
    jobs = _planned(wd, "review")
    assert jobs.get("review_boxes") == 1 and jobs.get("review_page") == 1 and "merge_labels" not in jobs
    jobs = _planned(wd, "review_value")
    # 0 % reviewed is round 2 itself; 25 % and 100 % each train round 2 on their own labels
    assert jobs.get("review_simulate") == 3 and jobs.get("review_import_simulated") == 3
    assert jobs.get("merge_labels_review_value") == 2 and jobs.get("train_lens_review_value") == 2
    assert jobs.get("train_lens_round2") == 1 and jobs.get("train_lens") == 1  # one round-1 model for all
    assert jobs.get("evaluate_review_value") == 6 and jobs.get("review_value_table") == 1
