"""The conda environments used by `snakemake --use-conda` pin what pyproject.toml pins (issue 7)."""
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# the workflow engine runs outside the rule environments; everything else must agree
NOT_IN_RULE_ENVS = {"snakemake", "snakemake-executor-plugin-slurm"}


def _pins(specs):
    out = {}
    for s in specs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", s.strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


@pytest.mark.parametrize("env", sorted(p.name for p in (ROOT / "envs").glob("*.yaml")))
def test_env_pins_match_pyproject(env):
    spec = yaml.safe_load((ROOT / "envs" / env).read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_python = [d for d in spec["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    assert conda_python == ["python=3.11"], "rules run on the Python the project is tested with"
    want = {k: v for k, v in _pins(PYPROJECT["dependencies"]).items() if k not in NOT_IN_RULE_ENVS}
    assert _pins(pip) == want
    assert "-e ../" in pip, "the rule environment must install this checkout's lens_core"


def test_every_rule_env_exists():
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for rel in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / rel).resolve().is_file(), f"{smk.name}: {rel} missing"
