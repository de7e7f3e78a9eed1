# Human review of the mined lesions: a self-contained page (`snakemake review`), whose exported verdicts
# `lens review-import` turns into results/{exp}/mining/review.parquet for merge_labels (mining.smk); and
# the review-value ablation (`snakemake review_value`): round 2 with a simulated reviewer on a share of
# the mined boxes, answering from the built-in corpus's hidden truth (the page never sees it).


rule review_boxes:
    input:
        cross_slice="results/{exp}/mining/cross_slice.parquet",
        intra_patient="results/{exp}/mining/intra_patient.parquet",
        uncertain="results/{exp}/mining/uncertain.parquet",
        volumes=f"{DL_PREP}/volumes.parquet",
    output:
        "results/{exp}/mining/review_boxes.parquet",
    log:
        "results/logs/{exp}/review_boxes.log",
    benchmark:
        "results/benchmarks/review_boxes/{exp}.tsv"
    conda:
        ENV
    shell:
        "lens review-boxes --cross-slice {input.cross_slice} --intra-patient {input.intra_patient} "
        "--uncertain {input.uncertain} --volumes {input.volumes} --out {output} 2> {log}"


rule review_page:
    input:
        boxes="results/{exp}/mining/review_boxes.parquet",
        tracklets="results/{exp}/mining/tracklets.parquet",
        proposals=round1_proposals("train"),
        prep=prep_tables(["deeplesion"]),
    output:
        directory("results/{exp}/mining/review"),
    log:
        "results/logs/{exp}/review_page.log",
    benchmark:
        "results/benchmarks/review_page/{exp}.tsv"
    conda:
        ENV
    params:
        r=settings("review", "uncertain_sample", "window", "seed"),
        prep=parent_of("prep"),
    shell:
        "lens review --boxes {input.boxes} --prep-dir {params.prep} --tracklets {input.tracklets} "
        "--proposals {input.proposals} --uncertain-sample {params.r[uncertain_sample]} --window {params.r[window]} "
        "--seed {params.r[seed]} --experiment {wildcards.exp} --out {output} 2> {log}"


# `snakemake review`: the main experiment's page
rule review:
    input:
        f"results/{MAIN}/mining/review",


# ------------------------------------------------------------------ review value (simulated reviewer)
rule review_simulate:
    input:
        boxes="results/{exp}/mining/review_boxes.parquet",
        truth=DL_TRUTH,
        prep=prep_tables(["deeplesion"]),
    output:
        "results/{exp}/mining/review_value/p{pct}/verdicts.json",
    log:
        "results/logs/{exp}/review_simulate.p{pct}.log",
    benchmark:
        "results/benchmarks/review_simulate/{exp}.p{pct}.tsv"
    conda:
        ENV
    params:
        seed=REVIEW_VALUE["seed"],
        prep=parent_of("prep"),
        fraction=review_fraction,
    shell:
        "lens review-simulate --boxes {input.boxes} --prep-dir {params.prep} --truth {input.truth} "
        "--fraction {params.fraction} "
        "--seed {params.seed} --out {output} 2> {log}"


rule review_import_simulated:
    input:
        verdicts="results/{exp}/mining/review_value/p{pct}/verdicts.json",
        boxes="results/{exp}/mining/review_boxes.parquet",
    output:
        "results/{exp}/mining/review_value/p{pct}/review.parquet",
    log:
        "results/logs/{exp}/review_import.p{pct}.log",
    benchmark:
        "results/benchmarks/review_import/{exp}.p{pct}.tsv"
    conda:
        ENV
    shell:
        "lens review-import {input.verdicts} --boxes {input.boxes} --out {output} 2> {log}"


use rule merge_labels as merge_labels_review_value with:
    input:
        lesions=f"{DL_PREP}/lesions.parquet",
        mined=mined_tables,
        uncertain=uncertain_table,
        review="results/{exp}/mining/review_value/p{pct}/review.parquet",
    output:
        "results/{exp}/mining/review_value/p{pct}/labels_round2.parquet",
    log:
        "results/logs/{exp}/merge_labels.p{pct}.log",
    benchmark:
        "results/benchmarks/merge_labels/{exp}.p{pct}.tsv"


# round 2 trained on a review-value row's labels: results/{exp}/round2rv{pct}/ (proposals as for any round)
use rule train_lens as train_lens_review_value with:
    input:
        unpack(round2_init),
        prep=prep_tables(DATASETS),
        labels="results/{exp}/mining/review_value/p{pct}/labels_round2.parquet",
    output:
        model="results/{exp}/round2rv{pct}/lens.pt",
        losses="results/{exp}/round2rv{pct}/losses.parquet",
        curve="results/{exp}/round2rv{pct}/losses.png",
    log:
        "results/logs/{exp}/train_lens_round2rv{pct}.log",
    benchmark:
        "results/benchmarks/train_lens_round2rv{pct}/{exp}.tsv"


# each row's round 2 scored as the main stages are (lens evaluate, LENS 3D protocol, the evaluation section's
# bootstrap), on the validation and the test split
use rule evaluate as evaluate_review_value with:
    input:
        pred=review_value_pred,
        truth=eval_truth,
        volumes="results/prep/deeplesion/volumes.parquet",
    output:
        froc="results/eval/{exp}/review_value/p{pct}/{split}/froc.parquet",
        summary="results/eval/{exp}/review_value/p{pct}/{split}/summary.parquet",
        md="results/eval/{exp}/review_value/p{pct}/{split}/summary.md",
        plot="results/eval/{exp}/review_value/p{pct}/{split}/froc.png",
        matches="results/eval/{exp}/review_value/p{pct}/{split}/matches.parquet",
    wildcard_constraints:
        split="val|test",
    log:
        "results/logs/{exp}/evaluate_review_value.p{pct}.{split}.log",
    benchmark:
        "results/benchmarks/evaluate_review_value/{exp}.p{pct}.{split}.tsv"
    params:
        label=review_value_label,
        score="score",
        split=split_of,


rule review_value_table:
    input:
        unpack(review_value_rows),
    output:
        table="results/eval/review_value/table.md",
        parquet="results/eval/review_value/table.parquet",
    log:
        "results/logs/review_value_table.log",
    benchmark:
        "results/benchmarks/review_value_table.tsv"
    conda:
        ENV
    params:
        rows=review_value_args,
    shell:
        "lens review-value {params.rows} --out {output.table} 2> {log}"


# `snakemake review_value`: the table of round 2 with 0 / 25 / 100 % of the mined boxes reviewed
rule review_value:
    input:
        rules.review_value_table.output,
