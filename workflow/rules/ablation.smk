# Issue 6: the paper's Table II / Table V rows on the built-in corpus, each over several seeds:
# `snakemake --cores all ablation` (not part of the default target: it trains many models).
# Table V's "data pooling" is an experiment trained by train_lens (`pool` in its config); its "separate
# models" stage (sep_fused) fuses the proposals of one model per dataset, each trained alone.


# a dataset's round-1 model trained alone, when neither the ablation nor Fig. 7 trains it (alone_model):
# train_lens's command (and inputs) with the dataset's own --set datasets
use rule train_lens as train_alone with:
    output:
        model="results/alone/{dataset}_s{seed}/lens.pt",
        losses="results/alone/{dataset}_s{seed}/losses.parquet",
        curve="results/alone/{dataset}_s{seed}/losses.png",
    wildcard_constraints:
        seed=r"\d+",
    log:
        "results/logs/alone/{dataset}_s{seed}/train.log",
    benchmark:
        "results/benchmarks/train_alone/{dataset}_s{seed}.tsv"
    params:
        overrides=alone_overrides,


rule propose_separate:
    input:
        models=separate_models,
        prep=prep_tables(DATASETS),
    output:
        p2d="results/{exp}/separate/proposals/{experts}/{dataset}/{split}/{shard}.parquet",
        p3d="results/{exp}/separate/proposals/{experts}/{dataset}/{split}/{shard}.3d.parquet",
    log:
        "results/logs/{exp}/propose_separate/{experts}.{dataset}.{split}.{shard}.log",
    benchmark:
        "results/benchmarks/propose_separate/{exp}.{experts}.{dataset}.{split}.{shard}.tsv"
    conda:
        "../../envs/lens.yaml"
    threads: 1  # as rule propose
    params:
        p=config["propose"],
        prep=prep_root,
        experts=experts_arg,
    shell:
        "lens propose --model {input.models} --prep-dir {params.prep} --dataset {wildcards.dataset} "
        "--split {wildcards.split} --shard {wildcards.shard}/{params.p[shards]} {params.experts} --out {output.p2d} "
        "--out3d {output.p3d} --min-score {params.p[min_score]} --stack-iou {params.p[stack_iou]} "
        "--threads {threads} --no-progress 2> {log}"


# rule propose's pattern also matches results/<exp>/separate/ (gather_proposals gathers both)
ruleorder: propose_separate > propose


rule ablation_table:
    input:
        ablation_summaries,
    output:
        table=report("results/eval/ablation/table.md", caption="../report/ablation.rst", category="Ablation"),
        parquet="results/eval/ablation/table.parquet",
        differences="results/eval/ablation/differences.parquet",
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
        e=config["evaluation"],
    shell:
        "lens ablation-table --spec '{params.spec}' --eval-dir results/eval --out {params.out} --val "
        "--bootstrap {params.e[bootstrap]} --seed {params.e[bootstrap_seed]} 2> {log}"


rule ablation:
    input:
        rules.ablation_table.output,
