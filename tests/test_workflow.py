"""The Snakemake workflow: lint-clean, and a single mining step reruns with its dependants only."""
import re
import subprocess
import sys

import pytest
import yaml

from dag import ROOT, finish, job_counts, planned, run, tiny_workdir

# rules that run before mining (never rerun by --forcerun of a mining rule)
UPSTREAM = {"synthesize_corpus", "preprocess", "gather_prep", "train_lens"}
# for each mining rule: the mining rules upstream of it, and dependants that must be replanned
MINING = {
    "build_tracklets": (set(), {"mine_cross_slice", "embed_lesions", "mine_intra_patient", "merge_labels",
                                "train_lens_round2"}),
    "mine_cross_slice": ({"build_tracklets"}, {"mine_cross_dataset", "merge_labels", "audit_mining",
                                                "train_lens_round2"}),
    "embed_lesions": ({"build_tracklets"}, {"audit_delta", "mine_intra_patient", "train_lens_round2"}),
    "mine_intra_patient": ({"build_tracklets", "embed_lesions", "mine_cross_slice"},
                           {"mine_cross_dataset", "merge_labels", "audit_mining", "train_lens_round2"}),
    "mine_cross_dataset": ({"build_tracklets", "embed_lesions", "mine_intra_patient", "mine_cross_slice"},
                           {"merge_labels", "audit_mining", "train_lens_round2"}),
    "merge_labels": ({"build_tracklets", "embed_lesions", "mine_intra_patient", "mine_cross_slice",
                      "mine_cross_dataset"}, {"train_lens_round2"}),
}



@pytest.fixture(scope="module")
def finished_workflow(tmp_path_factory):
    """A working folder where every output of the DAG exists and is up to date (created, then touched in DAG
    order by `snakemake --touch`)."""
    return finish(tiny_workdir(tmp_path_factory.mktemp("wf")))


def test_lint_reports_nothing():
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--lint"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "Lints for" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert res.returncode == 0


def test_finished_workflow_has_nothing_to_do(finished_workflow):
    assert planned(finished_workflow) == {}


@pytest.mark.parametrize("rule", sorted(MINING))
def test_forcerun_reruns_a_mining_step_and_its_dependants_only(finished_workflow, rule):
    upstream_mining, dependants = MINING[rule]
    outputs = []
    jobs = planned(finished_workflow, "--forcerun", rule, outputs=outputs)
    assert jobs.get(rule) == 1
    assert dependants <= set(jobs), f"{rule}: dependants not replanned: {dependants - set(jobs)}"
    rerun_upstream = (UPSTREAM | upstream_mining) & set(jobs)
    assert not rerun_upstream, f"--forcerun {rule} would redo upstream steps {rerun_upstream}"
    # round-1 proposals are upstream too; only round 2's are replanned
    assert not [f for f in outputs if "/round1/" in f], [f for f in outputs if "/round1/" in f]
    assert any("/round2/" in f for f in outputs)


def test_config_rejects_an_unknown_format(tmp_path):
    cfg = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())
    cfg["datasets"]["luna"]["format"] = "dicomdir"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = run(tmp_path, "-n")
    assert res.returncode != 0
    assert "dicomdir" in res.stdout + res.stderr


def test_fpr_extra_datasets_must_name_datasets_of_the_config(tmp_path):
    cfg = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())
    cfg["fpr"]["extra_datasets"] = ["LUNA"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = run(tmp_path, "-n")
    assert res.returncode != 0 and "fpr.extra_datasets ['LUNA'] are not datasets" in res.stdout + res.stderr


def real_data_config(wd, roots: dict, builtin: bool = False) -> dict:
    """tiny_config with corpus.builtin off and ``roots`` ({dataset: folder}) as the released datasets, written
    as ``wd``'s config.yaml."""
    cfg = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())
    cfg["corpus"]["builtin"] = builtin
    cfg["datasets"] = {d: {"format": d, "root": str(root)} for d, root in roots.items()}
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def test_real_data_switch_reads_released_folders_instead_of_the_corpus(tiny_corpus, tmp_path):
    """corpus.builtin: false + dataset roots elsewhere: no corpus job, the readers read those folders."""
    real_data_config(tmp_path, {"luna": tiny_corpus / "luna", "lits": tiny_corpus / "lits"})
    target = ["results/prep/luna/lesions.parquet", "results/prep/lits/lesions.parquet"]
    jobs = planned(tmp_path, *target)
    assert "synthesize_corpus" not in jobs and jobs["preprocess"] == 2
    res = run(tmp_path, *target)
    assert res.returncode == 0, res.stderr
    import pandas as pd

    les = pd.read_parquet(tmp_path / "results/prep/luna/lesions.parquet")
    assert len(les) and set(les.dataset) == {"luna"}
    assert not (tmp_path / "results" / "corpus").exists()


