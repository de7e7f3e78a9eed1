"""Loading and validating the pipeline config (the science: datasets, paper constants, preset)."""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def deep_merge(base: dict, override: dict | None) -> dict:
    """`override` on top of `base`, recursively for dicts; lists and scalars replace."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_overrides(items: list[str]) -> dict:
    """`--set KEY=YAML ...` as a dict; a dotted key nests (`luna.cases=20` -> {"luna": {"cases": 20}})."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ValueError(f"--set wants KEY=VALUE (KEY may be dotted), got {item!r}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item!r}: the value is not valid YAML: {e}") from None
        *parents, leaf = key.split(".")
        node = out
        for k in parents:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {k} was already given a value")
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"--set {item!r}: {key} was already given as a section")
        node[leaf] = parsed
    return out


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    validate(cfg, where=str(path))
    return cfg


def validate(cfg: dict, where: str = "config") -> None:
    if not SCHEMA.exists():  # installed without the workflow folder: nothing to check against
        return
    schema = yaml.safe_load(SCHEMA.read_text())
    try:
        jsonschema.validate(cfg, schema)
    except jsonschema.ValidationError as e:
        loc = "/".join(map(str, e.absolute_path)) or "(top level)"
        raise ValueError(f"{where}: {loc}: {e.message}") from None
