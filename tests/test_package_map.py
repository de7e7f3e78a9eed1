"""The package map: imports run one way, down the pipeline; every step has one command module, named
`<package>/command.py`; `lens --help` lists the steps in the order the pipeline runs them."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from lens_core import cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lens_core"

# The pipeline, bottom up (DESIGN's package map): a module may import its own layer and those below.
LAYERS = [
    {"config", "errors", "io", "boxes", "runtime", "arguments", "tracklets", "deviations", "label_kinds"},  # shared by every step
    {"datasets"},
    {"corpus"},  # the built-in corpus: the readers' format writers write it; the pipeline reads it from disk
    {"preprocess"},
    {"model"},
    {"training"},
    {"inference"},
    {"mining"},
    {"review"},  # a reviewer's verdicts on the mined boxes; merge-labels reads them through mining.verdicts
    {"fpr"},
    {"evaluation"},
    {"paper_tables"},  # the paper's tables over seeds, from evaluated runs
    {"report"},
    {"cli", "__main__"},
]
# Imports up the pipeline that are the design, each with its reason.
UPWARD = {
    ("inference", "fpr"): "`lens detect` rescores its detections with a trained FPR (Eq. 4)",
    # training.validation alone: the learning curve (train.val_every) proposes on the validation volumes and
    # scores them with the LENS 3D protocol, inside the training process (issue 21: epochs chosen on it)
    ("training", "inference"): "the learning curve proposes on the validation split while training",
    ("training", "evaluation"): "the learning curve scores those proposals with the LENS 3D protocol",
}

# The steps in pipeline order, as the README's rule table lists them.
PIPELINE = [
    "synthesize", "import-manual-3d", "preprocess", "gather-prep", "train", "bn-drift", "propose", "concat",
    "build-tracklets", "mine-cross-slice", "embed-lesions", "audit-delta", "mine-intra-patient",
    "mine-cross-dataset", "merge-labels", "audit-mining", "mining-precision", "review-boxes", "review", "review-import",
    "review-simulate", "train-fpr", "score-fpr", "evaluate", "froc-plot", "ablation-table", "fig5-table", "fig7-table",
    "review-value", "report", "detect",
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """Every lens_core module -> the lens_core modules it imports, at any depth of its code (the steps import
    lazily inside functions), relative imports resolved."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module
                # `from lens_core import io` imports the module lens_core.io
                subs = {f"{module}.{a.name}" for a in node.names if _is_module(f"{module}.{a.name}")}
                targets |= subs or {module}
        graph[name] = {t for t in targets if t == "lens_core" or t.startswith("lens_core.")}
    return graph


def _unit(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def test_import_graph_sees_lazy_and_relative_imports():
    """The parser itself: the imports this test relies on are found (else every check below passes vacuously)."""
    graph = import_graph()
    assert "lens_core.tracklets" in graph["lens_core.mining.command"]  # `from ..tracklets import` in a function
    assert "lens_core.tracklets" in graph["lens_core.inference.expert_proposals"]
    assert "lens_core.io" in graph["lens_core.evaluation.inputs"]  # `from lens_core import io`
    assert "lens_core.fpr.model" in graph["lens_core.inference.command"]


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in import_graph()} - {"lens_core"}
    assert units <= set().union(*LAYERS), f"modules outside the package map: {units - set().union(*LAYERS)}"


def test_imports_run_down_the_pipeline():
    upward = []
    for module, targets in import_graph().items():
        for t in targets:
            a, b = _unit(module), _unit(t)
            if b == "lens_core" or a == b:
                continue
            if _layer(b) > _layer(a) and (a, b) not in UPWARD:
                upward.append(f"{module} imports {t}")
    assert not upward, "imports up the pipeline:\n" + "\n".join(sorted(upward))


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among lens_core modules, at any depth of their code (an import inside a function
    closes a cycle as surely as one at the top): Tarjan's strongly connected components of two or more
    modules. A package's ``__init__`` importing its own modules is not a cycle of theirs."""
    edges = {m: {t for t in ts if t in graph and t != m and not m.startswith(t + ".")} for m, ts in graph.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_import_cycles_are_found():
    """The cycle finder itself, on a made-up graph (else the test below could pass vacuously)."""
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "p": {"p.x"}, "p.x": {"p"}}
    assert import_cycles(g) == [["a", "b", "c"]]


def test_no_import_cycle_among_modules():
    """No two lens_core modules import each other, directly or around a loop (issue 24: datasets' corpus <->
    writers and deeplesion <-> scans were such loops, hidden by imports inside functions)."""
    assert import_cycles(import_graph()) == []


