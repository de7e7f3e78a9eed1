# LENS training (round 1 on the datasets' own labels) and proposal generation.


# The workflow's one `lens train` command. Every other trained model reuses this rule with
# `use rule train_lens as <name> with:` (its own outputs, log, benchmark, --seed/--set overrides or labels),
# so each keeps a rule name of its own in logs and profiles: train_lens_round2 (mining.smk), fig7_train
# (fig7.smk), train_alone (ablation.smk). --resume continues an interrupted run from OUT/checkpoint.pt when
# its config and input tables are this run's (else it trains from scratch: a rerun mining step gives new labels).
rule train_lens:
    input:
        prep=prep_tables(DATASETS),
    output:
        model="results/{exp}/{round}/lens.pt",
        losses="results/{exp}/{round}/losses.parquet",
        curve=report("results/{exp}/{round}/losses.png", caption="../report/losses.rst", category="Training"),
        val_table="results/{exp}/{round}/val_curve.parquet",
        val_curve=report("results/{exp}/{round}/val_curve.png", caption="../report/val_curve.rst",
                         category="Training"),
    wildcard_constraints:
        round="round1",
    log:
        "results/logs/{exp}/train_lens_{round}.log",
    benchmark:
        "results/benchmarks/train_lens_{round}/{exp}.tsv"
    conda:
        GPU_ENV
    threads: workflow.cores
    params:
        prep=prep_root,
        labels=labels_arg,
        out=parent_of("model"),
        train=settings_json("train"),
        overrides=train_overrides,
    shell:
        "lens train --prep-dir {params.prep} {params.labels} --config-json {params.train} "
        "{params.overrides} --out {params.out} --resume --threads {threads} --no-progress 2> {log}"


rule propose:
    input:
        model="results/{exp}/{round}/lens.pt",
        prep=prep_tables(DATASETS),
    # gather_proposals concatenates the shards: stored once
    output:
        p2d=temp("results/{exp}/{round}/proposals/{experts}/{dataset}/{split}/{shard}.parquet"),
        p3d=temp("results/{exp}/{round}/proposals/{experts}/{dataset}/{split}/{shard}.3d.parquet"),
    log:
        "results/logs/{exp}/propose/{round}.{experts}.{dataset}.{split}.{shard}.log",
    benchmark:
        "results/benchmarks/propose/{exp}.{round}.{experts}.{dataset}.{split}.{shard}.tsv"
    conda:
        GPU_ENV
    # One thread each: inference of the small model barely gains from a second thread, while two jobs
    # side by side also overlap their ~6 s torch start-up (profiles may raise it: set-threads).
    threads: 1
    params:
        p=settings("propose", "min_score", "stack_iou"),
        score=settings("propose")["score"],
        numerics=settings("propose", "kernels", "precision"),
        prep=prep_root,
        split=split_arg,
        shard=propose_shard_arg,
        experts=experts_arg,
    shell:
        "lens propose --model {input.model} --prep-dir {params.prep} --dataset {wildcards.dataset} "
        "--split {params.split} {params.shard} {params.experts} --out {output.p2d} "
        "--out3d {output.p3d} --min-score {params.p[min_score]} --stack-iou {params.p[stack_iou]} "
        "--score {params.score} --kernels {params.numerics[kernels]} --precision {params.numerics[precision]} "
        "--threads {threads} --no-progress 2> {log}"


rule gather_proposals:
    input:
        proposal_shards,
    output:
        "results/{exp}/{round}/proposals/{experts}/{dataset}/{split}{dim}.parquet",
    log:
        "results/logs/{exp}/gather_proposals/{round}.{experts}.{dataset}.{split}{dim}.log",
    benchmark:
        "results/benchmarks/gather_proposals/{exp}.{round}.{experts}.{dataset}.{split}{dim}.tsv"
    conda:
        ENV
    shell:
        "lens concat {input} --sort volume_id --out {output} 2> {log}"
