"""`lens fig5-table` (paper Fig. 5) and the workflow around it: one round-2 experiment per swept mining value,
mining the main experiment's round-1 proposals again with the value; and Table IV's experiments, which mine the
full experiment's proposals with only some strategies on."""
import json

import pandas as pd
import pytest
from PIL import Image

from dag import ROOT, run, tiny_workdir
from lens_core.cli import main
from test_ablation_table import evaluated_run


@pytest.fixture
def evaluated(tmp_path):
    """Synthetic evaluations (test and val) of three delta values; the configured 0.15 is the main experiment."""
    ev = tmp_path / "eval"
    quality = {"lens": 0.85, "fig5delta0000_s0": 0.15, "fig5delta0300_s0": 0.85}
    for i, (exp, q) in enumerate(quality.items()):
        for split in ("test", "val"):
            evaluated_run(ev, exp, "r2_fused", q, 40 + i + (100 if split == "val" else 0), split)
    spec = {"delta": {"default": 0.15, "stage": "r2_fused",
                      "runs": [{"value": 0, "exp": "fig5delta0000_s0"}, {"value": 0.15, "exp": "lens"},
                               {"value": 0.3, "exp": "fig5delta0300_s0"}]}}
    return ev, spec


def test_fig5_table_reads_validation_first_with_intervals_and_paired_differences(evaluated, tmp_path):
    ev, spec = evaluated
    out = tmp_path / "fig5"
    argv = ["fig5-table", "--spec", json.dumps(spec), "--eval-dir", str(ev), "--out", str(out), "--bootstrap", "300"]
    assert main(argv) == 0
    t = pd.read_parquet(out / "table.parquet")
    assert t["value"].tolist() == [0.0, 0.15, 0.3] and t["default"].tolist() == [False, True, False]
    assert (t["val_average_low"] <= t["val_average_mean"]).all() and (t["val_average_mean"] <= t["val_average_high"]).all()
    d = pd.read_parquet(out / "differences.parquet").set_index(["row", "split"])
    zero = d.loc[("delta = 0", "val")]  # a far worse detector (15 % of lesions found against 85 %)
    assert zero["delta_high"] < 0 and zero["delta"] == pytest.approx(
        t.set_index("value").loc[0.0, "val_average_mean"] - t.set_index("value").loc[0.15, "val_average_mean"])
    assert ("delta = 0.15", "val") not in d.index  # the configured value is the reference
    assert zero["verdict"] == "reproduced"  # the configured (paper's) value is the better one
    md = (out / "table.md").read_text()
    assert "| **0.15** |" in md and "| 0 |" in md and "chosen on the validation split" in md
    # the configured value is the better one with an interval that excludes 0: the paper's choice holds
    assert f"{zero['delta']:+.1f} | [{zero['delta_low']:.1f}, {zero['delta_high']:.1f}] | reproduced |" in md
    with Image.open(out / "fig5.png") as im:
        assert im.size[0] > 300
    # the same command again: the same intervals
    assert main(argv) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "differences.parquet").set_index(["row", "split"]), d)


def test_fig5_spec_must_hold_the_configured_value(evaluated, tmp_path, caplog):
    ev, spec = evaluated
    spec["delta"]["default"] = 0.2
    assert main(["fig5-table", "--spec", json.dumps(spec), "--eval-dir", str(ev), "--out", str(tmp_path / "o")]) == 1
    assert "default 0.2 is not among its values" in caplog.text and not (tmp_path / "o").exists()


