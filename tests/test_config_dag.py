"""One source of configuration: every step takes its settings from Snakemake's `config` (the config file,
--configfile, --config), a changed setting replans exactly the steps that use it and what follows, and a
bad setting is refused by the schema at `snakemake -n`, before any job runs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dag import ROOT, TINY_CONFIG, finish, job_counts, run, tiny_workdir

TINY = yaml.safe_load(TINY_CONFIG.read_text())

ROUND1 = {"train_lens"}
DATA = {"synthesize_corpus", "preprocess", "gather_prep"}
MINING_BEFORE_CROSS_DATASET = {"build_tracklets", "mine_cross_slice", "embed_lesions",
                               "mine_intra_patient"}
EVALUATION = {"evaluate", "evaluate_val", "froc_plot", "html_report", "all"}


def _commands(printed: str, step: str = "") -> list[str]:
    """The `lens STEP` shell commands of a dry run's printout."""
    lines = (line.strip().removeprefix("Shell command:").strip() for line in printed.splitlines())
    return [line for line in lines if line.startswith(f"lens {step}")]


def _planned(wd, *args) -> tuple[dict[str, int], str]:
    """Job counts per rule of a dry run, and its printout (with the shell commands)."""
    res = run(wd, "-n", "-p", *args)
    assert res.returncode == 0, res.stdout + res.stderr
    return job_counts(res), res.stdout


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A working folder whose every output exists and is up to date, with each job's provenance (params
    included) recorded: the outputs are created, then `snakemake --touch --forceall` records every job."""
    wd = finish(tiny_workdir(tmp_path_factory.mktemp("finished")), "--forceall")
    assert _planned(wd)[0] == {}
    return wd


def _changed(wd, section, **values) -> Path:
    """A user's own config file on top of config.yaml (`--configfile mine.yaml`): only the changed keys."""
    path = wd.parent / f"{wd.name}-{section}.yaml"
    path.write_text(yaml.safe_dump({section: values}))
    return path


@pytest.mark.parametrize("key, value", [("epochs", 2), ("lr", 0.003), ("rois_per_image", 16)])
def test_a_training_setting_replans_round_1_and_what_follows(finished, key, value):
    jobs, printed = _planned(finished, "--configfile", _changed(finished, "train", **{key: value}))
    assert jobs["train_lens"] == 1 and jobs["train_lens_round2"] == 1
    assert {"propose", "build_tracklets", "mine_cross_dataset", "train_fpr", "evaluate"} <= set(jobs)
    assert not DATA & set(jobs)
    # the job gets the new value, not config.yaml's
    commands = _commands(printed, "train ")
    assert len(commands) == 2 and all(f'"{key}": {value}' in c for c in commands), commands


def test_mining_sigma_replans_cross_dataset_mining_and_what_follows_not_round_1(finished):
    jobs, printed = _planned(finished, "--configfile", _changed(finished, "mining", sigma=0.3))
    assert jobs["mine_cross_dataset"] == 1 and "--sigma 0.3 " in printed
    assert {"merge_labels", "audit_mining", "train_lens_round2", "train_fpr", "evaluate"} <= set(jobs)
    assert not (ROUND1 | DATA | MINING_BEFORE_CROSS_DATASET) & set(jobs)
    outputs = [line for line in printed.splitlines() if line.strip().startswith("output:")]
    assert not [o for o in outputs if "/round1/" in o] and [o for o in outputs if "/round2/" in o]


def test_evaluation_iobb_replans_evaluation_only(finished):
    jobs, printed = _planned(finished, "--configfile", _changed(finished, "evaluation", iobb=0.5))
    assert jobs["evaluate"] == 4 and set(jobs) <= EVALUATION
    assert "--threshold 0.5 " in printed


def test_a_corpus_setting_resynthesizes_the_corpus(finished):
    jobs, printed = _planned(finished, "--configfile", _changed(finished, "corpus", seed=4))
    assert jobs["synthesize_corpus"] == 1 and jobs["preprocess"] == 4 and jobs["train_lens"] == 1
    synth = _commands(printed, "synthesize ")[0]
    assert '"seed": 4' in synth and '"size_px": 64' in synth and "config.yaml" not in synth


def test_no_step_reads_the_config_file_itself(finished):
    _, printed = _planned(finished, "--forceall")
    commands = _commands(printed)
    assert len(commands) > 30 and not [c for c in commands if "config.yaml" in c]


# ------------------------------------------------------------------------------------ the schema
def _with(path: str, value):
    """The tiny config with `path` (dotted) set to `value`."""
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    *parents, leaf = path.split(".")
    node = cfg
    for k in parents:
        node = node.setdefault(k, {})
    node[leaf] = value
    return cfg


