"""Every departure from the paper is a named config key: one registry (lens_core/deviations.py), one docs table
(docs/deviations.md) that agrees with it and with config.yaml, and the deviations in effect recorded in the
trained model's metadata and in the proposal tables (with the paper's value beside ours)."""
import re

import pandas as pd
import pytest
import torch
import yaml

from lens_core.cli import main
from lens_core.deviations import BY_KEY, REGISTRY, fmt, in_effect, lookup, training_deviations
from lens_core.io import read_meta
from lens_core.model.lens import load_lens
from lens_core.training.config import TrainConfig
from lens_core.training.loop import train

from conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def docs_rows() -> dict[str, list[str]]:
    """docs/deviations.md's table: config key -> [paper, default, deviates, reason]."""
    rows = {}
    for line in (ROOT / "docs" / "deviations.md").read_text().splitlines():
        m = re.match(r"\|\s*`([a-z_]+\.[a-z_0-9]+)`\s*\|(.*)\|\s*$", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} listed twice in docs/deviations.md"
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_the_docs_table_the_registry_and_config_yaml_agree():
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    rows = docs_rows()
    assert len(REGISTRY) == len(BY_KEY), "a key registered twice"
    assert set(rows) == set(BY_KEY), (f"in the registry, not documented: {sorted(set(BY_KEY) - set(rows))}; "
                                      f"documented, not in the registry: {sorted(set(rows) - set(BY_KEY))}")
    for key, (paper, ours, deviates, reason) in rows.items():
        value = lookup(config, key)  # every registered key is a config.yaml key
        assert paper == fmt(BY_KEY[key].paper), f"{key}: paper value {paper} in docs, {BY_KEY[key].paper} registered"
        assert ours == fmt(value), f"{key}: docs say the default is {ours}, config.yaml has {fmt(value)}"
        assert deviates == ("yes" if key in in_effect({key.split('.')[0]: {key.split('.')[1]: value}}) else "no"), key
        assert reason, f"{key}: no reason given"
    # the documented default departures are exactly those the default run records
    assert {k for k, r in rows.items() if r[2] == "yes"} >= {"train.preset", "train.slices", "preprocess.pixel_mm"}


def test_in_effect_compares_as_yaml_reads_and_names_both_values():
    dev = in_effect({"train": {"lr": 1e-4, "lr_steps": (4, 6), "slices": 3, "crop_size": None, "unknown": 1},
                     "propose": {"score": "two_stage"}})
    assert dev == {"train.slices": {"value": 3, "paper": 9}, "propose.score": {"value": "two_stage", "paper": "head"}}
    # 1 is not true: a value that is not the paper's boolean is reported, not taken for it
    assert in_effect({"mining": {"unlabeled_slices": 1}}) == {"mining.unlabeled_slices": {"value": 1, "paper": True}}
    assert "mining.unlabeled_slices" not in in_effect({"mining": {"unlabeled_slices": True}})
    # round 2 judges unlabeled_slices against round 2's paper value (true), round 1 against false
    r1 = training_deviations(TrainConfig(unlabeled_slices=True).to_dict())
    r2 = training_deviations(TrainConfig(unlabeled_slices=True).to_dict(), round2=True)
    assert r1["train.unlabeled_slices"] == {"value": True, "paper": False}
    assert "train.unlabeled_slices" not in r2 and "mining.unlabeled_slices" not in r2
    r2_off = training_deviations(TrainConfig().to_dict(), round2=True)
    assert r2_off["mining.unlabeled_slices"] == {"value": False, "paper": True}


def test_a_trained_model_and_its_proposals_record_the_deviations_in_effect(tiny_prep, tmp_path):
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg = TrainConfig.from_config({**config["train"], "datasets": ["deeplesion", "luna"], "epochs": 1,
                                   "lr_steps": [], "warmup_steps": 0, "fc_dim": 32, "rois_per_image": 8})
    path = train(cfg, tiny_prep, tmp_path / "r1", device="cpu", progress=False)
    _, meta = load_lens(path)
    dev = meta["deviations"]
    assert dev["train.preset"] == {"value": "cpu", "paper": "paper"}
    assert dev["train.slices"] == {"value": config["train"]["slices"], "paper": 9}
    assert dev["train.crop_size"] == {"value": config["train"]["crop_size"], "paper": None}
    assert dev["preprocess.pixel_mm"] == {"value": 4.0, "paper": 0.8}  # the tiny prep's 4 mm pixels (volumes.h5)
    assert "train.warmup_steps" not in dev and "train.unlabeled_slices" not in dev  # at the paper's values here
    assert set(dev) <= set(BY_KEY)
    # `lens propose` carries the model's deviations and its own score; two_stage is recorded as one
    outs = {}
    for score in ("head", "two_stage"):
        out = tmp_path / f"{score}.parquet"
        assert main(["propose", "--model", str(path), "--prep-dir", str(tiny_prep), "--dataset", "deeplesion",
                     "--split", "all", "--out", str(out), "--out3d", str(tmp_path / f"{score}.3d.parquet"),
                     "--min-score", "0", "--score", score, "--threads", "1", "--no-progress"]) == 0
        for p in (out, tmp_path / f"{score}.3d.parquet"):
            m = read_meta(p)
            assert m["score"] == score and m["deviations"]["train.preset"] == dev["train.preset"]
            assert ("propose.score" in m["deviations"]) == (score == "two_stage")
        outs[score] = pd.read_parquet(out)
    h, t = outs["head"], outs["two_stage"]
    assert len(h) and len(t)
    assert not h["score_deeplesion"].reset_index(drop=True).equals(t["score_deeplesion"].reset_index(drop=True))


def test_the_cli_offers_the_models_scores():
    from lens_core.inference.command import SCORES as CLI_SCORES
    from lens_core.model.lens import SCORES

    assert CLI_SCORES == SCORES


def test_the_fpr_records_its_preset_and_extra_datasets():
    from lens_core.fpr.train import FprTrainConfig, fpr_deviations

    dev = fpr_deviations(FprTrainConfig.for_preset("cpu"), ["luna", "lits"])
    assert dev == {"fpr.preset": {"value": "cpu", "paper": "paper"},
                   "fpr.extra_datasets": {"value": ["luna", "lits"], "paper": []}}
    assert fpr_deviations(FprTrainConfig.for_preset("paper"), []) == {}