def test_a_typo_in_a_dataset_root_stops_the_dry_run(tiny_corpus, tmp_path):
    """A misspelt root passed `snakemake -n` and failed only when preprocessing ran (issue 23)."""
    real_data_config(tmp_path, {"luna": tiny_corpus / "luna", "lits": tiny_corpus / "lits_typo"})
    res = run(tmp_path, "-n")
    assert res.returncode != 0
    assert f"datasets.lits.root = '{tiny_corpus / 'lits_typo'}'" in res.stdout + res.stderr
    assert "datasets.luna" not in res.stdout + res.stderr


def test_with_real_data_the_default_target_plans_no_audit(tiny_corpus, tmp_path):
    """The audits read the built-in corpus's hidden truth; with real data the report's DAG planned
    audit_mining anyway, which crashed on the empty truth table (issue 23)."""
    roots = {d: tiny_corpus / d for d in ("deeplesion", "luna", "lits", "nihln")}
    real_data_config(tmp_path, roots)
    jobs = planned(tmp_path)
    assert "html_report" in jobs and "synthesize_corpus" not in jobs
    assert not {"audit_mining", "audit_delta", "review_simulate"} & set(jobs), jobs
    real_data_config(tmp_path, roots, builtin=True)  # the same on the built-in corpus: the audits are in the report
    assert {"audit_mining", "audit_delta"} <= set(planned(tmp_path))


@pytest.mark.parametrize("joint, joint_trainings, heldout", [("all", 2, None), ("own", 6, {"cases": 5, "seed": 9})])
def test_fig7_plans_alone_and_joint_trainings_and_reuses_the_main_model(tmp_path, joint, joint_trainings, heldout):
    """Paper Fig. 7: 3 datasets x 3 fractions trained alone, and joint models for the fractions below 100 %
    (one per fraction, or one per dataset and fraction); the joint 100 % model is the main round-1 model.
    Scored on the validation split, or on a held-out cohort synthesized once and preprocessed per dataset."""
    cfg = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())
    cfg["fig7"] = {"datasets": ["luna", "lits", "nihln"], "fractions": [0.25, 0.5, 1.0], "seeds": [0], "joint": joint,
                   "heldout": heldout}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    outputs = []
    jobs = planned(tmp_path, "fig7", outputs=outputs)
    assert jobs["fig7_train"] == 9 + joint_trainings
    assert jobs["train_lens"] == 1 and "results/lens/round1/lens.pt" in outputs
    assert jobs["fig7_propose"] == jobs["fig7_evaluate"] == 3 * 3 * 2
    assert jobs["fig7_table"] == 1 and not {"mine_cross_slice", "train_lens_round2", "evaluate"} & set(jobs)
    assert not [f for f in outputs if re.search(r"results/fig7/[a-z_]*joint_f100_s0/lens\.pt", f)]
    scored = [f for f in outputs if f.endswith(".3d.parquet") and f.startswith("results/fig7/")]
    evalset = "heldout" if heldout else "val"
    assert len(scored) == 18 and all(f.endswith(f"/{evalset}.3d.parquet") for f in scored)
    if heldout:  # one cohort, preprocessed once per dataset, shared by every model
        assert jobs["fig7_heldout_corpus"] == 1 and jobs["fig7_heldout_prep"] == 3
    else:
        assert "fig7_heldout_corpus" not in jobs


def test_fig7_without_its_config_section_says_so(tmp_path):
    cfg = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = run(tmp_path, "-n", "fig7")
    assert res.returncode != 0 and "no 'fig7' section" in res.stdout + res.stderr


