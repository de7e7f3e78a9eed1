"""Snakemake dry runs for the workflow tests: the DAG in a working folder, the jobs it plans, and a folder
whose every output exists and is up to date (so a test sees what one change replans)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "tests" / "data" / "tiny_config.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2"]
# rules run scripts/bin/lens (python -m lens_core) with the `python` first on PATH: this interpreter
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(wd, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(SNAKEMAKE + ["--directory", str(wd), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def job_counts(res: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule of a dry run's printout ({} when nothing is to be done)."""
    table = re.search(r"^job\s+count\n-+\s+-+\n(.*?)\ntotal", res.stdout, re.S | re.M)
    if table is None:
        assert "Nothing to be done" in res.stdout + res.stderr, res.stdout
        return {}
    return {name: int(n) for name, n in (line.split() for line in table.group(1).splitlines())}


def planned(wd, *args, outputs: list | None = None) -> dict[str, int]:
    """Job counts per rule of a dry run (and, into ``outputs``, every planned output file)."""
    res = run(wd, "-n", *args)
    assert res.returncode == 0, res.stdout + res.stderr
    if outputs is not None:
        outputs += [f for line in res.stdout.splitlines() if line.strip().startswith("output:")
                    for f in line.split(":", 1)[1].replace(",", " ").split()]
    return job_counts(res)


def tiny_workdir(wd: Path, **sections) -> Path:
    """A working folder whose config.yaml is the tiny test config, with ``sections`` replacing its own."""
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg.update(sections)
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    return wd


def finish(wd: Path, *touch_args: str) -> Path:
    """Every output of the DAG in ``wd`` created, then `snakemake --touch` (``touch_args``: e.g. --forceall,
    to record every job's provenance, params included)."""
    summary = run(wd, "--summary")
    assert summary.returncode == 0, summary.stderr
    for line in summary.stdout.splitlines()[1:]:
        f = wd / line.split("\t")[0]
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
    touched = run(wd, "--touch", *touch_args)
    assert touched.returncode == 0, touched.stderr
    return wd
