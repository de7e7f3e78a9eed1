# Issue 3: LENS training (round 1 on the datasets' own labels) and proposal generation.


rule train_lens:
    input:
        prep=prep_tables(DATASETS),
    output:
        model="results/round1/lens.pt",
        losses="results/round1/losses.parquet",
        curve=report("results/round1/losses.png", caption="../report/losses.rst", category="Training"),
    log:
        "results/logs/train_lens.log",
    benchmark:
        "results/benchmarks/train_lens.tsv"
    conda:
        "../../envs/lens.yaml"
    threads: workflow.cores
    shell:
        "lens train --prep-dir results/prep --config config.yaml --config-section train "
        "--out results/round1 --resume --threads {threads} --no-progress 2> {log}"


rule propose:
    input:
        model="results/{round}/lens.pt",
        prep=prep_tables(DATASETS),
    output:
        p2d="results/{round}/proposals/{dataset}/{split}/{shard}.parquet",
        p3d="results/{round}/proposals/{dataset}/{split}/{shard}.3d.parquet",
    log:
        "results/logs/propose/{round}.{dataset}.{split}.{shard}.log",
    benchmark:
        "results/benchmarks/propose/{round}.{dataset}.{split}.{shard}.tsv"
    conda:
        "../../envs/lens.yaml"
    threads: workflow.cores
    params:
        p=config["propose"],
    shell:
        "lens propose --model {input.model} --prep-dir results/prep --dataset {wildcards.dataset} "
        "--split {wildcards.split} --shard {wildcards.shard}/{params.p[shards]} --out {output.p2d} "
        "--out3d {output.p3d} --min-score {params.p[min_score]} --stack-iou {params.p[stack_iou]} "
        "--threads {threads} --no-progress 2> {log}"


rule gather_proposals:
    input:
        proposal_shards,
    output:
        "results/{round}/proposals/{dataset}/{split}{dim}.parquet",
    log:
        "results/logs/gather_proposals/{round}.{dataset}.{split}{dim}.log",
    benchmark:
        "results/benchmarks/gather_proposals/{round}.{dataset}.{split}{dim}.tsv"
    conda:
        "../../envs/lens.yaml"
    shell:
        "lens concat {input} --out {output} 2> {log}"