@pytest.mark.parametrize("path, value, message", [
    ("fpr.extra_dataset", ["luna"], "'extra_dataset' was unexpected"),
    ("corpus.deeplesion.patiens", 4, "'patiens' was unexpected"),
    ("corpus.luna.case", 4, "'case' was unexpected"),
    ("train.lr", "fast", "'fast' is not of type 'number'"),
    ("train.rois_per_image", -32, "-32 is less than the minimum of 1"),
    ("train.lambda1", -0.1, "-0.1 is less than the minimum of 0"),
    ("train.epoch", 3, "'epoch' was unexpected"),
    ("mining.sigma", 1.5, "1.5 is greater than the maximum of 1"),
    ("evaluation.iobb", 0, "0 is less than or equal to the minimum of 0"),
    ("preprocess.pixel_mm", 0, "0 is less than or equal to the minimum of 0"),
    ("propose.shards", 0, "0 is less than the minimum of 1"),
    ("minig", {"theta": 0.5}, "'minig' was unexpected"),
    ("ablation.rows.(x)", {"experiment": "full", "stage": "r1_dl", "vs": 3},
     "is not valid under any of the given schemas"),
])
def test_the_schema_refuses_a_bad_setting_at_the_dryrun(tmp_path, path, value, message):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_with(path, value)))
    res = run(tmp_path, "-n")
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "Error validating config file" in out and message in out, out
    assert not (tmp_path / "results").exists()


def _objects(schema, where="config"):
    """Every (where, schema) of the schema that describes a mapping with named keys."""
    if not isinstance(schema, dict):
        return
    if "properties" in schema:
        yield where, schema
    for k, sub in schema.get("properties", {}).items():
        yield from _objects(sub, f"{where}.{k}")
    for key in ("additionalProperties", "items"):
        yield from _objects(schema.get(key), f"{where}[]")
    for alt in schema.get("oneOf", []):
        yield from _objects(alt, where)
    for k, sub in schema.get("$defs", {}).items():
        yield from _objects(sub, f"$defs.{k}")


def test_every_section_of_the_schema_is_closed():
    """A section added later (a new pipeline step's settings) must be closed too: a typo is never a no-op."""
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    objects = dict(_objects(schema))
    assert {"config", "config.train", "config.corpus", "config.corpus.deeplesion", "config.fpr", "config.mining",
            "config.propose", "config.preprocess", "config.evaluation", "config.fig7"} <= set(objects)
    open_ = [w for w, s in objects.items() if not w.startswith("$defs.")
             and s.get("additionalProperties", True) is not False and s.get("unevaluatedProperties", True) is not False]
    assert not open_, f"sections that accept unknown keys: {open_}"


def test_the_schema_knows_every_training_and_corpus_key():
    """The train section lists TrainConfig's fields, the corpus section the generator's keys."""
    from dataclasses import fields

    from lens_core.corpus.generate import DEFAULT_CORPUS
    from lens_core.training.config import TrainConfig

    props = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]
    assert set(props["train"]["properties"]) == {f.name for f in fields(TrainConfig)}
    corpus = props["corpus"]["properties"]
    assert set(corpus) == set(DEFAULT_CORPUS) | {"builtin", "root"}
    assert set(corpus["deeplesion"]["properties"]) == set(DEFAULT_CORPUS["deeplesion"])
    shared = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())["$defs"]
    for ds in ("luna", "lits", "nihln"):
        own = corpus[ds].get("properties", {})
        assert set(shared["single_type_corpus"]["properties"]) | set(own) == set(DEFAULT_CORPUS[ds]), ds


@pytest.mark.parametrize("config", ["config.yaml", "tests/data/tiny_config.yaml"])
def test_the_shipped_configs_pass_the_schema(config):
    from lens_core.config import load_config

    assert load_config(ROOT / config)["train"]


# ------------------------------------------------------------------- the steps' side of it
def test_the_training_config_given_inline_is_the_config_files_section(tmp_path):
    """`lens train --config-json` (what the rules pass) resolves to what --config FILE --config-section gives."""
    from lens_core.config import parse_overrides
    from lens_core.training.config import load_config_file, load_config_json

    section = {"datasets": ["luna", "lits"], "epochs": 3, "lr": 0.002, "volume_fraction": {"luna": 0.5}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"train": section}))
    over = parse_overrides(["volume_fraction.lits=0.25", "epochs=4"])
    inline = load_config_json(json.dumps(section), overrides=over)
    assert inline == load_config_file(tmp_path / "config.yaml", "train", overrides=over)
    assert inline.volume_fraction == {"luna": 0.5, "lits": 0.25} and inline.epochs == 4


@pytest.mark.parametrize("argv, message", [
    (["train", "--prep-dir", "p", "--out", "o", "--config-json", "{epochs: 2"], "--config-json: not valid JSON"),
    (["train", "--prep-dir", "p", "--out", "o", "--config-json", '{"epoch": 2}'], "unknown training config keys"),
    (["train", "--prep-dir", "p", "--out", "o", "--config-json", '{"pool_top_n": 0}'],
     "pool_top_n must be a positive integer, got 0"),
    (["train", "--prep-dir", "p", "--out", "o", "--config-json", '{"afp_pre_nms": 50, "proposals_per_afp": 80}'],
     "proposals_per_afp (80) exceeds afp_pre_nms (50)"),
    (["synthesize", "--out", "o", "--config-json", "[1]"], "--config-json: the corpus config must be a mapping"),
    (["synthesize", "--out", "o", "--config-json", '{"deeplesion": {"patiens": 2}}'], "patiens"),
])
def test_a_bad_inline_config_is_one_line_and_writes_nothing(tmp_path, argv, message):
    res = subprocess.run([sys.executable, "-m", "lens_core", *argv], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1 and message in res.stderr, res.stderr  # the CLI's input-error status
    assert len(res.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
