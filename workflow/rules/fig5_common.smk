# Input functions of fig5.smk (the paper's Fig. 5): the runs of each swept mining value.


def fig5_exp(key, value):
    """The experiment of one swept value: the main experiment for the configured value."""
    if fig5_default(key, value):
        return MAIN
    return exp_name(fig5_name(key, value), config["train"]["seed"])


def fig5_runs():
    stage = FIG5.get("stage", "r2_fused")
    return {key: {"default": config["mining"][key], "stage": stage,
                  "runs": [{"value": v, "exp": fig5_exp(key, v)}
                           for v in sorted({*values, config["mining"][key]}, key=float)]}
            for key, values in FIG5.get("values", {}).items()}


def fig5_summaries(wildcards):
    """Every run's validation and test summary and matches (the bootstrap's input)."""
    return sorted({f"results/eval/{r['exp']}/{s['stage']}/{split}{name}.parquet"
                   for s in fig5_runs().values() for r in s["runs"]
                   for split in ("", "val/") for name in ("summary", "matches")})


def fig5_spec_arg(wildcards):
    return json.dumps(fig5_runs())
