"""The hidden truth is read by evaluation and audits only.

On the dry run of the paper's experiments (`all ablation fig7 fig5`, built-in corpus) every job whose inputs or
shell command name the hidden truth (the corpus's hidden_truth.parquet, a preprocessed truth.parquet), or a
file derived from it, must be the corpus writer, preprocessing, an evaluation, an audit or a report: no
mining, training or proposal step may see it, directly or through a table made from it. The simulated reviewer
of `review_value` reads the truth by design, outside those targets."""
import re
import shutil
import subprocess

import pytest

from dag import ENV, ROOT, SNAKEMAKE

TARGETS = ["all", "ablation", "fig7", "fig5"]
# the corpus writer and preprocessing split the truth from the released data (only their truth files carry it)
SOURCES = {"synthesize_corpus", "fig7_heldout_corpus", "preprocess", "fig7_heldout_prep", "gather_prep"}
TRUTH = re.compile(r"(^|/)(hidden_truth|truth)\.parquet$|(^|/)truth/.+\.parquet$")
# rules that may read the truth or what is derived from it: evaluation, audits, tables, the report, targets
ALLOWED = SOURCES | {"evaluate", "evaluate_val", "fig7_evaluate", "froc_plot", "ablation_table", "fig5_table",
                     "fig7_table", "audit_delta", "audit_mining", "html_report", *TARGETS}


def dry_run_jobs(wd, *targets, snakefile=ROOT / "Snakefile") -> list[dict]:
    """Every planned job of a dry run: rule, input and output files, shell command."""
    cmd = [a if a != str(ROOT / "Snakefile") else str(snakefile) for a in SNAKEMAKE]
    res = subprocess.run(cmd + ["--directory", str(wd), "-n", "-p", *targets], capture_output=True, text=True,
                         timeout=300, env=ENV)
    assert res.returncode == 0, res.stdout + res.stderr
    jobs = []
    for line in res.stdout.splitlines():
        s = line.strip()
        m = re.match(r"(local)?rule (\w+):$", s)
        if m:
            jobs.append({"rule": m.group(2), "input": [], "output": [], "shell": ""})
        elif jobs and s.startswith(("input:", "output:")):
            key, files = s.split(":", 1)
            jobs[-1][key] = [f for f in files.replace(",", " ").split() if f]
        elif jobs and s.startswith("Shell command:"):
            jobs[-1]["shell"] = s.removeprefix("Shell command:").strip()
    assert jobs, res.stdout
    return jobs


def truth_readers(jobs: list[dict]) -> dict[str, set[str]]:
    """rule -> the truth-derived files its jobs read (inputs or shell words): the truth files themselves,
    then, to a fixed point, every output of a job that reads one (the corpus writer and preprocessing
    excepted: they write the released data beside the truth)."""
    tainted = {f for j in jobs for f in j["output"] if TRUTH.search(f)}
    readers: dict[str, set[str]] = {}
    changed = True
    while changed:
        changed = False
        for j in jobs:
            words = set(j["input"]) | {w.strip("'\"") for w in j["shell"].split()}
            hit = (words - set(j["output"])) & tainted  # a job naming its own outputs reads nothing
            if not hit:
                continue
            readers.setdefault(j["rule"], set()).update(hit)
            if j["rule"] not in SOURCES and not set(j["output"]) <= tainted:
                tainted |= set(j["output"])
                changed = True
    return readers


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder with the repository's config (the built-in corpus, the paper's experiments)."""
    wd = tmp_path_factory.mktemp("truth")
    shutil.copy(ROOT / "config.yaml", wd / "config.yaml")
    return wd


@pytest.fixture(scope="module")
def experiment_jobs(workdir):
    return dry_run_jobs(workdir, *TARGETS)


def test_only_evaluation_audit_and_report_rules_read_the_truth(experiment_jobs):
    readers = truth_readers(experiment_jobs)
    planned = {j["rule"] for j in experiment_jobs}
    # the experiments are all there: mining and round 2 of the Table IV and Fig. 5 experiments among them
    assert {"mine_intra_patient", "train_lens_round2", "fig7_train", "fig5_table", "ablation_table"} <= planned
    # and the check sees the truth where it is meant to be read
    assert {"preprocess", "evaluate", "evaluate_val", "audit_delta", "audit_mining", "html_report"} <= set(readers)
    offenders = {rule: sorted(files)[:3] for rule, files in readers.items() if rule not in ALLOWED}
    assert not offenders, f"rules that read the hidden truth or a table derived from it: {offenders}"


def test_the_audits_outputs_reach_the_report_only(experiment_jobs):
    audit_out = {f for j in experiment_jobs if j["rule"] in ("audit_delta", "audit_mining") for f in j["output"]}
    assert any(f.endswith("delta_audit.png") for f in audit_out)
    users = {j["rule"] for j in experiment_jobs if set(j["input"]) & audit_out}
    assert users == {"html_report"}


def test_the_check_fails_when_a_mining_rule_reads_the_truth(tmp_path, workdir):
    """The same workflow with mine_intra_patient given the truth as an input: the test above would fail, and
    so would everything downstream that reads its table (merge_labels, round 2...)."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "workflow", repo / "workflow")
    shutil.copy(ROOT / "Snakefile", repo / "Snakefile")
    rules = repo / "workflow" / "rules" / "mining.smk"
    text = rules.read_text()
    rule = text.index("rule mine_intra_patient:")
    anchor = text.index('        prep=prep_tables(["deeplesion"]),\n', rule)  # its last named input
    rules.write_text(text[:anchor] + '        truth=DL_TRUTH,\n' + text[anchor:])
    wd = tmp_path / "wd"
    wd.mkdir()
    shutil.copy(workdir / "config.yaml", wd / "config.yaml")
    readers = truth_readers(dry_run_jobs(wd, "all", snakefile=repo / "Snakefile"))
    offenders = set(readers) - ALLOWED
    assert {"mine_intra_patient", "merge_labels", "train_lens_round2"} <= offenders


