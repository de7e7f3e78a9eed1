"""The conda environments of `snakemake --use-conda` (envs/*.yaml) and how the rules find lens_core.

`--use-conda` cannot run on these machines (no conda), so this checks what it can: every env parses,
holds dependencies only (conda-forge, nothing installed from a path), pins what pyproject.toml pins, the
GPU rules get the CUDA env under the SLURM profile, and the rules run this checkout's lens_core with
nothing installed: the workflow folder is their only way to it."""
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENVS = sorted((ROOT / "envs").glob("*.yaml"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# the workflow engine runs outside the rule environments; everything else must agree
NOT_IN_RULE_ENVS = {"snakemake", "snakemake-executor-plugin-slurm"}
# conda-forge names of PyPI packages (lower case); the CPU and CUDA builds of torch are two packages
CONDA_NAME_OF = {"torch": {"pytorch-cpu", "pytorch-gpu"}, "matplotlib": {"matplotlib-base"}}
CONDA_ONLY = {"python", "cuda-version"}
TORCH_BUILD = {"lens.yaml": "pytorch-cpu", "lens-cuda.yaml": "pytorch-gpu"}


def _spec(env: Path) -> dict:
    return yaml.safe_load(env.read_text())


def _conda_pins(spec) -> dict[str, str]:
    out = {}
    for dep in spec["dependencies"]:
        m = re.fullmatch(r"([a-z0-9_.\-]+)=([0-9][^\s=]*)", dep)
        assert m, f"not a pinned conda-forge package: {dep!r}"
        out[m.group(1)] = m.group(2)
    return out


def _pypi_pins() -> dict[str, str]:
    out = {}
    for s in PYPROJECT["dependencies"]:
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", s).groups()
        if name.lower() not in NOT_IN_RULE_ENVS:
            out[name.lower()] = version
    return out


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_an_env_is_conda_forge_dependencies_only(env):
    spec = _spec(env)
    assert spec["name"] and spec["channels"][0] == "conda-forge" and "defaults" not in spec["channels"]
    # every entry a plain pinned package: no pip section, no -e ../, no path or URL (Snakemake builds the env
    # from a copy under .snakemake/conda/, where a relative path points elsewhere)
    assert all(isinstance(d, str) for d in spec["dependencies"]), spec["dependencies"]
    assert not [d for d in spec["dependencies"] if re.search(r"(^-e\b|^\.|/|:)", d)]
    assert _conda_pins(spec)["python"] == "3.11", "rules run on the Python the project is tested with"


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_mirror_pyproject(env):
    pins = _conda_pins(_spec(env))
    assert TORCH_BUILD[env.name] in pins, f"{env.name} must take {TORCH_BUILD[env.name]}"
    want = _pypi_pins()
    for pypi, version in want.items():
        names = CONDA_NAME_OF.get(pypi, {pypi}) & set(pins)
        assert len(names) == 1, f"{env.name}: {pypi} missing (as {CONDA_NAME_OF.get(pypi, {pypi})})"
        assert pins[names.pop()] == version, f"{env.name}: {pypi} {pins} != pyproject {version}"
    known = {c for p in want for c in CONDA_NAME_OF.get(p, {p})} | CONDA_ONLY
    assert set(pins) <= known, f"{env.name}: packages pyproject.toml does not pin: {set(pins) - known}"


def _rule_envs(*config: str) -> dict[str, str | None]:
    """rule -> its conda env file, as Snakemake resolves them under `--config CONFIG...` (rules that run a
    command; targets such as `all` run nothing)."""
    code = (
        "import json, sys\nfrom pathlib import Path\nfrom snakemake.api import SnakemakeApi\n"
        "from snakemake.cli import parse_config\n"
        "from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings\n"
        "with SnakemakeApi(OutputSettings()) as api:\n"
        "    wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path(sys.argv[1]),\n"
        "                      config_settings=ConfigSettings(config=parse_config(sys.argv[2:])), workdir=Path(sys.argv[1]).parent)\n"
        "    print(json.dumps({r.name: r.conda_env for r in wf._workflow.rules if r.shellcmd}))\n")
    res = subprocess.run([sys.executable, "-c", code, str(ROOT / "Snakefile"), *config], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_every_rule_runs_in_an_env_of_envs_and_the_slurm_profiles_gpu_rules_in_the_cuda_env():
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    gpu_rules = {rule for rule, res in profile["set-resources"].items() if res.get("gpu")}
    rules_dir = ROOT / "workflow" / "rules"
    used = set()
    for config, cuda in (([], set()), (profile["config"], gpu_rules)):
        envs = _rule_envs(*config)
        runs = envs
        assert gpu_rules <= set(runs)
        assert all(e and (rules_dir / e).resolve().parent == ROOT / "envs" for e in runs.values()), runs
        assert {r for r, e in runs.items() if e.endswith("lens-cuda.yaml")} == cuda
        used |= {(rules_dir / e).resolve() for e in runs.values()}
    assert used == {p.resolve() for p in ENVS}, "an env that no rule uses"


def test_rules_run_this_checkouts_lens_core_with_nothing_installed(tmp_path):
    """No lens_core on sys.path and no `lens` on PATH: the synthesize rule still runs, through the workflow."""
    here = Path(sys.executable).parent  # the dependencies (and `python`), nothing of this project
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(here)] + [p for p in os.environ["PATH"].split(os.pathsep)
                                                 if p and not (Path(p) / "lens").exists()])
    assert shutil.which("lens", path=env["PATH"]) is None
    probe = subprocess.run([sys.executable, "-c", "import lens_core"], env=env, cwd=tmp_path, capture_output=True)
    assert probe.returncode != 0, "lens_core is importable without the workflow: the test proves nothing"

    cfg = yaml.safe_load((ROOT / "tests" / "data" / "tiny_config.yaml").read_text())
    cfg["corpus"].update(seed=5, deeplesion={"patients": 2}, luna={"cases": 1}, lits={"cases": 1}, nihln={"cases": 1})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                          "--cores", "1", "results/corpus/corpus.json"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    written = json.loads((tmp_path / "results" / "corpus" / "corpus.json").read_text())["config"]
    assert written["seed"] == 5 and written["deeplesion"]["patients"] == 2 and written["size_px"] == 64
