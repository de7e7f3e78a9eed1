# Issue 6: the paper's Table II / Table V rows on the built-in corpus, each over several seeds:
# `snakemake --cores all ablation` (not part of the default target: it trains many models).


rule ablation_table:
    input:
        ablation_summaries,
    output:
        table=report("results/eval/ablation/table.md", caption="../report/ablation.rst", category="Ablation"),
        parquet="results/eval/ablation/table.parquet",
        plot=report("results/eval/ablation/froc.png", caption="../report/ablation.rst", category="Ablation"),
    log:
        "results/logs/ablation_table.log",
    benchmark:
        "results/benchmarks/ablation_table.tsv"
    conda:
        "../../envs/lens.yaml"
    params:
        spec=ablation_spec_arg,
        out=parent_of("table"),
    shell:
        "lens ablation-table --spec '{params.spec}' --eval-dir results/eval --out {params.out} 2> {log}"


rule ablation:
    input:
        rules.ablation_table.output,
