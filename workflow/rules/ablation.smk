# The paper's Table II / Table V rows on the built-in corpus, each over several seeds:
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


# round-1 proposals of the experiment's "separate models": propose's command with one model per dataset
# (each trained alone), their experts fused
use rule propose as propose_separate with:
    input:
        model=separate_models,
        prep=prep_tables(DATASETS),
    output:
        p2d=temp("results/{exp}/separate/proposals/{experts}/{dataset}/{split}/{shard}.parquet"),
        p3d=temp("results/{exp}/separate/proposals/{experts}/{dataset}/{split}/{shard}.3d.parquet"),
    log:
        "results/logs/{exp}/propose_separate/{experts}.{dataset}.{split}.{shard}.log",
    benchmark:
        "results/benchmarks/propose_separate/{exp}.{experts}.{dataset}.{split}.{shard}.tsv"


# rule propose's pattern also matches results/<exp>/separate/ (gather_proposals gathers both)
ruleorder: propose_separate > propose


# the "two-stage score" row: round 2's model, no retraining, its experts scoring sqrt(head x AFP centerness)
# instead of propose.score; its proposals live under results/<exp>/round2ts/
use rule propose as propose_two_stage with:
    input:
        model="results/{exp}/round2/lens.pt",
        prep=prep_tables(DATASETS),
    output:
        p2d=temp("results/{exp}/round2ts/proposals/{experts}/{dataset}/{split}/{shard}.parquet"),
        p3d=temp("results/{exp}/round2ts/proposals/{experts}/{dataset}/{split}/{shard}.3d.parquet"),
    log:
        "results/logs/{exp}/propose_two_stage/{experts}.{dataset}.{split}.{shard}.log",
    benchmark:
        "results/benchmarks/propose_two_stage/{exp}.{experts}.{dataset}.{split}.{shard}.tsv"
    params:
        score="two_stage",


ruleorder: propose_two_stage > propose


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
        ENV
    params:
        spec=ablation_spec_arg,
        out=parent_of("table"),
        eval_dir=eval_dir,
        e=settings("evaluation", "bootstrap", "bootstrap_seed"),
    shell:
        "lens ablation-table --spec {params.spec:q} --eval-dir {params.eval_dir} --out {params.out} --val "
        "--bootstrap {params.e[bootstrap]} --seed {params.e[bootstrap_seed]} 2> {log}"


rule ablation:
    input:
        rules.ablation_table.output,
