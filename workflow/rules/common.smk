# Config validation, the rules' software (env, lens_core) and the input functions the rules use (no
# lambdas in rules).
import json
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")

# A released dataset's folder must exist when the DAG is planned: a typo in a root passed `snakemake -n` and
# failed only when preprocessing ran (the built-in corpus writes its own roots).
if not config["corpus"]["builtin"]:
    _missing = {d: v["root"] for d, v in config["datasets"].items() if not Path(v["root"]).is_dir()}
    if _missing:
        raise WorkflowError("config datasets: no such folder for " + ", ".join(
            f"datasets.{d}.root = {r!r}" for d, r in _missing.items()) + f" (relative to {Path.cwd()})")

# Rules run this checkout's lens_core, found through the workflow folder (never an installed copy):
# every job's shell puts the checkout on PYTHONPATH and scripts/bin (`lens` = python -m lens_core) on
# PATH, after --use-conda has activated an env that holds the dependencies only. (The prefix replaces
# Snakemake's default one, so it repeats its strict mode.)
REPO = Path(workflow.basedir).resolve()
shell.prefix(f'set -euo pipefail; export PATH={shlex.quote(str(REPO / "scripts" / "bin"))}:"$PATH" '
             f"PYTHONPATH={shlex.quote(str(REPO))}; ")
# --use-conda: every rule runs in envs/lens.yaml (CPU torch); the GPU rules (training, proposals, FPR)
# in envs/lens-cuda.yaml where the profile says so (workflow/profiles/slurm: config gpu_env=cuda).
ENV = "../../envs/lens.yaml"
GPU_ENV = "../../envs/lens-cuda.yaml" if config.get("gpu_env", "cpu") == "cuda" else ENV

# Every experiment the workflow can build, resolved once from the config (workflow/experiment_table.py): input
# functions look an experiment up by name, and nothing parses one.
sys.path.insert(0, str(REPO / "workflow"))
import experiment_table  # noqa: E402  (plain Python beside the rules)

sys.path.insert(0, str(REPO))
from lens_core.label_kinds import GT_LIKE_KINDS, IGNORE_KINDS  # noqa: E402  (plain Python: no dependency)

EXPERIMENTS = experiment_table.experiment_table(config)
FIG7_MODELS = experiment_table.fig7_table(config)
REVIEW_ROWS = experiment_table.review_table(config)

# the review-value percentages as wildcard alternatives: a path names one of the table's rows or matches no rule
REVIEW_PCT_RE = "|".join(re.escape(r["percent"]) for r in REVIEW_ROWS.values()) or "(?!)"


def experiments_json(wildcards):
    """Every record of the experiments table, as `snakemake experiments` writes them."""
    return json.dumps([EXPERIMENTS, FIG7_MODELS, REVIEW_ROWS], sort_keys=True)


DATASETS = list(config["datasets"])
SHARDS = int(config["preprocess"]["shards"])
CORPUS = config["corpus"]["root"]
ABLATION = config["ablation"]
# The main pipeline is the experiment "lens": every component, the train seed of config.yaml. The
# ablation's experiments are named <experiment>_s<seed>; its "full" experiment at the main seed is "lens".
MAIN = "lens"
# evaluated stages of an experiment: which model (round), which experts fused, FPR or not; sep = one
# round-1 model per dataset of the experiment, each trained alone, their proposals fused (Table V)
# r2ts: round 2's model, its proposals scored two_stage instead of propose.score (inference only)
STAGES = ["r1_dl", "r1_fused", "r2_dl", "r2_fused", "r2u_fused", "r2ts_fused", "r2_fpr", "fpr_only", "sep_fused"]
ROUND_OF = {"r1": "round1", "r2": "round2", "r2u": "round2u", "r2ts": "round2ts", "sep": "separate"}
STAGE_LABEL = {"r1_dl": "round 1, DeepLesion expert", "r1_fused": "round 1 (LENS)",
               "r2_dl": "round 2, DeepLesion expert", "r2_fused": "round 2 (LENS + mining)",
               "r2u_fused": "round 2, uncertain as GT", "r2ts_fused": "round 2, two-stage score",
               "r2_fpr": "round 2 + FPR (Eq. 4)",
               "fpr_only": "FPR score alone", "sep_fused": "separate models, proposals fused"}
