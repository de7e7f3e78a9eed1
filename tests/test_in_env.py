"""scripts/in-env runs the calling checkout's code: two checkouts sharing one venv never run each other's.

The venv (keyed by the dependency pins) is shared by every checkout on a machine, CI clones included; the
project is not installed into it, in-env puts the checkout itself on PYTHONPATH and its `lens` on PATH.
"""
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _checkout(dst: Path, mark: str) -> Path:
    for part in ("lens_core", "scripts"):
        shutil.copytree(ROOT / part, dst / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", dst / "pyproject.toml")
    cli = dst / "lens_core" / "cli.py"
    text = cli.read_text()
    first = text.splitlines()[0]
    cli.write_text(text.replace(first, first.replace("`lens <step>`:", f"`lens <step>` [{mark}]:"), 1))
    return dst


def _run(checkout: Path, *cmd: str) -> str:
    out = subprocess.run([str(checkout / "scripts" / "in-env"), *cmd], cwd=checkout, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_two_checkouts_each_run_their_own_code(tmp_path):
    a = _checkout(tmp_path / "a", "checkout-a")
    b = _checkout(tmp_path / "b", "checkout-b")
    for me, other in ((a, b), (b, a)):
        where = _run(me, "python", "-c", "import lens_core; print(lens_core.__file__)").strip()
        assert Path(where).parent == me / "lens_core"
        help_text = _run(me, "lens", "--help")
        assert f"[checkout-{me.name}]" in help_text
        assert f"[checkout-{other.name}]" not in help_text
    # the shared venv has no copy of the project that could shadow a checkout
    venv = Path(_run(a, "bash", "-c", 'echo "$VIRTUAL_ENV"').strip())
    assert not list(venv.glob("lib/python3*/site-packages/__editable__*lens_core*"))
    assert not list(venv.glob("lib/python3*/site-packages/lens_core"))
