"""The workflow on a real SLURM cluster (issue 7): a small DAG submitted through
`--profile workflow/profiles/slurm` runs as SLURM jobs and writes the same artifacts as a local run.

Needs the single-node cluster of `scripts/slurm-cluster.sh start` (CI starts it in `.ci/run`). Without
a cluster the test skips, except in CI (`CI=true`), where a missing cluster is a failure.
"""
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
TINY_CONFIG = REPO / "tests" / "data" / "slurm_tiny_config.yaml"
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+)")
TIMEOUT_S = 240


def _cluster_problem() -> str | None:
    """Why the SLURM cluster cannot take jobs, or None when it can."""
    for tool in ("sbatch", "squeue", "sinfo"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found"
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True,
                             timeout=20)
    except subprocess.TimeoutExpired:
        return "`sinfo` did not answer in 20 s"
    if out.returncode != 0:
        return f"`sinfo` failed: {out.stderr.strip()}"
    states = out.stdout.split()
    if not any(s.rstrip("*~#").startswith(("idle", "mixed", "allocated")) for s in states):
        return f"no node takes jobs (node states: {states or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    problem = _cluster_problem()
    if problem:
        msg = f"SLURM cluster not running: {problem}. Start it with `scripts/slurm-cluster.sh start` (as root)."
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


def _snakemake(workdir: Path, *args: str) -> str:
    """Run the repository's Snakefile in `workdir`; return its output. Stops it with SIGINT on timeout:
    SIGINT makes snakemake cancel its SLURM jobs and exit, SIGTERM can leave it waiting for them."""
    env = dict(os.environ)
    # the jobs inherit this PATH (sbatch --export=ALL), so they find the venv's `lens` and python
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), *args]
    log = workdir / "snakemake.out"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        try:
            rc = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            pytest.fail(f"snakemake did not finish in {TIMEOUT_S} s; stopped it. Output:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert rc == 0, f"snakemake failed (exit {rc}): {' '.join(cmd)}\n{text[-6000:]}"
    return text


def _workdir(root: Path) -> Path:
    root.mkdir()
    shutil.copy(TINY_CONFIG, root / "config.yaml")  # the rules read config.yaml from the working dir
    return root


def _targets() -> list[str]:
    datasets = yaml.safe_load(TINY_CONFIG.read_text())["datasets"]
    return [f"results/prep/{d}/{name}" for d in datasets
            for name in ("volumes.h5", "volumes.parquet", "lesions.parquet")]


def _squeue_states(ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (state, working dir) for jobs SLURM still remembers (finished ones for MinJobAge)."""
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--jobs", ",".join(ids),
                          "--format=%i|%T|%Z"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    rows = (line.split("|") for line in out.stdout.splitlines() if line.strip())
    return {r[0]: (r[1], r[2]) for r in rows}


def _assert_same_h5(a: Path, b: Path):
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        assert sorted(names_a) == sorted(names_b), f"{a.name}: different HDF5 contents"
        for name in names_a:
            oa, ob = fa[name], fb[name]
            assert sorted(oa.attrs) == sorted(ob.attrs), f"{a}:{name} attrs differ"
            for k in oa.attrs:
                np.testing.assert_array_equal(oa.attrs[k], ob.attrs[k], err_msg=f"{a}:{name}@{k}")
            if isinstance(oa, h5py.Dataset):
                assert oa.dtype == ob.dtype and oa.shape == ob.shape, f"{a}:{name}"
                np.testing.assert_array_equal(oa[()], ob[()], err_msg=f"{a}:{name}")


def test_small_dag_runs_as_slurm_jobs_and_matches_a_local_run(slurm_cluster, tmp_path):
    targets = _targets()
    on_slurm = _workdir(tmp_path / "slurm")
    local = _workdir(tmp_path / "local")

    t0 = time.monotonic()
    # --cores caps the CPUs of one (group) job at what this one-node test cluster has
    out = _snakemake(on_slurm, "--profile", str(PROFILE), "--cores", "2",
                     "--slurm-init-seconds-before-status-checks", "2", *targets)
    slurm_s = time.monotonic() - t0

    ids = SUBMITTED.findall(out)
    print(f"\nSLURM run: {len(ids)} SLURM jobs submitted ({', '.join(ids)}) in {slurm_s:.0f} s")
    # one job for the corpus, the preprocessing shards bundled by the profile's group-components, and
    # one gather per dataset
    tiny = yaml.safe_load(TINY_CONFIG.read_text())
    n_datasets, n_shards = len(tiny["datasets"]), tiny["preprocess"]["shards"]
    per_bundle = yaml.safe_load((PROFILE / "config.yaml").read_text())["group-components"]["preprocess"]
    assert len(ids) == 1 + math.ceil(n_datasets * n_shards / per_bundle) + n_datasets, out[-4000:]
    assert not re.search(r"^localrule (?!all:)", out, re.M), "a rule ran outside SLURM"

    states = _squeue_states(ids)
    assert set(states) == set(ids), f"SLURM does not know jobs {sorted(set(ids) - set(states))}"
    for job, (state, workdir) in states.items():
        assert state == "COMPLETED", f"SLURM job {job}: {state}"
        assert Path(workdir).resolve() == on_slurm.resolve(), f"SLURM job {job} ran in {workdir}"

    # the profile's precommand gives each job its own numba cache: the variables reach the job unexpanded
    for job in ids:
        script = subprocess.run(["scontrol", "write", "batch_script", job, "-"], capture_output=True,
                                text=True, timeout=30).stdout
        assert re.search(r'export NUMBA_CACHE_DIR="[^"]*\$SLURM_JOB_ID"', script), script[:500]

    _snakemake(local, "--cores", "2", *targets)

    produced = sorted(p.relative_to(on_slurm) for p in (on_slurm / "results").rglob("*")
                      if p.suffix in (".parquet", ".h5") and "shards" not in p.parts)
    assert set(targets) <= {str(p) for p in produced}
    for rel in produced:
        if rel.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(on_slurm / rel), pd.read_parquet(local / rel),
                                          obj=str(rel))
        else:
            _assert_same_h5(on_slurm / rel, local / rel)