# the default target's rows; config fpr.enabled: false ends it at round 2
MAIN_STAGES = ["r1_fused", "r2_fused"] + (["r2_fpr", "fpr_only"] if config["fpr"].get("enabled", True) else [])


wildcard_constraints:
    dataset="|".join(DATASETS),
    shard=r"\d+",
    round=rf"round1|round2|round2u|round2ts|round2rv({REVIEW_PCT_RE})|separate",  # round2rv<pct>: review.smk
    split="train|val|test",
    dim=r"|\.3d",
    exp=r"[a-z0-9]+(_s\d+)?",
    experts="fused|dl",
    stage="|".join(STAGES),


# ------------------------------------------------------------------------------------ settings
# Every step takes its settings from Snakemake's `config` through params, never from config.yaml on
# disk: --configfile/--config are honoured, and a changed setting reruns exactly the rules whose params
# hold it (Snakemake's params rerun trigger). So a rule's params carry only the keys it uses.
def settings(section, *keys):
    """config[section], or only `keys` of it."""
    values = config[section]
    return {k: values.get(k) for k in keys} if keys else values


def settings_json(section, drop=()):
    """config[section] without `drop`, as one shell-quoted JSON word (`lens train/synthesize --config-json`)."""
    return shlex.quote(json.dumps({k: v for k, v in config[section].items() if k not in drop}, sort_keys=True))


# ----------------------------------------------------------------------------------------- data
def dataset_root(wildcards):
    """The dataset's released folder; with the built-in corpus, the corpus marker makes it a dependency."""
    if config["corpus"]["builtin"]:
        return f"{CORPUS}/corpus.json"
    return []


def truth_arg(wildcards):
    return f"--truth {CORPUS}/hidden_truth.parquet" if config["corpus"]["builtin"] else ""


PREP_FILES = ["volumes.h5", "volumes.parquet", "lesions.parquet", "truth.parquet", "test3d.parquet"]


def prep_shard_files(wildcards):
    """Every file of every shard: they are temp(), so gather_prep must ask for all of them."""
    return [f"results/prep_shards/{wildcards.dataset}/{i}/{name}" for i in range(SHARDS) for name in PREP_FILES]


def shard_arg(wildcards):
    return f"--shard {wildcards.shard}/{SHARDS}"


def dataset_format(wildcards):
    return config["datasets"][wildcards.dataset]["format"]


def dataset_folder(wildcards):
    return config["datasets"][wildcards.dataset]["root"]


def shard_dirs_arg(wildcards, input):
    return " ".join(dict.fromkeys(str(Path(p).parent) for p in input))  # each shard folder once, in order


def prep_tables(datasets):
    return expand("results/prep/{dataset}/{name}", dataset=datasets,
                  name=["volumes.h5", "volumes.parquet", "lesions.parquet"])


def parent_of(name):
    """A params function: the folder of input/output file `name` (no hard-coded path prefixes in rules)."""

    def folder(wildcards, input, output):
        files = input if name in input.keys() else output
        return str(Path(files[name] if isinstance(files[name], str) else files[name][0]).parent)

    return folder


def prep_root(wildcards, input):
    """results/prep: the folder holding every dataset's preprocessed folder."""
    return str(Path(input.prep[0]).parent.parent)


# ----------------------------------------------------------------------------------- proposals
def experts_arg(wildcards):
    return "--experts deeplesion" if wildcards.experts == "dl" else ""


def split_arg(wildcards):
    return wildcards.split


def propose_shard_arg(wildcards):
    return f"--shard {wildcards.shard}/{config['propose']['shards']}"


def proposal_shards(wildcards):
    n = int(config["propose"]["shards"])
    return [f"results/{wildcards.exp}/{wildcards.round}/proposals/{wildcards.experts}/{wildcards.dataset}/"
            f"{wildcards.split}/{i}{wildcards.dim}.parquet" for i in range(n)]
