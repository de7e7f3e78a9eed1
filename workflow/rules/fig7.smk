# The paper's Fig. 7 (Sec. VI-D): each single-type dataset's CPM (LUNA16 protocol, its own expert;
# on the held-out cohort of fig7.heldout with the built-in corpus, else on its validation split) of round-1
# LENS trained on that dataset alone vs jointly with every dataset, on growing nested fractions of its
# training volumes: `snakemake --cores all fig7` (not part of the default target).
# Models live in results/fig7/<model>/ with <model> = <dataset>_alone_f<pct>_s<seed> or joint_f<pct>_s<seed>
# (fig7.joint: own -> <dataset>_joint_f<pct>_s<seed>); the joint model on all volumes is the main pipeline's
# round-1 model of that seed, which is reused instead of trained again.


# train_lens's command (and inputs) for a Fig. 7 model
use rule train_lens as fig7_train with:
    output:
        model="results/fig7/{model}/lens.pt",
        losses="results/fig7/{model}/losses.parquet",
        curve="results/fig7/{model}/losses.png",
    wildcard_constraints:
        model=r"([a-z0-9]+_)?(alone|joint)_f[0-9.]+_s\d+",
    log:
        "results/logs/fig7/{model}/train.log",
    benchmark:
        "results/benchmarks/fig7/train/{model}.tsv"
    params:
        overrides=fig7_train_overrides,


# synthesize_corpus's command for the held-out cohort: its own seed and case counts (fig7_heldout_args)
use rule synthesize_corpus as fig7_heldout_corpus with:
    output:
        marker="results/fig7/heldout/corpus/corpus.json",
        truth="results/fig7/heldout/corpus/hidden_truth.parquet",
    log:
        "results/logs/fig7/heldout_corpus.log",
    benchmark:
        "results/benchmarks/fig7/heldout_corpus.tsv"
    params:
        out=parent_of("marker"),
        corpus=settings_json("corpus", drop=("builtin", "root", "seed")),
        args=fig7_heldout_args,


# preprocess's command for the held-out cohort: one job per dataset (no shards), kept (nothing gathers it)
use rule preprocess as fig7_heldout_prep with:
    input:
        marker=rules.fig7_heldout_corpus.output.marker,
        truth=rules.fig7_heldout_corpus.output.truth,
    output:
        h5="results/fig7/heldout/prep/{dataset}/volumes.h5",
        volumes="results/fig7/heldout/prep/{dataset}/volumes.parquet",
        lesions="results/fig7/heldout/prep/{dataset}/lesions.parquet",
        test3d="results/fig7/heldout/prep/{dataset}/test3d.parquet",
        truth="results/truth/fig7_heldout/{dataset}.parquet",  # apart from the folder fig7_propose gets
    log:
        "results/logs/fig7/heldout_prep.{dataset}.log",
    benchmark:
        "results/benchmarks/fig7/heldout_prep/{dataset}.tsv"
    params:
        fmt=dataset_format,
        root=fig7_heldout_dataset_root,
        truth=fig7_heldout_truth_arg,
        out=parent_of("h5"),
        shard="",
    group:
        None


# propose's command for a Fig. 7 model: {evalset} "heldout" (the held-out cohort, every scan) or "val"
# (the corpus's validation split), scored by the dataset's own expert; not sharded
use rule propose as fig7_propose with:
    input:
        model=fig7_model_file,
        prep=fig7_eval_prep,
    output:
        p2d="results/fig7/{model}/proposals/{dataset}/{evalset}.parquet",
        p3d="results/fig7/{model}/proposals/{dataset}/{evalset}.3d.parquet",
    wildcard_constraints:
        model=r"([a-z0-9]+_)?(alone|joint)_f[0-9.]+_s\d+",
        evalset="heldout|val",
    log:
        "results/logs/fig7/{model}/propose.{dataset}.{evalset}.log",
    benchmark:
        "results/benchmarks/fig7/propose/{model}.{dataset}.{evalset}.tsv"
    params:
        p=settings("propose", "min_score", "stack_iou"),
        prep=prep_root,
        split=fig7_propose_split,
        shard="",
        experts=fig7_experts_arg,


rule fig7_evaluate:
    input:
        pred="results/fig7/{model}/proposals/{dataset}/{evalset}.3d.parquet",
        prep=fig7_eval_prep,
    output:
        froc="results/eval/fig7/{model}/{dataset}/{evalset}/froc.parquet",
        summary="results/eval/fig7/{model}/{dataset}/{evalset}/summary.parquet",
        md="results/eval/fig7/{model}/{dataset}/{evalset}/summary.md",
        plot="results/eval/fig7/{model}/{dataset}/{evalset}/froc.png",
        matches="results/eval/fig7/{model}/{dataset}/{evalset}/matches.parquet",
    wildcard_constraints:
        model=r"([a-z0-9]+_)?(alone|joint)_f[0-9.]+_s\d+",
        evalset="heldout|val",
    log:
        "results/logs/fig7/{model}/evaluate.{dataset}.{evalset}.log",
    benchmark:
        "results/benchmarks/fig7/evaluate/{model}.{dataset}.{evalset}.tsv"
    conda:
        ENV
    threads: 1
    params:
        e=settings("evaluation", "fp_rates", "bootstrap", "bootstrap_seed"),
        out=parent_of("froc"),
        label=fig7_run_label,
        truth=fig7_eval_lesions,
        volumes=fig7_eval_volumes,
        split=fig7_eval_split_arg,
    shell:
        "lens evaluate --pred {input.pred} --truth {params.truth} --protocol luna --name {params.label:q} "
        "--units {params.volumes} --volumes {params.volumes} {params.split} --fp-rates {params.e[fp_rates]} "
        "--bootstrap {params.e[bootstrap]} --seed {params.e[bootstrap_seed]} --out {params.out} 2> {log}"


rule fig7_table:
    input:
        summaries=fig7_summaries,
        matches=fig7_matches,
    output:
        table=report("results/eval/fig7/table.md", caption="../report/fig7.rst", category="Fig. 7"),
        parquet="results/eval/fig7/table.parquet",
        plot=report("results/eval/fig7/fig7.png", caption="../report/fig7.rst", category="Fig. 7"),
    log:
        "results/logs/fig7_table.log",
    benchmark:
        "results/benchmarks/fig7_table.tsv"
    conda:
        ENV
    threads: 1
    params:
        spec=fig7_spec_arg,
        scored_on=fig7_eval_name,
        out=parent_of("table"),
        e=settings("evaluation", "bootstrap", "bootstrap_seed"),
    shell:
        "lens fig7-table --spec {params.spec:q} --scored-on {params.scored_on:q} --out {params.out} "
        "--bootstrap {params.e[bootstrap]} --seed {params.e[bootstrap_seed]} 2> {log}"


rule fig7:
    input:
        rules.fig7_table.output,
