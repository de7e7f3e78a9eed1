# FROC evaluation on the DeepLesion-like test split (LENS 3D protocol, Sec. VI-C), per experiment and stage
# (r1/r2 = round 1/2 model, dl = DeepLesion expert only, fused = all experts, fpr = + Eq. 4), each average
# with a 95 % interval over test patients (evaluation.bootstrap); every stage is also scored on the
# validation split (results/eval/{exp}/{stage}/val/), with the same protocol and truth.


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
        matches="results/eval/{exp}/{stage}/matches.parquet",
    log:
        "results/logs/{exp}/evaluate.{stage}.log",
    benchmark:
        "results/benchmarks/evaluate/{exp}.{stage}.tsv"
    conda:
        ENV
    params:
        e=settings("evaluation", "bootstrap", "bootstrap_seed"),
        protocol=eval_protocol_args,
        out=parent_of("froc"),
        label=stage_label,
        score=stage_score_column,
        split="test",
    shell:
        "lens evaluate --pred {input.pred} --truth {input.truth} {params.protocol} --name {params.label:q} "
        "--score-column {params.score} --units {input.volumes} --split {params.split} "
        "--bootstrap {params.e[bootstrap]} --seed {params.e[bootstrap_seed]} --out {params.out} 2> {log}"


# the same stage on the validation split, the split choices are made on (test is scored, never tuned on)
use rule evaluate as evaluate_val with:
    input:
        pred=stage_pred_val,
        truth=eval_truth,
        volumes="results/prep/deeplesion/volumes.parquet",
    output:
        froc="results/eval/{exp}/{stage}/val/froc.parquet",
        summary="results/eval/{exp}/{stage}/val/summary.parquet",
        md="results/eval/{exp}/{stage}/val/summary.md",
        plot="results/eval/{exp}/{stage}/val/froc.png",
        matches="results/eval/{exp}/{stage}/val/matches.parquet",
    log:
        "results/logs/{exp}/evaluate.{stage}.val.log",
    benchmark:
        "results/benchmarks/evaluate/{exp}.{stage}.val.tsv"
    params:
        split="val",


rule froc_plot:
    input:
        curves=main_curves,
        val=main_val_summaries,
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
        # quoted by snakemake (:q): "DeepLesion's key-slice protocol" broke a hand-quoted title
        title=f"LENS on the DeepLesion-like test split, {eval_protocol_title()}, validation beside it "
              "(paper: Table II, on DeepLesion)",
    shell:
        "lens froc-plot --curves {input.curves} --val-summaries {input.val} --out {output.plot} "
        "--table {output.table} --paper {params.paper} --title {params.title:q} 2> {log}"