def test_fig5_over_seeds_averages_each_values_seeds_and_resamples_them(tmp_path):
    """fig5.seeds: each value's runs at every seed, paired seed by seed with the configured value's (the full
    experiment at that seed); the interval then carries the seeds' spread, so it is wider than one seed's."""
    ev = tmp_path / "eval"
    # the configured delta's runs agree across seeds; delta = 0's differ a lot from seed to seed
    quality = {"lens": 0.8, "full_s1": 0.8, "fig5delta0000_s0": 0.2, "fig5delta0000_s1": 0.75}
    for i, (exp, q) in enumerate(quality.items()):
        for split in ("test", "val"):
            evaluated_run(ev, exp, "r2_fused", q, 60 + i + (100 if split == "val" else 0), split)
    runs = [{"value": 0, "exps": ["fig5delta0000_s0", "fig5delta0000_s1"]},
            {"value": 0.15, "exps": ["lens", "full_s1"]}]
    spec = {"delta": {"default": 0.15, "stage": "r2_fused", "runs": runs}}
    out = tmp_path / "fig5"
    assert main(["fig5-table", "--spec", json.dumps(spec), "--eval-dir", str(ev), "--out", str(out),
                 "--bootstrap", "400"]) == 0
    t = pd.read_parquet(out / "table.parquet").set_index("value")
    assert t["seeds"].tolist() == [2, 2] and t.loc[0.0, "exp"] == "fig5delta0000_s0 fig5delta0000_s1"
    d = pd.read_parquet(out / "differences.parquet").set_index(["row", "split"]).loc[("delta = 0", "val")]
    # one seed's run alone (seed 0, far worse) against the same pairing over both seeds
    one = {"delta": {"default": 0.15, "stage": "r2_fused", "runs": [{"value": 0, "exp": "fig5delta0000_s0"},
                                                                     {"value": 0.15, "exp": "lens"}]}}
    assert main(["fig5-table", "--spec", json.dumps(one), "--eval-dir", str(ev), "--out", str(tmp_path / "one"),
                 "--bootstrap", "400"]) == 0
    d1 = pd.read_parquet(tmp_path / "one" / "differences.parquet").set_index(["row", "split"]).loc[("delta = 0", "val")]
    assert d1["delta_high"] < 0 and d1["verdict"] == "reproduced"
    assert d["delta_high"] - d["delta_low"] > 1.5 * (d1["delta_high"] - d1["delta_low"])
    assert d["delta"] == pytest.approx(t.loc[0.0, "val_average_mean"] - t.loc[0.15, "val_average_mean"])
    assert "two-level" in (out / "table.md").read_text() and "2 seeds" in (out / "table.md").read_text()


def test_fig5_spec_with_unequal_seeds_is_refused(evaluated, tmp_path, caplog):
    ev, spec = evaluated
    spec["delta"]["runs"][0] = {"value": 0, "exps": ["fig5delta0000_s0", "fig5delta0000_s1"]}
    assert main(["fig5-table", "--spec", json.dumps(spec), "--eval-dir", str(ev), "--out", str(tmp_path / "o")]) == 1
    assert "every value needs the same seeds" in caplog.text and not (tmp_path / "o").exists()


def _dry(wd, *targets) -> str:
    res = run(wd, "-n", "-p", *targets)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _commands(printed: str, step: str) -> list[str]:
    lines = (line.strip().removeprefix("Shell command:").strip() for line in printed.splitlines())
    return [line for line in lines if line.startswith(f"lens {step} ")]


def test_fig5_experiments_mine_the_main_round1_proposals_again_with_their_value(tmp_path):
    wd = tiny_workdir(tmp_path, fig5={"values": {"delta": [0, 0.15, 0.3], "sigma": [0.5, 1.0]}})
    printed = _dry(wd, "fig5")
    # one round-1 model (the main one); one round 2 per value other than the configured one, plus the main's
    assert len(_commands(printed, "train")) == 1 + 3 + 1
    intra = _commands(printed, "mine-intra-patient")
    assert any("--delta 0 " in c and "fig5delta0000_s0" in c for c in intra)  # delta = 0: nothing matched
    assert any("--delta 0.3 " in c and "fig5delta0300_s0" in c for c in intra)
    cross = _commands(printed, "mine-cross-dataset")
    assert any("--sigma 1.0 " in c and "fig5sigma1000_s0" in c for c in cross)  # sigma = 1: none uncertain
    # every sweep experiment mines the main experiment's round-1 proposals and trains no round 1 of its own
    for c in _commands(printed, "build-tracklets"):
        assert "results/lens/round1/proposals/fused/deeplesion/train.parquet" in c
    assert "results/fig5delta0300_s0/round1" not in printed
    assert "lens fig5-table" in printed and "results/eval/fig5delta0300_s0/r2_fused/val/summary.parquet" in printed


