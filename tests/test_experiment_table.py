"""Experiments as data (issue 24): every experiment the workflow can build is a record of one table resolved from
the config (workflow/experiment_table.py), the rules look experiments up in it, and adding an ablation row is one
entry in the config that plans that row's jobs and nothing else."""
import sys

import yaml

from dag import ROOT, TINY_CONFIG, planned, run, tiny_workdir

sys.path.insert(0, str(ROOT / "workflow"))
import experiment_table  # noqa: E402

CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())


def test_the_table_holds_the_main_run_each_ablation_experiment_at_each_seed_and_each_swept_fig5_value():
    table = experiment_table.experiment_table(CONFIG)
    seed = CONFIG["train"]["seed"]
    assert table["lens"]["kind"] == "main" and table["lens"]["seed"] == seed and table["lens"]["spec"] == {}
    for recipe, spec in CONFIG["ablation"]["experiments"].items():
        for s in CONFIG["ablation"]["seeds"]:
            name = "lens" if recipe == "full" and s == seed else f"{recipe}_s{s}"
            assert table[name]["spec"] == (spec or {}) and table[name]["seed"] == s, name
    swept = [(k, v) for k, vs in CONFIG["fig5"]["values"].items() for v in vs if float(v) != float(CONFIG["mining"][k])]
    for k, v in swept:
        r = table[f"{experiment_table.fig5_name(k, v)}_s{seed}"]
        assert r["kind"] == "fig5" and r["spec"] == {"mining_from": "full", "mining": {k: v}}
    n = 1 + len(CONFIG["ablation"]["experiments"]) * len(CONFIG["ablation"]["seeds"]) - 1 + len(swept)
    assert len(table) == n  # nothing else: an undeclared name is not buildable


def test_fig7_models_say_what_trains_them():
    table = experiment_table.fig7_table(CONFIG)
    f7 = CONFIG["fig7"]
    for d in f7["datasets"]:
        r = table[f"{d}_alone_f25_s0"]
        assert r == {"datasets": [d], "fractions": {d: 0.25}, "seed": 0}
    joint = table["joint_f25_s0"]  # fig7.joint all: one joint model, every Fig. 7 dataset reduced
    assert joint["datasets"] == CONFIG["train"]["datasets"] and joint["fractions"] == {d: 0.25 for d in f7["datasets"]}


def test_review_value_rows_are_the_declared_percentages_and_no_other_is_buildable(tmp_path):
    rows = experiment_table.review_table(CONFIG)
    percents = CONFIG["review"]["value"]["percents"]
    assert [r["fraction"] for r in rows.values()] == [p / 100 for p in percents]
    assert list(rows) == [f"lens_rv{p:g}" for p in percents]
    wd = tiny_workdir(tmp_path)
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["review"] = {**CONFIG["review"], **(cfg.get("review") or {})}
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    declared = run(wd, "-n", f"results/lens/round2rv{percents[-1]:g}/lens.pt")
    assert declared.returncode == 0, declared.stderr
    undeclared = run(wd, "-n", "results/lens/round2rv33/lens.pt")   # 33 % is not a row of the table
    assert undeclared.returncode != 0 and "MissingRuleException" in undeclared.stdout + undeclared.stderr


def test_snakemake_experiments_writes_the_table(tmp_path):
    tiny_workdir(tmp_path)
    res = run(tmp_path, "experiments")
    assert res.returncode == 0, res.stderr
    lines = (tmp_path / "results" / "experiments.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["name", "kind", "recipe", "seed", "settings"]
    # the tiny config's two experiments, then the review-value rows of the schema's default percentages
    names = [line.split("\t")[0] for line in lines[1:]]
    assert names == ["lens", "single_s0", "lens_rv0", "lens_rv25", "lens_rv100"]
    assert lines[-1].split("\t")[1:4] == ["review value", "review", "0"]
    # a declaration changed: the table is written again (a run with no input is rerun by its params)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    cfg["ablation"]["experiments"]["noip"] = {"datasets": ["deeplesion"], "mining": {"intra_patient": False}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert run(tmp_path, "experiments").returncode == 0
    names = [line.split("\t")[0] for line in (tmp_path / "results" / "experiments.tsv").read_text().splitlines()[1:]]
    assert "noip_s0" in names


def test_an_undeclared_experiment_is_refused_by_name(tmp_path):
    tiny_workdir(tmp_path)
    res = run(tmp_path, "-n", "results/eval/single_s7/r1_dl/summary.parquet")  # seed 7 is not ablation.seeds
    assert res.returncode != 0
    assert "unknown experiment 'single_s7': not one the config declares" in res.stdout + res.stderr


def test_adding_an_ablation_row_is_one_config_entry_that_plans_its_jobs_and_nothing_else(tmp_path):
    """The recipe of a new row (no intra-patient mining, DeepLesion alone) and the row: with everything else
    finished, the dry run plans that experiment's jobs and the ablation table, nothing of the others."""
    wd = tiny_workdir(tmp_path)
    summary = run(wd, "--summary", "ablation")
    assert summary.returncode == 0, summary.stderr
    for line in summary.stdout.splitlines()[1:]:
        f = wd / line.split("\t")[0]
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
    assert run(wd, "--touch", "ablation").returncode == 0
    assert planned(wd, "ablation") == {}
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["ablation"]["experiments"]["noip"] = {"datasets": ["deeplesion"], "mining": {"intra_patient": False}}
    cfg["ablation"]["rows"]["(x) no intra-patient"] = {"experiment": "noip", "stage": "r2_dl"}
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    outputs = []
    jobs = planned(wd, "ablation", outputs=outputs)
    assert jobs.get("train_lens") == 1 and jobs.get("train_lens_round2") == 1 and "embed_lesions" not in jobs
    others = [f for f in outputs if "noip_s0" not in f and not f.startswith("results/eval/ablation/")]
    assert others == [], others


def test_an_experiments_norm_reaches_every_round_it_trains(tmp_path):
    """The normalisation row (issue 21): `norm: group` trains the experiment's rounds with GroupNorm, and
    no other experiment's."""
    wd = tiny_workdir(tmp_path)
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["ablation"]["experiments"]["groupnorm"] = {"norm": "group"}
    cfg["ablation"]["rows"]["(b) with GroupNorm"] = {"experiment": "groupnorm", "stage": "r2_fused"}
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = run(wd, "-n", "-p", "ablation")
    assert res.returncode == 0, res.stderr
    train = [line for line in res.stdout.splitlines() if "lens train " in line]
    gn = [c for c in train if "results/groupnorm_s0/" in c]
    assert len(gn) == 2 and all(" norm=group" in c for c in gn)  # round 1 and round 2
    assert not [c for c in train if "norm=" in c and "groupnorm_s0" not in c]
    bad = {**cfg["ablation"]["experiments"]["groupnorm"], "norm": "layer"}
    cfg["ablation"]["experiments"]["groupnorm"] = bad
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    refused = run(wd, "-n", "ablation")
    assert refused.returncode != 0 and "layer" in refused.stdout + refused.stderr