def test_no_step_imports_the_cli():
    importers = sorted(m for m, targets in import_graph().items() if "lens_core.cli" in targets)
    assert importers == ["lens_core.__main__"]


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for t in graph.get(m, ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


@pytest.mark.parametrize("forbidden", ["lens_core.mining", "lens_core.training", "lens_core.evaluation"])
def test_inference_never_reaches_mining_or_training(forbidden):
    """Not even through another package (detect -> fpr): proposals, fusion, stacking and `lens detect` run
    without the mining or training code."""
    graph = import_graph()
    for module in (m for m in graph if m.startswith("lens_core.inference")):
        reached = sorted(t for t in _reachable(graph, module) if t == forbidden or t.startswith(forbidden + "."))
        assert not reached, f"{module} reaches {reached}"


def test_command_modules_are_named_command_py():
    """The modules that register steps (`def add_parser`) are exactly the `<package>/command.py` files, and
    each step is registered by the module cli.STEPS names for it."""
    registering = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "add_parser" for n in tree.body):
            registering.add(_module_name(path))
    assert registering == set(cli.STEPS.values())
    assert all(m.endswith(".command") for m in registering)



@pytest.mark.parametrize("step", PIPELINE)
def test_each_step_comes_from_its_command_module(step, capsys):
    """Built from the one module cli.STEPS names, the parser knows the step (argparse exits 2 on an unknown one)."""
    with pytest.raises(SystemExit) as e:
        cli.build_parser([step]).parse_args([step, "--help"])
    assert e.value.code == 0
    assert f"usage: lens {step}" in capsys.readouterr().out


def test_help_lists_the_steps_in_pipeline_order():
    out = subprocess.run([sys.executable, "-m", "lens_core", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and not line.startswith("     ")]
    assert listed == PIPELINE
    assert list(cli.STEPS) == PIPELINE


def test_a_step_imports_only_its_own_command_module():
    """`lens train ...` does not import the dataset readers (SimpleITK, pydicom, scipy: ~1.5 s a job)."""
    code = ("import sys; from lens_core.cli import build_parser; build_parser(['train', '--help']); "
            "print(sorted(m for m in sys.modules if m.startswith('lens_core.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    loaded = set(eval(out))
    assert "lens_core.training.command" in loaded
    assert not loaded & {"lens_core.datasets", "lens_core.mining.command", "lens_core.evaluation.command"}


def _lazy_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of each import inside a function of ``path`` whose reason is not written down: a
    comment (``#``) on its own lines, or on the line just above it or above the block of imports it is in
    (one comment line may head several imports that sit together)."""
    source = path.read_text()
    lines = source.splitlines()
    spans = {}
    for fn in ast.walk(ast.parse(source, str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    spans[node.lineno] = node.end_lineno
    in_import = {i for start, end in spans.items() for i in range(start, end + 1)}
    bare = []
    for start, end in sorted(spans.items()):
        seen = list(range(start, end + 1))
        above = start - 1
        while above in in_import:  # up through the block of imports this one is in
            seen.append(above)
            above -= 1
        seen.append(above)  # the line above the block (0: none)
        if not any("#" in lines[i - 1] for i in seen if i >= 1):
            bare.append((start, lines[start - 1].strip()))
    return bare


def test_lazy_import_finder_itself(tmp_path):
    """On a made-up module (else the test below could pass vacuously)."""
    (tmp_path / "m.py").write_text(
        "import os\n\n\ndef f():\n    import json\n\n    # lazy: a reason\n    import csv\n    from re import (\n"
        "        sub)\n\n    import math  # lazy: another\n\n\ndef g():\n    import ast\n")
    assert _lazy_imports(tmp_path / "m.py") == [(5, "import json"), (16, "import ast")]


def test_imports_sit_at_module_top_or_say_why_not():
    """Issue 24: imports go at the top of their module. One inside a function is there on purpose (torch or
    matplotlib kept off `lens --help` and off the steps that do not use them, SimpleITK off the GPU steps),
    and a comment says so."""
    bare = [f"{path.relative_to(ROOT)}:{line}: {text}" for path in sorted(PACKAGE.rglob("*.py"))
            for line, text in _lazy_imports(path)]
    assert not bare, "imports inside a function without a comment saying why:\n" + "\n".join(bare)


@pytest.mark.parametrize("argv", [[], ["build-tracklets"], ["evaluate"], ["preprocess"]])
def test_help_and_torch_free_steps_import_no_torch(argv):
    """`lens --help` (every command module) and the steps that need no torch or matplotlib do not pay for
    importing them (torch: seconds a job); in a fresh interpreter, so other tests' imports do not count."""
    code = ("import sys; from lens_core.cli import build_parser; build_parser(%r); "
            "print(sorted(m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules))" % (argv,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]", f"lens {' '.join(argv) or '--help'} imports {out.strip()}"


def test_lens_version_is_the_packages():
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    done = subprocess.run([sys.executable, "-m", "lens_core.cli", "--version"], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == f"lens {version}"