def test_fig5_seeds_mine_each_seeds_full_round1_proposals(tmp_path):
    wd = tiny_workdir(tmp_path, fig5={"values": {"delta": [0, 0.15]}, "seeds": [0, 1]})
    printed = _dry(wd, "fig5")
    # round 1 of the main experiment and of full_s1; round 2 of both and of delta = 0 at each seed
    assert len(_commands(printed, "train")) == 2 + 4
    intra = {c.split("--out ")[1].split("/")[1]: c for c in _commands(printed, "mine-intra-patient")}
    assert "--delta 0 " in intra["fig5delta0000_s1"] and "results/full_s1/" in intra["fig5delta0000_s1"]
    assert "results/lens/" in intra["fig5delta0000_s0"] and "full_s1" not in intra["fig5delta0000_s0"]
    assert "results/fig5delta0000_s1/round1" not in printed  # mined from full_s1's round 1, none of its own
    table = [c for c in printed.splitlines() if "lens fig5-table" in c]
    assert table and '"exps": ["fig5delta0000_s0", "fig5delta0000_s1"]' in table[0].replace("\\", "")


TABLE_IV = {"seeds": [0], "experiments": {
    "full": {}, "single": {"datasets": ["deeplesion"]},
    "minecs": {"datasets": ["deeplesion"], "mining_from": "full",
               "mining": {"intra_patient": False, "cross_dataset": False, "unlabeled_slices": False}},
    "minecd": {"datasets": ["deeplesion"], "mining_from": "full", "mining": {"unlabeled_slices": True}}},
    "rows": {"(a)": {"experiment": "single", "stage": "r1_dl"},
             "+ cross-slice": {"experiment": "minecs", "stage": "r2_dl", "vs": "(a)"},
             "+ all": {"experiment": "minecd", "stage": "r2_dl", "vs": "+ cross-slice"}}}


def test_table_iv_experiments_merge_only_their_strategies_from_the_full_experiments_proposals(tmp_path):
    wd = tiny_workdir(tmp_path, ablation=TABLE_IV)
    printed = _dry(wd, "ablation")
    merge = {c.split("--out ")[1].split("/")[1]: c for c in _commands(printed, "merge-labels")}
    # cross-slice alone: neither intra-patient boxes nor uncertain regions
    assert "mining/cross_slice.parquet" in merge["minecs_s0"]
    assert "intra_patient" not in merge["minecs_s0"] and "--uncertain" not in merge["minecs_s0"]
    assert "intra_patient.parquet" in merge["minecd_s0"] and "--uncertain results/minecd_s0/" in merge["minecd_s0"]
    assert not [c for c in _commands(printed, "mine-intra-patient") if "minecs_s0" in c]
    # the full model's single-type experts mine for the DeepLesion-alone experiment
    cross = [c for c in _commands(printed, "mine-cross-dataset") if "minecd_s0" in c]
    assert len(cross) == 1 and "--experts luna,lits,nihln " in cross[0]
    assert "results/lens/round1/proposals/fused/deeplesion/train.parquet" in cross[0]
    # round 2 on DeepLesion alone, with the experiment's own unlabeled-slice switch
    train = [c for c in _commands(printed, "train") if "--out results/minecs_s0/round2" in c]
    assert len(train) == 1 and "'datasets=[deeplesion]'" in train[0] and " unlabeled_slices=false" in train[0]
    assert "results/minecs_s0/round1" not in printed  # no round 1 of its own


def test_an_unknown_mining_override_is_refused(tmp_path):
    bad = json.loads(json.dumps(TABLE_IV))
    bad["experiments"]["minecs"]["mining"]["delt"] = 0.2
    res = run(tiny_workdir(tmp_path, ablation=bad), "-n", "ablation")
    assert res.returncode != 0 and "'delt' was unexpected" in res.stdout + res.stderr


def test_delta_zero_mines_nothing():
    import numpy as np

    from lens_core.mining.intra_patient import match_intra_patient

    ids = np.array([0, 0], np.int64)
    e = np.zeros((2, 4), np.float32)  # identical embeddings: distance 0, still not < 0
    ai, ti, d = match_intra_patient(ids[:1], ids[:1], e[:1], ids[1:], ids[1:] + 1, e[1:], 0.0)
    assert len(ai) == len(ti) == len(d) == 0
    assert len(match_intra_patient(ids[:1], ids[:1], e[:1], ids[1:], ids[1:] + 1, e[1:], 0.1)[0]) == 1
    with pytest.raises(ValueError, match="delta"):
        match_intra_patient(ids[:1], ids[:1], e[:1], ids[1:], ids[1:] + 1, e[1:], -0.1)


def test_the_repository_config_plans_fig5_and_table_iv(tmp_path):
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    printed = _dry(tmp_path, "fig5", "ablation")
    assert "lens fig5-table" in printed and "results/minecs_s2/round2/lens.pt" in printed
