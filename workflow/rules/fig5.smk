# The paper's Fig. 5 on the built-in corpus: `snakemake --cores all fig5` (not part of the default target:
# one round-2 training per swept value). Each value is an experiment of its own (workflow/experiment_table.py,
# the main experiment's round-1 proposals mined again with the value, round 2 retrained),
# scored by the evaluate / evaluate_val rules; the configured value is the main experiment itself.


rule fig5_table:
    input:
        fig5_summaries,
    output:
        table=report("results/eval/fig5/table.md", caption="../report/fig5.rst", category="Fig. 5"),
        parquet="results/eval/fig5/table.parquet",
        differences="results/eval/fig5/differences.parquet",
        plot=report("results/eval/fig5/fig5.png", caption="../report/fig5.rst", category="Fig. 5"),
    log:
        "results/logs/fig5_table.log",
    benchmark:
        "results/benchmarks/fig5_table.tsv"
    conda:
        ENV
    params:
        spec=fig5_spec_arg,
        out=parent_of("table"),
        eval_dir=eval_dir,
        e=settings("evaluation", "bootstrap", "bootstrap_seed"),
    shell:
        "lens fig5-table --spec {params.spec:q} --eval-dir {params.eval_dir} --out {params.out} "
        "--bootstrap {params.e[bootstrap]} --seed {params.e[bootstrap_seed]} 2> {log}"


rule fig5:
    input:
        rules.fig5_table.output,
