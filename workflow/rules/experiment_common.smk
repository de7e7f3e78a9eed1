# Input functions that look an experiment up (workflow/experiment_table.py resolved it once, in common.smk):
# its datasets, mining settings and source, round-2 training arguments, FPR extras and separate models.


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
    """`lens train --seed --set ...` of an experiment's round (its `norm` in every round). round2u is round 2
    trained from the same mined labels with the uncertain boxes as lesions instead of ignored (Table V's "uncertain
    as GT"); an experiment's `pool` datasets are pooled into its first dataset's task (Table V's "data pooling",
    with `pool_positive_only` their lesion slices alone). Every round 2 (round2, round2u, review.smk's
    round2rv<pct>) samples unlabelled slices as mining.unlabeled_slices says (Table IV, its last row)."""
    spec, seed = exp_spec(wildcards.exp)
    args = [f"--seed {seed}", f"--set 'datasets=[{','.join(exp_datasets(wildcards.exp))}]'"]
    if spec.get("norm"):
        args.append(f"norm={spec['norm']}")  # every round of the experiment (issue 21's normalisation row)
    if spec.get("pool"):
        args.append(f"'pool=[{','.join(spec['pool'])}]'")
        if spec.get("pool_positive_only"):
            args.append("pool_positive_only=true")
    rnd = getattr(wildcards, "round", "round1")
    if rnd.startswith("round2") or getattr(wildcards, "pct", None) is not None:
        unlabeled = exp_mining(wildcards.exp).get("unlabeled_slices", True)
        args.append(f"unlabeled_slices={str(bool(unlabeled)).lower()}")
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
    if exp_mining(wildcards.exp).get("round2_init", "scratch") != "round1":
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


def single_type_experts(wildcards):
    """The cross-dataset experts (Sec. V-C) of the model whose proposals this experiment mines."""
    have = exp_datasets(mining_source(wildcards.exp))
    return ",".join(e for e in config["mining"]["single_type_experts"] if e in have) or "none"


