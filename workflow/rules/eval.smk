# Issue 4: FROC evaluation of each variant on the DeepLesion-like test split (LENS 3D protocol, Sec. VI-C).


rule evaluate:
    input:
        pred="results/{variant}/proposals/deeplesion/test.3d.parquet",
        truth=eval_truth,
        volumes="results/prep/deeplesion/volumes.parquet",
    output:
        froc="results/eval/{variant}/froc.parquet",
        summary="results/eval/{variant}/summary.md",
        plot=report("results/eval/{variant}/froc.png", caption="../report/froc.rst", category="Evaluation"),
    log:
        "results/logs/evaluate/{variant}.log",
    benchmark:
        "results/benchmarks/evaluate/{variant}.tsv"
    conda:
        "../../envs/lens.yaml"
    params:
        e=config["evaluation"],
    shell:
        "lens evaluate --pred {input.pred} --truth {input.truth} --protocol lens3d --name {wildcards.variant} "
        "--units {input.volumes} --unit-column volume_id --split test --threshold {params.e[iobb]} "
        "--fp-rates {params.e[fp_rates]} --out results/eval/{wildcards.variant} 2> {log}"


rule froc_plot:
    input:
        expand("results/eval/{variant}/froc.parquet", variant=VARIANTS),
    output:
        plot=report("results/eval/froc.png", caption="../report/froc_all.rst", category="Evaluation"),
        table=report("results/eval/table.md", caption="../report/table.rst", category="Evaluation"),
    log:
        "results/logs/froc_plot.log",
    benchmark:
        "results/benchmarks/froc_plot.tsv"
    conda:
        "../../envs/lens.yaml"
    shell:
        "lens froc-plot --curves {input} --out {output.plot} --table {output.table} "
        "--title 'LENS on the DeepLesion-like test split' 2> {log}"