@pytest.mark.parametrize("with_fig7", [True, False])
def test_ablation_plans_data_pooling_and_separate_models_training_each_alone_model_once(tmp_path, with_fig7):
    """Paper Table V: "data pooling" trains one pooled round-1 model per seed; "separate models" fuses one
    model per dataset trained alone: DeepLesion's is the "single" experiment's, the others Fig. 7's 100 %
    models (trained by its rule, also for seeds Fig. 7 does not run), or train_alone's without Fig. 7."""
    cfg = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())
    cfg["ablation"]["seeds"] = [0, 1]
    cfg["ablation"]["experiments"]["pooled"] = {"datasets": ["deeplesion"], "pool": ["luna", "lits", "nihln"]}
    cfg["ablation"]["rows"] |= {"Data pooling": {"experiment": "pooled", "stage": "r1_dl"},
                                "Separate models": {"experiment": "full", "stage": "sep_fused"}}
    if with_fig7:
        cfg["fig7"] = {"datasets": ["luna", "lits", "nihln"], "fractions": [0.5, 1.0], "seeds": [0]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    outputs = []
    jobs = planned(tmp_path, "ablation", *(["fig7"] if with_fig7 else []), outputs=outputs)
    models = sorted(f for f in outputs if f.endswith("lens.pt"))
    assert len(models) == len(set(models))
    assert {"results/pooled_s0/round1/lens.pt", "results/pooled_s1/round1/lens.pt"} <= set(models)
    assert jobs["propose_separate"] == 2 * 2 and jobs["evaluate"] == jobs["evaluate_val"] == 2 * 4  # test and val
    alone = [f for f in models if re.search(r"(alone_f100_s\d|results/alone/)", f)]
    assert not [f for f in alone if "deeplesion" in f]  # the "single" experiment's model instead
    if with_fig7:  # 3 datasets x 2 fractions x seed 0, + seed 1's 100 % models; 1 joint model (50 %)
        assert jobs["fig7_train"] == 6 + 3 + 1 and "train_alone" not in jobs
        assert sorted(alone) == sorted(f"results/fig7/{d}_alone_f100_s{s}/lens.pt"
                                       for d in ("luna", "lits", "nihln") for s in (0, 1))
    else:
        assert jobs["train_alone"] == 6 and "fig7_train" not in jobs
    res = run(tmp_path, "-n", "-p", "results/eval/full_s1/sep_fused/summary.parquet",
                "results/eval/pooled_s1/r1_dl/summary.parquet")
    assert res.returncode == 0, res.stderr
    fig7 = "results/fig7/{}_alone_f100_s1" if with_fig7 else "results/alone/{}_s1"
    assert ("lens propose --model results/single_s1/round1/lens.pt "
            + " ".join(fig7.format(d) + "/lens.pt" for d in ("luna", "lits", "nihln"))) in res.stdout
    assert "--seed 1 --set 'datasets=[deeplesion]' 'pool=[luna,lits,nihln]' --out results/pooled_s1/round1" in res.stdout


def release_copy(tiny_corpus, dest, manual_3d: bool):
    """The tiny corpus's four dataset folders as released datasets (no hidden truth beside them), DeepLesion
    with or without its manual 3D test set."""
    import shutil

    roots = {}
    for d in ("deeplesion", "luna", "lits", "nihln"):
        roots[d] = dest / d
        shutil.copytree(tiny_corpus / d, roots[d], ignore=None if manual_3d or d != "deeplesion"
                        else shutil.ignore_patterns("manual_3d"))
    return roots


def evaluate_protocols(res) -> set[str]:
    return set(re.findall(r"lens evaluate .*?--protocol (\w+)", res.stdout))


@pytest.mark.parametrize("manual_3d", [False, True])
def test_the_real_config_plans_the_papers_run_with_no_audit(tiny_corpus, tmp_path, manual_3d):
    """config/real.yaml over config.yaml (issue 23): no corpus, no audit, no simulated review; without
    DeepLesion's manual 3D set the evaluation is DeepLesion's key-slice protocol and the validation
    mining precision (which needs 3D truth) is left out."""
    roots = release_copy(tiny_corpus, tmp_path / "data", manual_3d)
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    real = yaml.safe_load((ROOT / "config" / "real.yaml").read_text())
    assert real["corpus"]["builtin"] is False and real["train"]["preset"] == "paper"
    assert (real["preprocess"]["pixel_mm"], real["preprocess"]["slice_mm"]) == (0.8, 2.0)
    real["datasets"] = {d: {"format": d, "root": str(r)} for d, r in roots.items()}
    (tmp_path / "real.yaml").write_text(yaml.safe_dump(real))
    res = run(tmp_path, "-n", "-p", "--configfile", tmp_path / "config.yaml", tmp_path / "real.yaml")
    assert res.returncode == 0, res.stdout + res.stderr
    jobs = job_counts(res)
    assert "html_report" in jobs and "synthesize_corpus" not in jobs and jobs["preprocess"] == 4 * 32
    assert not {"audit_mining", "audit_delta", "review_simulate"} & set(jobs), jobs
    assert {"train_fpr", "score_fpr"} <= set(jobs)  # fpr.enabled (default true): the paper's (h) row
    assert evaluate_protocols(res) == {"lens3d" if manual_3d else "deeplesion2d"}
    assert ("mining_precision_val" in jobs) == manual_3d
    assert "--pixel-mm 0.8 --slice-mm 2.0 --storage float16" in res.stdout


def test_a_real_layout_run_without_truth_or_manual_3d_set_reaches_the_report(tiny_corpus, tmp_path):
    """Issue 23: the default DAG, at the tiny scale, on the corpus as released datasets with the hidden truth and
    DeepLesion's manual 3D set removed, runs from the released files through both rounds and mining to
    report.html, scored by DeepLesion's key-slice protocol, with no audit. The tiny 1-epoch round-2 model finds no
    true positive for the FPR to train on (`lens train-fpr` refuses that, naming the file and this switch), so
    the run sets fpr.enabled: false and the table ends at round 2."""
    import html
    import zipfile

    import pandas as pd

    roots = release_copy(tiny_corpus, tmp_path / "data", manual_3d=False)
    cfg = real_data_config(tmp_path, roots)
    cfg["mining"]["encoder_steps"] = 30  # the DAG's path is tested here, not the embedding
    cfg["fpr"]["enabled"] = False
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = run(tmp_path, timeout=1500)  # the default target
    assert res.returncode == 0, res.stderr[-4000:]
    for t in ["results/eval/lens/r2_fused/summary.parquet", "results/eval/lens/r2_fused/val/summary.parquet"]:
        s = pd.read_parquet(tmp_path / t).query("stratum_by == 'all'").iloc[0]
        assert s["protocol"] == "deeplesion2d" and s["n_gt"] > 0 and s["n_units"] > 0
    table = pd.read_parquet(tmp_path / "results/eval/table.parquet")
    assert set(table["protocol"]) == {"deeplesion2d"} and "FP@16" in table.columns  # DeepLesion's FPs per image
    assert list(table["variant"]) == ["round 1 (LENS)", "round 2 (LENS + mining)"]  # no FPR rows
    page = html.unescape((tmp_path / "results" / "report.html").read_text())
    assert "DeepLesion's official key-slice protocol" in page and "not comparable with the paper's Table II" in page
    assert "<h2>Mining</h2>" not in page  # the mining audit reads the hidden truth: not run, not shown
    assert not (tmp_path / "results" / "corpus").exists()
    assert not (tmp_path / "results" / "lens" / "fpr").exists()
    truths = list((tmp_path / "results" / "truth").glob("*.parquet"))  # the rules' fixed outputs: empty here
    assert all(pd.read_parquet(t).empty for t in truths), truths
    assert not list((tmp_path / "results").rglob("audit*.parquet"))
    # the captioned Snakemake report of the same run, as README documents it
    rep = run(tmp_path, "--report", "results/report.zip")
    assert rep.returncode == 0, rep.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "results" / "report.zip") as z:
        names = z.namelist()
    assert any(n.endswith("report.html") for n in names) and any(n.endswith("froc.png") for n in names)
