"""One source of defaults: a step run by hand is the pipeline's step. Each `lens <step>` flag that a rule
fills from config.yaml defaults to config.yaml's value (issue 23: build-tracklets --min-score said 0.3 where
config says 0.0, embed-lesions --steps 300 where config says 150)."""
import pytest
import yaml

from lens_core.cli import build_parser
from conftest import ROOT

CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())

# (config section, key) -> the steps' flags (step, argparse dest) that rules fill from it
FLAGS = {
    ("preprocess", "pixel_mm"): [("preprocess", "pixel_mm")],
    ("preprocess", "slice_mm"): [("preprocess", "slice_mm")],
    ("preprocess", "storage"): [("preprocess", "storage")],
    ("preprocess", "split_seed"): [("preprocess", "split_seed")],
    ("preprocess", "ln_diameter_mm"): [("preprocess", "ln_diameter_mm")],
    ("preprocess", "deeplesion_box_pad_px"): [("preprocess", "dl_box_pad_px")],
    ("mining", "extent_ratio"): [("mine-cross-slice", "extent_ratio")],
    ("fpr", "epochs"): [("train-fpr", "epochs")],
    ("mining", "theta"): [("build-tracklets", "theta"), ("mine-cross-slice", "theta"), ("embed-lesions", "theta")],
    ("mining", "tracklet_min_score"): [("build-tracklets", "min_score")],
    ("mining", "sigma"): [("mine-cross-dataset", "sigma")],
    ("mining", "encoder_steps"): [("embed-lesions", "steps")],
    ("mining", "embedding"): [("embed-lesions", "source")],
    ("mining", "single_type_experts"): [("mine-cross-dataset", "experts")],
    ("propose", "min_score"): [("propose", "min_score")],
    ("propose", "stack_iou"): [("propose", "stack_iou"), ("detect", "stack_iou")],
    ("propose", "score"): [("propose", "score")],
    ("propose", "kernels"): [("propose", "kernels"), ("detect", "kernels")],
    ("propose", "precision"): [("propose", "precision"), ("detect", "precision")],
    ("evaluation", "bootstrap"): [("evaluate", "bootstrap")],
    ("evaluation", "bootstrap_seed"): [("evaluate", "seed")],
    ("review", "uncertain_sample"): [("review", "uncertain_sample")],
    ("review", "window"): [("review", "window")],
    ("review", "seed"): [("review", "seed")],
}


def step_defaults(step: str) -> dict:
    parser = build_parser([step])
    sub = next(a for a in parser._actions if a.dest == "command").choices[step]
    return {a.dest: a.default for a in sub._actions}


@pytest.mark.parametrize("section, key", list(FLAGS))
def test_a_steps_flag_defaults_to_config_yaml(section, key):
    """... or, where config.yaml deviates from the paper (a deviation registered in lens_core.deviations), to the
    paper's value: the step run by hand is the paper's."""
    from lens_core.deviations import REGISTRY

    value = CONFIG[section][key]
    paper = next((d.paper for d in REGISTRY if d.key == f"{section}.{key}"), object())
    for step, dest in FLAGS[(section, key)]:
        default = step_defaults(step)[dest]
        if default is None:
            default = _effective_default(step, dest, {"preset": CONFIG["fpr"]["preset"]})
        if isinstance(value, list) and isinstance(default, str):  # a comma-separated flag
            default = default.split(",")
        assert default in (value, paper), f"lens {step} --{dest.replace('_', '-')} defaults to {default!r}, " \
                                          f"config.yaml {section}.{key} is {value!r}, the paper's {paper!r}"


def test_theta_lives_in_one_place_and_every_step_defaults_to_it():
    """Issue 23: the paper's theta (0.5) was typed in six places. Every step that takes it defaults to
    lens_core.boxes.THETA, and config.yaml gives the same value to both of its keys."""
    from lens_core.boxes import THETA

    assert THETA == CONFIG["mining"]["theta"] == CONFIG["propose"]["stack_iou"] == 0.5
    steps = {"build-tracklets": "theta", "mine-cross-slice": "theta", "embed-lesions": "theta",
             "mine-intra-patient": "theta", "propose": "stack_iou", "detect": "stack_iou"}
    for step, dest in steps.items():
        assert step_defaults(step)[dest] is THETA, step


# --- rule by rule (issue 23, item 5): what each rule of the default DAG passes a step, against the step's own
# default. A flag a rule sets per job (its files, its split, its variant's name, ...) is not a setting.
PER_JOB = {"out", "out3d", "dataset", "format", "root", "split", "name", "title", "paper", "shard", "no_progress",
           "resume", "threads", "seed", "config_json", "set", "sort", "protocol", "units", "unit_column",
           "score_column", "experts_dir"}


def _registered(step: str, dest: str):
    """The registered deviation (lens_core.deviations) behind ``lens step --dest``, via FLAGS' config keys."""
    from lens_core.deviations import REGISTRY

    keys = {f"{section}.{key}" for (section, key), flags in FLAGS.items() if (step, dest) in flags}
    return next((d for d in REGISTRY if d.key in keys), None)


