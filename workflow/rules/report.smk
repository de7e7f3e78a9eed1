# The run's one page, rendered from the tables and plots below with the captions of workflow/report/*.rst
# (also: snakemake --cores 1 --report results/report.zip for the captioned Snakemake report).


rule html_report:
    input:
        unpack(mining_audit),  # the audits read the hidden truth: built-in corpus only
        table="results/eval/table.parquet",
        froc="results/eval/froc.png",
        delta=delta_plot,  # the delta audit (decides nothing)
        # the training curves: losses, the learning curves (validation by epoch), the FPR's loss against chance
        losses=expand("results/{exp}/{round}/{curve}.png", exp=MAIN, round=["round1", "round2"],
                      curve=["losses", "val_curve"])
               + ([f"results/{MAIN}/fpr/fpr_loss.png"] if "r2_fpr" in MAIN_STAGES else []),
        # the captions of `snakemake --report` (beside the Snakefile, whatever --directory says)
        captions=expand(f"{workflow.basedir}/workflow/report/{{item}}.rst",
                        item=["table", "froc_all", "audit", "montage", "delta", "losses"]),
    output:
        "results/report.html",
    log:
        "results/logs/report.log",
    conda:
        ENV
    params:
        captions=parent_of("captions"),
        benchmarks="results/benchmarks",  # every job's benchmark file (not inputs: the folder fills as jobs run)
        audit=audit_flags,
    shell:
        "lens report --table {input.table} --froc {input.froc} {params.audit} "
        "--delta {input.delta} --losses {input.losses} --benchmarks {params.benchmarks} --captions {params.captions} "
        "--out {output} 2> {log}"
