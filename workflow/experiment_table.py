"""Experiments as data (issue 24): every experiment the workflow can build, one record each, resolved from the
config's declarations (validated by workflow/schemas/config.schema.yaml):

* the main pipeline, ``lens``: every component at ``train.seed``;
* the ablation (Tables II, IV, V): each of ``ablation.experiments`` at each of ``ablation.seeds`` (and the full
  recipe at Fig. 7's seeds, whose joint model on every volume is that experiment);
* Fig. 5: each swept value of ``fig5.values`` that is not config's own, at each of ``fig5.seeds`` (default: the
  train seed), as that seed's full experiment's round-1 proposals mined again with that value;
* Fig. 7: each model of a (dataset, alone | joint, volume fraction, seed), and each dataset alone on all of its
  volumes (Table V's separate models);
* the review's value: each percentage of ``review.value.percents`` of the main experiment's mined boxes given to
  the simulated reviewer, round 2 retrained on its verdicts (results/<exp>/round2rv<pct>/).

The workflow's input functions look records up by name; nothing parses a name. Adding an ablation row is one
entry under ``ablation.rows`` (and, for a new recipe, one under ``ablation.experiments``). ``snakemake --cores 1
experiments`` writes the table to results/experiments.tsv. Plain Python: the Snakefile imports it, with no
dependency of the pipeline's.
"""
from __future__ import annotations

import json
from pathlib import Path

MAIN = "lens"
MODES = ("alone", "joint")


def exp_name(experiment: str, seed: int, train_seed: int) -> str:
    """An experiment's name: the main pipeline's when it is the full recipe at the train seed."""
    return MAIN if experiment == "full" and int(seed) == int(train_seed) else f"{experiment}_s{seed}"


def fig5_name(key: str, value) -> str:
    """Fig. 5's recipe for one swept value: letters and digits (value x 1000), as results/ folder names allow."""
    return f"fig5{key.replace('_', '')}{round(float(value) * 1000):04d}"


def fig5_is_default(config: dict, key: str, value) -> bool:
    """A swept value that is config's own: the main experiment, not a recipe of its own."""
    return float(value) == float(config["mining"][key])


def fig5_recipes(config: dict) -> dict[str, dict]:
    """recipe -> spec of every swept Fig. 5 value other than config's own (that one is the main experiment)."""
    fig5 = config.get("fig5") or {}
    return {fig5_name(k, v): {"mining_from": "full", "mining": {k: v}}
            for k, values in fig5.get("values", {}).items() for v in values if not fig5_is_default(config, k, v)}


def experiment_table(config: dict) -> dict[str, dict]:
    """name -> {"name", "recipe", "seed", "kind", "spec"} for every experiment the workflow can build; ``spec``
    is the recipe's settings (datasets, mining overrides, mining_from, pool ...; {} = every component)."""
    train_seed = int(config["train"]["seed"])
    ablation = config["ablation"]
    table: dict[str, dict] = {}

    def add(recipe, seed, kind, spec):
        name = exp_name(recipe, seed, train_seed)
        table.setdefault(name, {"name": name, "recipe": recipe, "seed": int(seed), "kind": kind, "spec": spec or {}})

    add("full", train_seed, "main", ablation["experiments"].get("full", {}))
    for recipe, spec in ablation["experiments"].items():
        for seed in ablation["seeds"]:
            add(recipe, seed, "ablation", spec)
    if "full" in ablation["experiments"]:
        for seed in (config.get("fig7") or {}).get("seeds", []):
            add("full", seed, "fig7", ablation["experiments"]["full"])
    recipes = fig5_recipes(config)
    if recipes:
        for seed in fig5_seeds(config):
            if "full" in ablation["experiments"]:
                add("full", seed, "fig5", ablation["experiments"]["full"])  # config's own value at this seed
            for recipe, spec in recipes.items():
                add(recipe, seed, "fig5", spec)
    return table


def fig5_seeds(config: dict) -> list[int]:
    """The seeds Fig. 5 trains each swept value at: ``fig5.seeds``, or the train seed alone."""
    return [int(s) for s in (config.get("fig5") or {}).get("seeds") or [config["train"]["seed"]]]


