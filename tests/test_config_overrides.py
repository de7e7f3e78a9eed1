"""`--set KEY=YAML` overrides (lens train, lens synthesize): dotted keys nest and keep their siblings."""
import pytest

from lens_core.config import parse_overrides
from lens_core.training.config import load_config_file


def test_dotted_keys_nest_and_values_are_yaml():
    assert parse_overrides(["luna.cases=24", "deeplesion.patients=0", "seed=3", "datasets=[luna, lits]"]) == {
        "luna": {"cases": 24}, "deeplesion": {"patients": 0}, "seed": 3, "datasets": ["luna", "lits"]}


@pytest.mark.parametrize("items", [["a.b=2", "a=1"], ["a=1", "a.b=2"]])
def test_a_key_given_as_a_value_and_as_a_section_is_an_error_in_either_order(items):
    with pytest.raises(ValueError, match="already given"):
        parse_overrides(items)


def test_a_dotted_training_override_keeps_the_sections_other_keys(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("train:\n  datasets: [luna, lits]\n  volume_fraction: {luna: 0.5, lits: 0.5}\n")
    c = load_config_file(cfg, "train", overrides=parse_overrides(["volume_fraction.lits=1.0"]))
    assert c.volume_fraction == {"luna": 0.5, "lits": 1.0}
