# Config validation, the rules' software (env, lens_core) and the input functions the rules use (no
# lambdas in rules).
import json
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
    round=r"round1|round2|round2u|round2ts|round2rv\d+(\.\d+)?|separate",  # round2rv<pct>: review.smk
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


# ----------------------------------------------------------------------------------- experiments
def exp_name(experiment, seed):
    return experiment_table.exp_name(experiment, seed, config["train"]["seed"])


def exp_spec(exp):
    """(experiment settings, seed) of an experiment, from the experiments table."""
    if exp not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {exp!r}: not one the config declares (ablation.experiments at "
                         f"ablation.seeds, fig5.values); `snakemake --cores 1 experiments` lists them")
    return EXPERIMENTS[exp]["spec"], EXPERIMENTS[exp]["seed"]


# Fig. 5 (fig5.smk): one experiment per swept value of a mining setting: the main experiment's round-1
# proposals mined again with that value (mining_from: full), round 2 retrained. The default value is the
# main experiment itself (experiment_table.fig5_recipes).
FIG5 = config.get("fig5") or {}
fig5_name = experiment_table.fig5_name


def fig5_default(key, value):
    return experiment_table.fig5_is_default(config, key, value)


# Mining strategies an experiment's `mining:` may switch off (Table IV); each is on unless switched off.
STRATEGIES = ["cross_slice", "intra_patient", "cross_dataset"]


def exp_mining(exp):
    """The mining settings of an experiment: config's mining section with the experiment's `mining:` overrides."""
    spec = exp_spec(exp)[0]
    over = spec.get("mining") or {}
    unknown = set(over) - set(config["mining"]) - set(STRATEGIES) - {"unlabeled_slices"}
    if unknown:
        raise ValueError(f"experiment {exp!r}: mining overrides {sorted(unknown)} are not mining settings")
    return {**dict.fromkeys(STRATEGIES, True), **config["mining"], **over}


def mining_settings(*keys):
    """A params function: `keys` of the experiment's mining settings (a changed override reruns the rule)."""

    def get(wildcards):
        m = exp_mining(wildcards.exp)
        return {k: m.get(k) for k in keys}

    return get


def mining_source(exp):
    """The experiment whose round-1 proposals this experiment mines: its `mining_from` at the same seed, or itself."""
    spec, seed = exp_spec(exp)
    return exp_name(spec["mining_from"], seed) if spec.get("mining_from") else exp


def embedding_source(exp):
    """The experiment whose tracklets and lesion embeddings this one's intra-patient matching reads: its
    `mining_from` source when the settings that shape them (theta, tracklet threshold, embedding, encoder
    steps) are the source's, so the table would be the same (the encoder is mining's costly step: Fig. 5's
    delta/sigma values and Table IV's rows do not train it again); else its own."""
    src = mining_source(exp)
    keys = ("theta", "tracklet_min_score", "embedding", "encoder_steps")
    if src != exp and all(exp_mining(exp)[k] == exp_mining(src)[k] for k in keys):
        return src
    return exp


def embedding_inputs(wildcards):
    src = embedding_source(wildcards.exp)
    return {"tracklets": f"results/{src}/mining/tracklets.parquet", "emb": f"results/{src}/mining/embeddings.h5"}


def round1_proposals(split):
    """An input function: the fused DeepLesion-like round-1 proposals of `split` that the experiment mines."""

    def path(wildcards):
        return f"results/{mining_source(wildcards.exp)}/round1/proposals/fused/deeplesion/{split}.parquet"

    return path


def strategy_on(exp, strategy):
    return bool(exp_mining(exp)[strategy])


def mined_tables(wildcards):
    """The mined tables (ground truth in round 2) of the experiment's strategies that are on."""
    return [f"results/{wildcards.exp}/mining/{s}.parquet" for s in ("cross_slice", "intra_patient")
            if strategy_on(wildcards.exp, s)]


def uncertain_table(wildcards):
    """The uncertain table (ignored in round 2) when cross-dataset mining is on."""
    return [f"results/{wildcards.exp}/mining/uncertain.parquet"] if strategy_on(wildcards.exp, "cross_dataset") else []


def uncertain_arg(wildcards, input):
    return f"--uncertain {input.uncertain}" if input.uncertain else ""


def exp_datasets(exp):
    return exp_spec(exp)[0].get("datasets", config["train"]["datasets"])