def test_the_check_fails_when_a_truth_derived_table_feeds_training(tmp_path, workdir):
    """A table derived from the truth (the mining audit's) as a shell argument of round 2: caught too."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "workflow", repo / "workflow")
    shutil.copy(ROOT / "Snakefile", repo / "Snakefile")
    rules = repo / "workflow" / "rules" / "mining.smk"
    text = rules.read_text()
    anchor = '        labels="results/{exp}/mining/labels_round2.parquet",\n'
    assert anchor in text
    rules.write_text(text.replace(anchor, anchor + '        audit="results/{exp}/mining/audit.parquet",\n'))
    wd = tmp_path / "wd"
    wd.mkdir()
    shutil.copy(workdir / "config.yaml", wd / "config.yaml")
    readers = truth_readers(dry_run_jobs(wd, "all", snakefile=repo / "Snakefile"))
    assert "train_lens_round2" in set(readers) - ALLOWED


def test_the_simulated_reviewer_reads_the_truth_outside_the_experiments(workdir, experiment_jobs):
    assert "review_simulate" not in {j["rule"] for j in experiment_jobs}
    jobs = dry_run_jobs(workdir, "review_value")
    readers = truth_readers(jobs)
    assert "review_simulate" in readers
    # by design: what it feeds (the simulated verdicts, the labels and round 2 trained on them) is the
    # review-value ablation's own, never the experiments'
    assert set(readers) - ALLOWED <= {"review_simulate", "review_import_simulated", "merge_labels_review_value",
                                      "train_lens_review_value", "propose", "gather_proposals",
                                      "evaluate_review_value", "review_value_table", "review_value"}


def test_no_folder_a_rule_is_given_holds_the_truth(experiment_jobs):
    """Issue 21: the truth lives apart (results/truth/), not in the prepared folders every rule receives as
    --prep-dir, where a read of it would not show in the DAG. Only preprocessing's temporary shards hold it
    (gather_prep alone reads them)."""
    truth_files = {f for j in experiment_jobs for f in j["output"] if TRUTH.search(f)}
    assert any(f.startswith("results/truth/") for f in truth_files)
    prep_dirs = {w for j in experiment_jobs if j["rule"] not in SOURCES
                 for a, w in zip(j["shell"].split(), j["shell"].split()[1:]) if a == "--prep-dir"}
    assert prep_dirs, "the parser found no --prep-dir: the check would pass vacuously"
    inside = sorted(f for f in truth_files for d in prep_dirs if f.startswith(d.rstrip("/") + "/"))
    assert not inside, f"truth files inside a folder given to a rule: {inside[:3]}"
    assert all(f.startswith(("results/truth/", "results/prep_shards/")) or "corpus/" in f for f in truth_files)


def test_dry_run_parser_reads_inputs_outputs_and_shell(experiment_jobs):
    prep = [j for j in experiment_jobs if j["rule"] == "preprocess"]
    assert prep and all(any(f.endswith("truth.parquet") for f in j["output"]) for j in prep)
    assert all(j["shell"].startswith("lens preprocess") for j in prep)