def fig7_pct(fraction) -> str:
    return format(100 * float(fraction), "g")  # 0.25 -> "25", 0.125 -> "12.5"


def fig7_model(dataset: str, mode: str, fraction, seed, joint_all: bool) -> str:
    """A Fig. 7 model's name; with fig7.joint all, one joint model (every dataset reduced) serves each dataset."""
    pct = fig7_pct(fraction)
    if mode == "joint" and joint_all:
        return f"joint_f{pct}_s{seed}"
    return f"{dataset}_{mode}_f{pct}_s{seed}"


def fig7_table(config: dict) -> dict[str, dict]:
    """model -> {"datasets", "fractions", "seed"}: what trains each Fig. 7 model (datasets trained on, the volume
    fraction of each reduced one) for every (dataset, mode, fraction, seed) of the fig7 section, and each dataset
    alone on all its volumes at the ablation's seeds (Table V's separate models reuse it)."""
    f7 = config.get("fig7") or {}
    if not f7:
        return {}
    joint_all = f7.get("joint", "all") == "all"
    seeds = sorted({int(s) for s in [*f7.get("seeds", []), *config["ablation"]["seeds"]]})
    fractions = sorted({float(f) for f in f7.get("fractions", [])})
    table: dict[str, dict] = {}
    for seed in seeds:
        for f in fractions:
            for d in f7["datasets"]:
                table[fig7_model(d, "alone", f, seed, joint_all)] = {"datasets": [d], "fractions": {d: f}, "seed": seed}
                reduced = list(f7["datasets"]) if joint_all else [d]
                table[fig7_model(d, "joint", f, seed, joint_all)] = {
                    "datasets": list(config["train"]["datasets"]), "fractions": {r: f for r in reduced}, "seed": seed}
        if 1.0 in fractions:
            for d in config["datasets"]:
                table.setdefault(fig7_model(d, "alone", 1.0, seed, joint_all),
                                 {"datasets": [d], "fractions": {d: 1.0}, "seed": seed})
    return table


def review_pct(percent) -> str:
    return format(float(percent), "g")  # 10.0 -> "10", 2.5 -> "2.5": the folder names p<pct>, round2rv<pct>


def review_table(config: dict) -> dict[str, dict]:
    """name -> {"experiment", "percent", "fraction"}: each review-value row of the main experiment."""
    percents = ((config.get("review") or {}).get("value") or {}).get("percents", [])
    return {f"{MAIN}_rv{review_pct(p)}": {"experiment": MAIN, "percent": review_pct(p), "fraction": float(p) / 100}
            for p in percents}


def write_tsv(config: dict, path: str | Path, log: str | Path | None = None) -> None:
    """results/experiments.tsv: one row per experiment (its settings as JSON), then one per Fig. 7 model and one
    per review-value row; a line of counts to ``log``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    rows = [["name", "kind", "recipe", "seed", "settings"]]
    rows += [[r["name"], r["kind"], r["recipe"], r["seed"], json.dumps(r["spec"], sort_keys=True)]
             for r in experiment_table(config).values()]
    rows += [[name, "fig7 model", "fig7", r["seed"], json.dumps({"datasets": r["datasets"], "fractions": r["fractions"]},
                                                                 sort_keys=True)]
             for name, r in fig7_table(config).items()]
    rows += [[name, "review value", "review", config["train"]["seed"],
              json.dumps({"experiment": r["experiment"], "reviewed_fraction": r["fraction"]}, sort_keys=True)]
             for name, r in review_table(config).items()]
    # names and JSON hold no tab or newline: plain tab-separated lines, the JSON readable as it is
    tmp.write_text("".join("\t".join(str(v) for v in row) + "\n" for row in rows))
    tmp.replace(path)
    if log is not None:
        n, m, r = len(experiment_table(config)), len(fig7_table(config)), len(review_table(config))
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text(f"{n} experiments, {m} Fig. 7 models, {r} review-value rows -> {path}\n")
