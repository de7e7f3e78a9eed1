#!/usr/bin/env python3
"""Largest .smk files and largest functions (lens_core/*.py, workflow/*.py and the def blocks of workflow/*.smk) of a
checkout, for issue 24's before/after: `python benchmarks/code_shape.py CHECKOUT`."""
import ast
import pathlib
import sys
root = pathlib.Path(sys.argv[1])
smk = sorted(((len(p.read_text().splitlines()), str(p.relative_to(root))) for p in root.glob("workflow/**/*.smk")), reverse=True)
print("largest .smk:", ", ".join(f"{p} {n}" for n, p in smk[:3]))
funcs = []
for p in list(root.glob("lens_core/**/*.py")) + list(root.glob("workflow/**/*.py")):
    tree = ast.parse(p.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            funcs.append((node.end_lineno - node.lineno + 1, f"{p.relative_to(root)}:{node.lineno} {node.name}"))
for p in root.glob("workflow/**/*.smk"):   # input functions: def blocks, to the next unindented line
    lines = p.read_text().splitlines()
    for i, l in enumerate(lines):
        if l.startswith("def "):
            j = i + 1
            while j < len(lines) and (not lines[j] or lines[j][0] in " #\t"):
                j += 1
            while lines[j - 1].strip() == "": j -= 1
            funcs.append((j - i, f"{p.relative_to(root)}:{i+1} {l[4:l.index('(')]}"))
funcs.sort(reverse=True)
print("functions:", len(funcs), "| over 60 lines:", sum(n > 60 for n, _ in funcs), "| over 100:", sum(n > 100 for n, _ in funcs))
for n, f in funcs[:6]: print(f"  {n:4d} {f}")
