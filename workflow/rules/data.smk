# The built-in corpus and preprocessing (paper Sec. VI-A): one job per dataset shard, then a gather.


rule synthesize_corpus:
    output:
        marker=f"{CORPUS}/corpus.json",
        truth=f"{CORPUS}/hidden_truth.parquet",
    log:
        "results/logs/synthesize_corpus.log",
    benchmark:
        "results/benchmarks/synthesize_corpus.tsv"
    conda:
        ENV
    params:
        out=parent_of("marker"),
        corpus=settings_json("corpus", drop=("builtin", "root")),
        args="",
    shell:
        "lens synthesize --out {params.out} --config-json {params.corpus} {params.args} --no-progress 2> {log}"


rule preprocess:
    input:
        dataset_root,
    # gather_prep copies the shards into results/prep: stored once
    output:
        h5=temp("results/prep_shards/{dataset}/{shard}/volumes.h5"),
        volumes=temp("results/prep_shards/{dataset}/{shard}/volumes.parquet"),
        lesions=temp("results/prep_shards/{dataset}/{shard}/lesions.parquet"),
        truth=temp("results/prep_shards/{dataset}/{shard}/truth.parquet"),
        test3d=temp("results/prep_shards/{dataset}/{shard}/test3d.parquet"),
    log:
        "results/logs/preprocess/{dataset}.{shard}.log",
    benchmark:
        "results/benchmarks/preprocess/{dataset}.{shard}.tsv"
    conda:
        ENV
    params:
        fmt=dataset_format,
        root=dataset_folder,
        truth=truth_arg,
        out=parent_of("h5"),
        shard=shard_arg,
        p=settings("preprocess", "pixel_mm", "slice_mm", "split_seed", "ln_diameter_mm", "deeplesion_box_pad_px", "storage"),
    group:
        "preprocess"
    shell:
        "lens preprocess --format {params.fmt} --root {params.root} --dataset {wildcards.dataset} "
        "--out {params.out} {params.shard} "
        "--pixel-mm {params.p[pixel_mm]} --slice-mm {params.p[slice_mm]} --storage {params.p[storage]} "
        "--split-seed {params.p[split_seed]} "
        "--ln-diameter-mm {params.p[ln_diameter_mm]} --dl-box-pad-px {params.p[deeplesion_box_pad_px]} "
        "{params.truth} --no-progress 2> {log}"


rule gather_prep:
    input:
        prep_shard_files,
    output:
        h5="results/prep/{dataset}/volumes.h5",
        volumes="results/prep/{dataset}/volumes.parquet",
        lesions="results/prep/{dataset}/lesions.parquet",
        test3d="results/prep/{dataset}/test3d.parquet",
        # the hidden truth apart from the folder every later rule gets (only evaluation and audits name it)
        truth="results/truth/{dataset}.parquet",
    log:
        "results/logs/gather_prep/{dataset}.log",
    benchmark:
        "results/benchmarks/gather_prep/{dataset}.tsv"
    conda:
        ENV
    params:
        shards=shard_dirs_arg,
        out=parent_of("h5"),
    shell:
        "lens gather-prep {params.shards} --out {params.out} --truth-out {output.truth} 2> {log}"
