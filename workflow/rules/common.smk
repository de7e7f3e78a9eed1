# Config validation and the input functions the rules use (no lambdas in rules).
from pathlib import Path

from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")

DATASETS = list(config["datasets"])
SHARDS = int(config["preprocess"]["shards"])
CORPUS = config["corpus"]["root"]


wildcard_constraints:
    dataset="|".join(DATASETS),
    shard=r"\d+",


def dataset_root(wildcards):
    """The dataset's released folder; with the built-in corpus, the corpus marker makes it a dependency."""
    if config["corpus"]["builtin"]:
        return f"{CORPUS}/corpus.json"
    return []


def truth_arg(wildcards):
    return f"--truth {CORPUS}/hidden_truth.parquet" if config["corpus"]["builtin"] else ""


def prep_shard_dirs(wildcards):
    return [f"results/prep_shards/{wildcards.dataset}/{i}/volumes.h5" for i in range(SHARDS)]


def dataset_format(wildcards):
    return config["datasets"][wildcards.dataset]["format"]


def dataset_folder(wildcards):
    return config["datasets"][wildcards.dataset]["root"]


def shard_dirs_arg(wildcards, input):
    return " ".join(str(Path(p).parent) for p in input)


wildcard_constraints:
    round=r"round\d",
    split="train|val|test",
    dim=r"|\.3d",


def prep_tables(datasets):
    return expand("results/prep/{dataset}/{name}", dataset=datasets, name=["volumes.h5", "volumes.parquet", "lesions.parquet"])


def proposal_shards(wildcards):
    n = int(config["propose"]["shards"])
    return [f"results/{wildcards.round}/proposals/{wildcards.dataset}/{wildcards.split}/{i}{wildcards.dim}.parquet"
            for i in range(n)]


# evaluated detector variants (results/<variant>/proposals/deeplesion/test.3d.parquet)
VARIANTS = ["round1", "round2"]


wildcard_constraints:
    variant=r"round\d",


def eval_truth(wildcards):
    """The built-in corpus's full 3D truth carries lesion type and size (stratified FROC); real data
    uses the manual 3D test set."""
    if config["corpus"]["builtin"]:
        return "results/prep/deeplesion/truth.parquet"
    return "results/prep/deeplesion/test3d.parquet"


def delta_input(wildcards):
    """delta.json when mining.delta is 'auto' (calibrated on the validation split of the built-in corpus)."""
    return "results/mining/delta.json" if config["mining"]["delta"] == "auto" else []


def delta_arg(wildcards, input):
    return input.delta if config["mining"]["delta"] == "auto" else config["mining"]["delta"]


def parent_of(name):
    """A params function: the folder of input/output file `name` (no hard-coded path prefixes in rules)."""

    def folder(wildcards, input, output):
        files = input if name in input.keys() else output
        return str(Path(files[name] if isinstance(files[name], str) else files[name][0]).parent)

    return folder


def mining_report_files(wildcards):
    files = ["results/mining/audit.md", "results/mining/montage.png"]
    if config["mining"]["delta"] == "auto":
        files.append("results/mining/delta.png")
    return files
