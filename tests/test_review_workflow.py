"""The workflow around review: imported verdicts rerun merge_labels, round 2 and what follows it, and
nothing else, and only when they change; `snakemake review` and `snakemake review_value` plan their jobs."""
from pathlib import Path

import pytest

from dag import finish, planned, run, tiny_workdir

# rules upstream of merge_labels: verdicts never rerun them
UPSTREAM = {"synthesize_corpus", "preprocess", "gather_prep", "train_lens", "build_tracklets", "mine_cross_slice", "embed_lesions", "mine_intra_patient",
            "mine_cross_dataset"}


def _workdir(tmp_path, **review) -> Path:
    return tiny_workdir(tmp_path, **({"review": review} if review else {}))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Every output of the default DAG exists and is up to date (created, then `snakemake --touch`)."""
    return finish(_workdir(tmp_path_factory.mktemp("wf")))


def test_verdicts_rerun_round2_and_what_follows_only_when_they_change(finished):
    assert planned(finished) == {}
    review = finished / "results" / "lens" / "mining" / "review.parquet"
    review.write_text("verdicts 1")  # lens review-import wrote the verdicts
    outputs = []
    jobs = planned(finished, outputs=outputs)
    assert jobs.get("merge_labels") == 1 and jobs.get("train_lens_round2")
    assert {"train_fpr", "score_fpr", "evaluate", "froc_plot"} <= set(jobs)  # what follows round 2
    assert not UPSTREAM & set(jobs), UPSTREAM & set(jobs)
    # round 1 and its proposals stay; round 2's proposals are redone
    assert not [f for f in outputs if "/round1/" in f] and any("/round2/proposals/" in f for f in outputs)
    assert run(finished, "--touch").returncode == 0
    assert planned(finished) == {}  # the same verdicts: nothing to redo
    review.write_text("verdicts 1")  # the same verdicts rewritten: Snakemake sees the same content
    assert planned(finished) == {}
    review.write_text("verdicts 2")  # new verdicts imported
    jobs = planned(finished)
    assert jobs.get("merge_labels") == 1 and not UPSTREAM & set(jobs)
    assert run(finished, "--touch").returncode == 0
    review.unlink()  # verdicts withdrawn: round 2 as without review
    jobs = planned(finished)
    assert jobs.get("merge_labels") == 1 and jobs.get("train_lens_round2") and not UPSTREAM & set(jobs)


@pytest.mark.parametrize("setting, used", [("auto", True), (None, False)])
def test_config_switch_review_verdicts(tmp_path, setting, used):
    wd = _workdir(tmp_path, verdicts=setting)
    target = ["-n", "-p", "results/lens/mining/labels_round2.parquet"]
    res = run(wd, *target)
    assert res.returncode == 0 and "lens merge-labels" in res.stdout and "--review" not in res.stdout  # none yet
    (wd / "results" / "lens" / "mining").mkdir(parents=True)
    (wd / "results" / "lens" / "mining" / "review.parquet").touch()
    res = run(wd, *target)
    assert res.returncode == 0, res.stderr
    assert ("--review results/lens/mining/review.parquet" in res.stdout) == used


def test_review_page_and_review_value_areplanned(tmp_path):
    wd = _workdir(tmp_path)
    jobs = planned(wd, "review")
    assert jobs.get("review_boxes") == 1 and jobs.get("review_page") == 1 and "merge_labels" not in jobs
    jobs = planned(wd, "review_value")
    # 0 % reviewed is round 2 itself; 25 % and 100 % each train round 2 on their own labels
    assert jobs.get("review_simulate") == 3 and jobs.get("review_import_simulated") == 3
    assert jobs.get("merge_labels_review_value") == 2 and jobs.get("train_lens_review_value") == 2
    assert jobs.get("train_lens_round2") == 1 and jobs.get("train_lens") == 1  # one round-1 model for all
    assert jobs.get("evaluate_review_value") == 6 and jobs.get("review_value_table") == 1