def train_overrides(wildcards):
    """`lens train --seed --set ...` of an experiment's round. round2u is round 2 trained from the same
    mined labels with the uncertain boxes as lesions instead of ignored (Table V's "uncertain as GT");
    an experiment's `pool` datasets are pooled into its first dataset's task (Table V's "data pooling",
    with `pool_positive_only` their lesion slices alone). Every round 2 (round2, round2u, review.smk's
    round2rv<pct>) samples unlabelled slices as mining.unlabeled_slices says (Table IV, its last row)."""
    spec, seed = exp_spec(wildcards.exp)
    args = [f"--seed {seed}", f"--set 'datasets=[{','.join(exp_datasets(wildcards.exp))}]'"]
    if spec.get("pool"):
        args.append(f"'pool=[{','.join(spec['pool'])}]'")
        if spec.get("pool_positive_only"):
            args.append("pool_positive_only=true")
    rnd = getattr(wildcards, "round", "round1")
    if rnd.startswith("round2") or getattr(wildcards, "pct", None) is not None:
        mining = {**config["mining"], **(spec.get("mining") or {})}
        args.append(f"unlabeled_slices={str(bool(mining.get('unlabeled_slices', True))).lower()}")
        init = round2_init(wildcards)
        if init:
            args.append(f"init_from={init['init']}")
    if rnd == "round2u":
        gt, ignore = [*GT_LIKE_KINDS, "uncertain"], [k for k in IGNORE_KINDS if k != "uncertain"]
        args.append(f"'gt_kinds=[{','.join(gt)}]' 'ignore_kinds=[{','.join(ignore)}]'")
    return " ".join(args)


# Single-type datasets (config fpr.extra_datasets) that the experiment trains on add FPR samples: their
# round-2 proposals on their own training volumes and their labels (deviation from Sec. VI-B, see config).
FPR_EXTRA = [d for d in config["fpr"].get("extra_datasets", []) if d != "deeplesion"]
if set(FPR_EXTRA) - set(config["datasets"]):
    raise ValueError(f"fpr.extra_datasets {sorted(set(FPR_EXTRA) - set(config['datasets']))} are not datasets of "
                     f"the config ({sorted(config['datasets'])})")


def fpr_extra(exp):
    """The extra datasets that experiment `exp` trains on."""
    return [d for d in FPR_EXTRA if d in exp_datasets(exp)]


def fpr_extra_proposals(wildcards):
    return [f"results/{wildcards.exp}/round2/proposals/fused/{d}/train.3d.parquet" for d in fpr_extra(wildcards.exp)]


def fpr_extra_labels(wildcards):
    return [f"results/prep/{d}/lesions.parquet" for d in fpr_extra(wildcards.exp)]


def fpr_extra_args(wildcards, input):
    """--extra-source PREP_DIR PROPOSALS3D LABELS per extra dataset (its prep folder holds its labels)."""
    return " ".join(f"--extra-source {Path(lab).parent} {p} {lab}"
                    for p, lab in zip(input.extra_proposals, input.extra_labels))


def round2_init(wildcards):
    """mining.round2_init: round1 starts every round 2 of an experiment (round2, round2u, round2rv<pct>) from
    that experiment's own round-1 model (the same experts); scratch (the default) from random weights."""
    spec, _ = exp_spec(wildcards.exp)
    mining = {**config["mining"], **(spec.get("mining") or {})}
    if mining.get("round2_init", "scratch") != "round1":
        return {}
    return {"init": f"results/{wildcards.exp}/round1/lens.pt"}


def labels_arg(wildcards, input):
    """`lens train --labels`: the merged round-2 labels of a training rule with a `labels` input, else none."""
    return f"--labels {input.labels}" if "labels" in input.keys() else ""


def alone_model(dataset, seed):
    """Round-1 LENS trained on `dataset` alone: an ablation experiment of exactly that dataset (DeepLesion
    alone: "single") or Fig. 7's model on all its volumes when either exists, so neither is trained twice."""
    for name, spec in ABLATION["experiments"].items():
        if (spec or {}) == {"datasets": [dataset]}:
            return f"results/{exp_name(name, seed)}/round1/lens.pt"
    if 1.0 in [float(f) for f in config.get("fig7", {}).get("fractions", [])]:
        return f"results/fig7/{dataset}_alone_f100_s{seed}/lens.pt"
    return f"results/alone/{dataset}_s{seed}/lens.pt"


def separate_models(wildcards):
    """The "separate models" of an experiment (Table V): each of its datasets' detector trained alone."""
    _, seed = exp_spec(wildcards.exp)
    return [alone_model(d, seed) for d in exp_datasets(wildcards.exp)]


def alone_overrides(wildcards):
    return f"--seed {wildcards.seed} --set 'datasets=[{wildcards.dataset}]'"


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


def single_type_experts(wildcards):
    """The cross-dataset experts (Sec. V-C) of the model whose proposals this experiment mines."""
    have = exp_datasets(mining_source(wildcards.exp))
    return ",".join(e for e in config["mining"]["single_type_experts"] if e in have) or "none"


# ------------------------------------------------------------------------------------ evaluation
def stage_pred(wildcards, split="test"):
    """The 3D detections of an evaluated stage on the DeepLesion-like test split."""
    e, s = wildcards.exp, wildcards.stage
    if s in ("r2_fpr", "fpr_only"):  # one scored table: score = Eq. 4, score_fpr = the FPR alone
        return f"results/{e}/fpr/{split}.3d.parquet"
    rnd, experts = s.split("_")
    return f"results/{e}/{ROUND_OF[rnd]}/proposals/{experts}/deeplesion/{split}.3d.parquet"


def stage_pred_val(wildcards):
    """The same stage's detections on the DeepLesion-like validation split."""
    return stage_pred(wildcards, "val")


