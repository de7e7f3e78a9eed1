# Issue 2: the built-in corpus and preprocessing (paper Sec. VI-A).


rule synthesize_corpus:
    output:
        marker=f"{CORPUS}/corpus.json",
        truth=f"{CORPUS}/hidden_truth.parquet",
    log:
        "results/logs/synthesize_corpus.log",
    benchmark:
        "results/benchmarks/synthesize_corpus.tsv"
    conda:
        "../../envs/lens.yaml"
    params:
        out=parent_of("marker"),
    shell:
        "lens synthesize --out {params.out} --config config.yaml --no-progress 2> {log}"


rule preprocess:
    input:
        dataset_root,
    output:
        h5="results/prep_shards/{dataset}/{shard}/volumes.h5",
        volumes="results/prep_shards/{dataset}/{shard}/volumes.parquet",
        lesions="results/prep_shards/{dataset}/{shard}/lesions.parquet",
        truth="results/prep_shards/{dataset}/{shard}/truth.parquet",
        test3d="results/prep_shards/{dataset}/{shard}/test3d.parquet",
    log:
        "results/logs/preprocess/{dataset}.{shard}.log",
    benchmark:
        "results/benchmarks/preprocess/{dataset}.{shard}.tsv"
    conda:
        "../../envs/lens.yaml"
    params:
        fmt=dataset_format,
        root=dataset_folder,
        truth=truth_arg,
        p=config["preprocess"],
        nshards=SHARDS,
    group:
        "preprocess"
    shell:
        "lens preprocess --format {params.fmt} --root {params.root} --dataset {wildcards.dataset} "
        "--out results/prep_shards/{wildcards.dataset}/{wildcards.shard} --shard {wildcards.shard}/{params.nshards} "
        "--pixel-mm {params.p[pixel_mm]} --slice-mm {params.p[slice_mm]} --split-seed {params.p[split_seed]} "
        "--ln-diameter-mm {params.p[ln_diameter_mm]} --dl-box-pad-px {params.p[deeplesion_box_pad_px]} "
        "{params.truth} --no-progress 2> {log}"


rule gather_prep:
    input:
        prep_shard_dirs,
    output:
        h5="results/prep/{dataset}/volumes.h5",
        volumes="results/prep/{dataset}/volumes.parquet",
        lesions="results/prep/{dataset}/lesions.parquet",
        truth="results/prep/{dataset}/truth.parquet",
        test3d="results/prep/{dataset}/test3d.parquet",
    log:
        "results/logs/gather_prep/{dataset}.log",
    benchmark:
        "results/benchmarks/gather_prep/{dataset}.tsv"
    conda:
        "../../envs/lens.yaml"
    params:
        shards=shard_dirs_arg,
    shell:
        "lens gather-prep {params.shards} --out results/prep/{wildcards.dataset} 2> {log}"
