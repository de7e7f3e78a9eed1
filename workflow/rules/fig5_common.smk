# Input functions of fig5.smk (the paper's Fig. 5): the runs of each swept mining value.


def fig5_exp(key, value, seed):
    """The experiment of one swept value at one seed: the full experiment (the main one at the train seed)
    for the configured value."""
    return exp_name("full" if fig5_default(key, value) else fig5_name(key, value), seed)


def fig5_runs():
    stage = FIG5.get("stage", "r2_fused")
    seeds = experiment_table.fig5_seeds(config)
    return {key: {"default": config["mining"][key], "stage": stage,
                  "runs": [{"value": v, "exps": [fig5_exp(key, v, s) for s in seeds]}
                           for v in sorted({*values, config["mining"][key]}, key=float)]}
            for key, values in FIG5.get("values", {}).items()}


def fig5_summaries(wildcards):
    """Every run's validation and test summary and matches (the bootstrap's input)."""
    return sorted({f"results/eval/{e}/{s['stage']}/{split}{name}.parquet"
                   for s in fig5_runs().values() for r in s["runs"] for e in r["exps"]
                   for split in ("", "val/") for name in ("summary", "matches")})


def fig5_spec_arg(wildcards):
    return json.dumps(fig5_runs())
