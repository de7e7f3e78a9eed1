# Input functions of workflow/rules/fig7.smk (the paper's Fig. 7): which models to train, evaluate and table.
import json


def fig7_config():
    """The fig7 section, checked against the trained datasets (only when the fig7 target is asked for)."""
    if "fig7" not in config:
        raise ValueError("config has no 'fig7' section (see config.yaml)")
    f7 = config["fig7"]
    unknown = [d for d in f7["datasets"] if d not in config["train"]["datasets"]]
    if unknown:
        raise ValueError(f"fig7.datasets {unknown} are not in train.datasets {config['train']['datasets']}")
    return f7


def fig7_heldout():
    """The held-out cohort's settings (fig7.heldout), or None: Fig. 7 is scored on the validation split.
    Only the built-in corpus can synthesize one."""
    held = fig7_config().get("heldout")
    return held if held and config["corpus"]["builtin"] else None


def fig7_eval_set():
    """Name of the scans Fig. 7 is scored on: part of every proposal and evaluation path."""
    return "heldout" if fig7_heldout() else "val"


def fig7_prep_root(evalset):
    return "results/fig7/heldout/prep" if evalset == "heldout" else "results/prep"


def fig7_eval_prep(wildcards):
    return expand("{root}/{dataset}/{name}", root=fig7_prep_root(wildcards.evalset), dataset=wildcards.dataset,
                  name=["volumes.h5", "volumes.parquet", "lesions.parquet"])


def fig7_eval_volumes(wildcards, input):
    return input.prep[1]  # fig7_eval_prep: volumes.parquet


def fig7_eval_lesions(wildcards, input):
    return input.prep[2]  # fig7_eval_prep: lesions.parquet


def fig7_experts_arg(wildcards):
    return f"--experts {wildcards.dataset}"  # the dataset's own expert


def fig7_heldout_dataset_root(wildcards, input):
    """The dataset's folder in the held-out corpus (the corpus writes each format to a folder of its name)."""
    return f"{Path(input.marker).parent}/{dataset_format(wildcards)}"


def fig7_heldout_truth_arg(wildcards, input, output):
    """The cohort's hidden truth in, its preprocessed form out, apart from the folder fig7_propose gets."""
    return f"--truth {input.truth} --truth-out {output.truth}"


def fig7_propose_split(wildcards):
    return "all" if wildcards.evalset == "heldout" else "val"  # every held-out scan; else the val split


def fig7_eval_split_arg(wildcards):
    return "" if wildcards.evalset == "heldout" else "--split val"


def fig7_heldout_args(wildcards):
    """`lens synthesize` options of the held-out cohort: no DeepLesion-like patients, `cases` scans of each
    Fig. 7 dataset (none of the other single-type datasets), the cohort's own corpus seed."""
    held = fig7_heldout()
    if held is None:
        raise ValueError("fig7.heldout is null (or the corpus is not built in): there is no held-out cohort")
    f7 = {config["datasets"][d]["format"] for d in fig7_config()["datasets"]}
    cases = " ".join(f"{fmt}.cases={held['cases'] if fmt in f7 else 0}" for fmt in ("luna", "lits", "nihln"))
    return f"--seed {held['seed']} --set deeplesion.patients=0 {cases}"


fig7_pct = experiment_table.fig7_pct


def fig7_model(dataset, mode, fraction, seed):
    return experiment_table.fig7_model(dataset, mode, fraction, seed, fig7_config().get("joint", "all") == "all")


def fig7_runs():
    """Every evaluated (dataset, mode, fraction, seed) and the model it scores."""
    f7 = fig7_config()
    return [{"dataset": d, "mode": m, "fraction": float(f), "seed": int(s), "model": fig7_model(d, m, f, s)}
            for d in f7["datasets"] for f in f7["fractions"] for m in ("alone", "joint") for s in f7["seeds"]]


def fig7_training(model):
    """(datasets, volume_fraction, seed) that train `model`, from the experiments table's Fig. 7 models."""
    fig7_config()
    if model not in FIG7_MODELS:
        raise ValueError(f"{model!r} is not a Fig. 7 model of the config (fig7.datasets, fractions, seeds; "
                         f"`snakemake --cores 1 experiments` lists them)")
    r = FIG7_MODELS[model]
    return list(r["datasets"]), dict(r["fractions"]), int(r["seed"])


def fig7_reuses_main(model):
    """The joint model on every volume is the ablation's "full" experiment (the main model at the train seed)."""
    datasets, fractions, _ = fig7_training(model)
    experiments = ABLATION["experiments"]
    return ("full" in experiments and not experiments["full"] and datasets == list(config["train"]["datasets"])
            and all(f == 1.0 for f in fractions.values()))


def fig7_model_file(wildcards):
    if fig7_reuses_main(wildcards.model):
        return f"results/{exp_name('full', fig7_training(wildcards.model)[2])}/round1/lens.pt"
    return f"results/fig7/{wildcards.model}/lens.pt"


def fig7_train_overrides(wildcards):
    """`lens train` of a Fig. 7 model. A model trained alone gets the joint model's passes over its dataset
    (train.epochs: equal footing, issue 21) unless fig7.alone_epochs says otherwise (its lr steps at the same
    fractions of the run): a single-type dataset's epoch is a few batches, so equal passes leave it few steps."""
    datasets, fractions, seed = fig7_training(wildcards.model)
    frac = ", ".join(f"{d}: {f}" for d, f in fractions.items())
    args = f"--seed {seed} --set 'datasets=[{','.join(datasets)}]' 'volume_fraction={{{frac}}}'"
    epochs = fig7_config().get("alone_epochs")
    if epochs and "_alone_" in wildcards.model:
        base = config["train"]
        steps = [round(epochs * s / base["epochs"]) for s in base.get("lr_steps", [])]
        args += f" epochs={epochs} 'lr_steps=[{','.join(map(str, steps))}]'"
    return args


def fig7_summary(run):
    return f"results/eval/fig7/{run['model']}/{run['dataset']}/{fig7_eval_set()}/summary.parquet"


def fig7_summaries(wildcards):
    return sorted({fig7_summary(r) for r in fig7_runs()})


def fig7_matches(wildcards):
    """The matches.parquet beside each run's summary: the table's bootstrap reads them."""
    return [str(Path(p).with_name("matches.parquet")) for p in fig7_summaries(wildcards)]


def fig7_spec_arg(wildcards):
    """The runs as JSON for `lens fig7-table`."""
    return json.dumps([{k: r[k] for k in ("dataset", "mode", "fraction", "seed")}
                       | {"summary": fig7_summary(r)}
                       for r in fig7_runs()])


def fig7_eval_name(wildcards):
    """How the table names the scans it is scored on."""
    held = fig7_heldout()
    if held is None:
        return "validation split"
    return f"held-out cohort, {held['cases']} scans per dataset, corpus seed {held['seed']}"


def fig7_run_label(wildcards):
    run = next(r for r in fig7_runs() if r["model"] == wildcards.model and r["dataset"] == wildcards.dataset)
    return f"{run['dataset']} {run['mode']} {fig7_pct(run['fraction'])}% seed {run['seed']}"
