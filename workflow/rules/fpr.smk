# 3D false-positive reduction (paper Sec. IV-D) on round-2 proposals, and score fusion (Eq. 4).


rule train_fpr:
    input:
        proposals="results/{exp}/round2/proposals/fused/deeplesion/train.3d.parquet",
        labels="results/{exp}/mining/labels_round2.parquet",
        prep=prep_tables(["deeplesion"]),
        extra_proposals=fpr_extra_proposals,
        extra_labels=fpr_extra_labels,
    output:
        model="results/{exp}/fpr/fpr.pt",
        loss=report("results/{exp}/fpr/fpr_loss.png", caption="../report/fpr_loss.rst", category="Training"),
    log:
        "results/logs/{exp}/train_fpr.log",
    benchmark:
        "results/benchmarks/train_fpr/{exp}.tsv"
    conda:
        GPU_ENV
    threads: workflow.cores
    params:
        prep=parent_of("prep"),
        seed=exp_seed,
        f=settings("fpr", "preset", "epochs"),
        extra=fpr_extra_args,
    shell:
        "lens train-fpr --prep-dir {params.prep} --proposals3d {input.proposals} --labels {input.labels} "
        "{params.extra} --preset {params.f[preset]} --epochs {params.f[epochs]} --seed {params.seed} "
        "--threads {threads} --out {output.model} --resume --no-progress 2> {log}"


rule score_fpr:
    input:
        model="results/{exp}/fpr/fpr.pt",
        proposals="results/{exp}/round2/proposals/fused/deeplesion/{split}.3d.parquet",
        prep=prep_tables(["deeplesion"]),
    output:
        "results/{exp}/fpr/{split}.3d.parquet",
    wildcard_constraints:
        split="val|test",  # scored for evaluation: the validation and test splits
    log:
        "results/logs/{exp}/score_fpr.{split}.log",
    benchmark:
        "results/benchmarks/score_fpr/{exp}.{split}.tsv"
    conda:
        GPU_ENV
    threads: workflow.cores
    params:
        prep=parent_of("prep"),
    shell:
        "lens score-fpr --model {input.model} --prep-dir {params.prep} --proposals3d {input.proposals} "
        "--score fused --threads {threads} --out {output} 2> {log}"
