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
    value = CONFIG[section][key]
    for step, dest in FLAGS[(section, key)]:
        default = step_defaults(step)[dest]
        if isinstance(value, list):  # a comma-separated flag
            default = default.split(",")
        assert default == value, f"lens {step} --{dest.replace('_', '-')} defaults to {default!r}, " \
                                 f"config.yaml {section}.{key} is {value!r}"


def test_theta_lives_in_one_place_and_every_step_defaults_to_it():
    """Issue 23: the paper's theta (0.5) was typed in six places. Every step that takes it defaults to
    lens_core.boxes.THETA, and config.yaml gives the same value to both of its keys."""
    from lens_core.boxes import THETA

    assert THETA == CONFIG["mining"]["theta"] == CONFIG["propose"]["stack_iou"] == 0.5
    steps = {"build-tracklets": "theta", "mine-cross-slice": "theta", "embed-lesions": "theta",
             "mine-intra-patient": "theta", "propose": "stack_iou", "detect": "stack_iou"}
    for step, dest in steps.items():
        assert step_defaults(step)[dest] is THETA, step