def eval_protocol():
    """evaluation.protocol, with auto resolved: lens3d on the built-in corpus's full 3D truth or on DeepLesion's
    manual 3D set (its CSVs in the release folder, `lens import-manual-3d`); without that set, DeepLesion's
    official key-slice protocol (deeplesion2d), the only complete truth a real run then has."""
    chosen = config["evaluation"].get("protocol", "auto")
    if chosen != "auto":
        return chosen
    dl = config["datasets"].get("deeplesion")
    if config["corpus"]["builtin"] or dl is None:  # without DeepLesion no rule evaluates on it
        return "lens3d"
    manual = Path(dl["root"]) / "manual_3d" / "boxes.csv"
    return "lens3d" if manual.is_file() else "deeplesion2d"


def eval_truth(wildcards):
    """The built-in corpus's full 3D truth carries lesion type and size (stratified FROC); real data uses
    the manual 3D test set, or without it the key-slice boxes (deeplesion2d)."""
    if eval_protocol() == "deeplesion2d":
        return "results/prep/deeplesion/lesions.parquet"
    if config["corpus"]["builtin"]:
        return "results/truth/deeplesion.parquet"
    return "results/prep/deeplesion/test3d.parquet"


def eval_protocol_args(wildcards):
    """`lens evaluate`'s protocol flags: lens3d with the config's IoBB and FP rates per sub-volume;
    deeplesion2d with its own (IoU 0.5; 0.5..16 FPs per key-slice image), its units the split's key slices."""
    e = config["evaluation"]
    if eval_protocol() == "deeplesion2d":
        return "--protocol deeplesion2d"
    return (f"--protocol lens3d --unit-column volume_id --threshold {e['iobb']} "
            f"--fp-rates {' '.join(str(r) for r in e['fp_rates'])}")


def eval_protocol_title():
    return {"lens3d": "LENS 3D protocol",
            "deeplesion2d": "DeepLesion's key-slice protocol (no manual 3D set)"}[eval_protocol()]


def validation_precision(wildcards):
    """Mining precision on the validation split needs its full 3D annotations: the built-in corpus's, or
    real DeepLesion's manual 3D set; without them it is left out of the default target."""
    return [f"results/{MAIN}/mining/val_precision.md"] if eval_protocol() == "lens3d" else []


def main_curves(wildcards):
    return [f"results/eval/{MAIN}/{s}/froc.parquet" for s in MAIN_STAGES]


def main_val_summaries(wildcards):
    return [f"results/eval/{MAIN}/{s}/val/summary.parquet" for s in MAIN_STAGES]


def main_paper_arg(wildcards):
    """The paper's Table II average of each main stage, from the ablation rows of the "full" experiment
    (the main pipeline's recipe), '-' where the paper gives none."""
    paper = {r["stage"]: r["paper"] for r in ABLATION["rows"].values()
             if r["experiment"] == "full" and r.get("paper") is not None}
    return " ".join(str(paper.get(s, "-")) for s in MAIN_STAGES)


def mining_audit(wildcards):
    """The mining audit's table and montage for the report: they read the built-in corpus's hidden truth, so
    with real data (which has none) they are left out of the DAG, not run to a crash."""
    if not config["corpus"]["builtin"]:
        return {}
    return {"audit": f"results/{MAIN}/mining/audit.parquet", "montage": f"results/{MAIN}/mining/montage.png"}


def audit_flags(wildcards, input):
    return " ".join(f"--{k} {input[k]}" for k in ("audit", "montage") if k in input.keys())


def delta_plot(wildcards):
    """The delta audit plot of the main experiment (built-in corpus: it reads the hidden truth)."""
    return [f"results/{MAIN}/mining/delta_audit.png"] if config["corpus"]["builtin"] else []


def ablation_summaries(wildcards):
    """Every ablation run's test and validation summary and matches (the bootstrap's input)."""
    return sorted({f"results/eval/{exp_name(r['experiment'], s)}/{r['stage']}/{split}{name}.parquet"
                   for r in ABLATION["rows"].values() for s in ABLATION["seeds"]
                   for split in ("", "val/") for name in ("summary", "matches")})


def exp_seed(wildcards):
    return exp_spec(wildcards.exp)[1]


def eval_dir(wildcards, output):
    """results/eval, the folder of every evaluated stage (results/eval/<exp>/<stage>/): ablation/table.md's grandparent."""
    return str(Path(output.table).parent.parent)


def ablation_spec_arg(wildcards):
    """The ablation rows as JSON for `lens ablation-table`: row -> list of (experiment name, stage) per seed."""
    import json

    rows = {label: {"stage": r["stage"], "paper": r.get("paper"), "vs": r.get("vs"),
                    "exps": [exp_name(r["experiment"], s) for s in ABLATION["seeds"]]}
            for label, r in ABLATION["rows"].items()}
    return json.dumps(rows)


def extent_arg(wildcards):
    r = exp_mining(wildcards.exp).get("extent_ratio")
    return f"--extent-ratio {r}" if r else ""


def stage_label(wildcards):
    return STAGE_LABEL[wildcards.stage]


def stage_score_column(wildcards):
    return "score_fpr" if wildcards.stage == "fpr_only" else "score"
