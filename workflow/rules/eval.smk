# FROC evaluation on the DeepLesion-like test split (LENS 3D protocol, Sec. VI-C), per experiment
# and stage (r1/r2 = round 1/2 model, dl = DeepLesion expert only, fused = all experts, fpr = + Eq. 4).


rule evaluate:
    input:
        pred=stage_pred,
        truth=eval_truth,
        volumes="results/prep/deeplesion/volumes.parquet",
    output:
        froc="results/eval/{exp}/{stage}/froc.parquet",
        summary="results/eval/{exp}/{stage}/summary.parquet",
        md="results/eval/{exp}/{stage}/summary.md",
        plot=report("results/eval/{exp}/{stage}/froc.png", caption="../report/froc.rst", category="Evaluation"),
    log:
        "results/logs/{exp}/evaluate.{stage}.log",
    benchmark:
        "results/benchmarks/evaluate/{exp}.{stage}.tsv"
    conda:
        ENV
    params:
        e=settings("evaluation", "iobb", "fp_rates"),
        out=parent_of("froc"),
        label=stage_label,
        score=stage_score_column,
    shell:
        "lens evaluate --pred {input.pred} --truth {input.truth} --protocol lens3d --name '{params.label}' "
        "--score-column {params.score} --units {input.volumes} --unit-column volume_id --split test "
        "--threshold {params.e[iobb]} "
        "--fp-rates {params.e[fp_rates]} --out {params.out} 2> {log}"


rule froc_plot:
    input:
        main_curves,
    output:
        plot=report("results/eval/froc.png", caption="../report/froc_all.rst", category="Evaluation"),
        table=report("results/eval/table.md", caption="../report/table.rst", category="Evaluation"),
        parquet="results/eval/table.parquet",
    log:
        "results/logs/froc_plot.log",
    benchmark:
        "results/benchmarks/froc_plot.tsv"
    conda:
        ENV
    params:
        paper=main_paper_arg,
    shell:
        "lens froc-plot --curves {input} --out {output.plot} --table {output.table} --paper {params.paper} "
        "--title 'LENS on the DeepLesion-like test split (paper: Table II, on DeepLesion)' 2> {log}"