def _effective_default(step: str, dest: str, args: dict):
    """A default of None that means "the protocol's / the preset's own": that value."""
    if step == "evaluate" and dest in ("threshold", "fp_rates"):
        from lens_core.evaluation.api import PROTOCOLS

        value = PROTOCOLS[args["protocol"]][dest]
        return list(value) if dest == "fp_rates" else value
    if step == "train-fpr" and dest == "epochs":
        from lens_core.fpr.train import FprTrainConfig

        return FprTrainConfig.for_preset(args["preset"]).epochs
    return None


@pytest.fixture(scope="module")
def default_dag_commands(tmp_path_factory):
    """Every `lens` command of the default DAG on config.yaml, as a dry run prints it."""
    import shutil

    from dag import run

    wd = tmp_path_factory.mktemp("dag")
    shutil.copy(ROOT / "config.yaml", wd / "config.yaml")
    res = run(wd, "-n", "-p", "--forceall")
    assert res.returncode == 0, res.stderr[-3000:]
    lines = (line.strip().removeprefix("Shell command:").strip() for line in res.stdout.splitlines())
    return [line.split(" 2> ")[0] for line in lines if line.startswith("lens ")]


def test_every_rule_passes_each_step_its_own_default_or_a_registered_deviation(default_dag_commands):
    """A step run by hand with its defaults is the step the DAG runs, or the difference is a deviation from the
    paper registered in lens_core.deviations (the config's value passed, the paper's the flag's default)."""
    import shlex

    from lens_core.config import load_config

    config = load_config(ROOT / "config.yaml")
    assert len(default_dag_commands) > 20
    wrong, checked = [], set()
    for command in default_dag_commands:
        argv = shlex.split(command)[1:]
        step = argv[0]
        sub = next(a for a in build_parser([step])._actions if a.dest == "command").choices[step]
        actions = {o: a for a in sub._actions for o in a.option_strings}
        given = vars(sub.parse_args(argv[1:]))
        for token in argv[1:]:
            action = actions.get(token)
            if action is None or action.dest in PER_JOB or action.required:
                continue
            value, default = given[action.dest], action.default
            if any("/" in str(v) for v in (value if isinstance(value, list) else [value])):
                continue  # a file
            checked.add((step, action.dest))
            if default is None:
                default = _effective_default(step, action.dest, given)
            if value == default:
                continue
            dev = _registered(step, action.dest)
            if dev is not None and dev.paper == default and config[dev.section][dev.name] == value:
                continue
            wrong.append(f"lens {step} {token}: the DAG passes {value!r}, the flag defaults to {default!r}")
    assert not wrong, "\n".join(sorted(set(wrong)))
    assert ("preprocess", "pixel_mm") in checked and ("build-tracklets", "min_score") in checked  # not vacuous


def test_the_schema_defaults_are_config_yamls_or_the_papers():
    """A key a user's config leaves out gets the schema's default: config.yaml's value, or, for a registered
    deviation, the paper's (the schema said encoder_steps 300 where config.yaml says 150)."""
    from lens_core.deviations import REGISTRY

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    paper = {d.key: d.paper for d in REGISTRY}
    wrong, n = [], 0
    for section, spec in schema["properties"].items():
        for key, prop in (spec.get("properties") or {}).items():
            if not isinstance(prop, dict) or "default" not in prop or prop.get("type") == "object":
                continue
            n += 1
            value = CONFIG.get(section, {}).get(key, prop["default"])
            if prop["default"] != value and paper.get(f"{section}.{key}", object()) != prop["default"]:
                wrong.append(f"{section}.{key}: schema default {prop['default']!r}, config.yaml {value!r}")
    assert n > 10
    assert not wrong, "\n".join(wrong)


def test_the_training_dataclass_defaults_are_config_yamls_or_the_papers():
    """`lens train --config my.yaml` fills a key the file leaves out from TrainConfig: config.yaml's value, or, for
    a registered deviation, the paper's (slices was 3, rois_per_image 64: neither). One key is off outside
    the workflow: val_every, whose learning curve needs a validation split that a library caller may not have."""
    import dataclasses

    from lens_core.deviations import REGISTRY
    from lens_core.training.config import TrainConfig

    off_outside_the_workflow = {"val_every"}
    paper = {d.key: d.paper for d in REGISTRY}
    fields = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
              for f in dataclasses.fields(TrainConfig)}
    assert set(CONFIG["train"]) <= set(fields), set(CONFIG["train"]) - set(fields)
    wrong = [f"train.{k}: TrainConfig {fields[k]!r}, config.yaml {v!r}, the paper's {paper.get('train.' + k, '-')!r}"
             for k, v in CONFIG["train"].items()
             if fields[k] != v and paper.get(f"train.{k}", object()) != fields[k] and k not in off_outside_the_workflow]
    assert not wrong, "\n".join(wrong)
    assert fields["val_every"] == 0 and CONFIG["train"]["val_every"] > 0
