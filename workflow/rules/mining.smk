# Missing-annotation mining on the DeepLesion-like training split (paper Sec. V), each strategy
# a rule with its own artifact, then round-2 training from the merged labels. Per experiment {exp}:
# its mining settings are config's `mining` with the experiment's `mining:` overrides (exp_mining), and
# it mines its own round-1 proposals or those of its `mining_from` experiment (round1_proposals).
# No rule here reads the hidden truth except the audits (audit_delta, audit_mining), whose outputs only
# the report reads (tests/test_truth_dag.py).

DL_PREP = "results/prep/deeplesion"
DL_TRUTH = "results/truth/deeplesion.parquet"  # the hidden truth, kept apart from DL_PREP (gather_prep)


rule build_tracklets:
    input:
        train=round1_proposals("train"),
        val=round1_proposals("val"),
    output:
        "results/{exp}/mining/tracklets.parquet",
    log:
        "results/logs/{exp}/build_tracklets.log",
    benchmark:
        "results/benchmarks/build_tracklets/{exp}.tsv"
    conda:
        ENV
    params:
        m=mining_settings("theta", "tracklet_min_score"),
    shell:
        "lens build-tracklets --proposals {input.train} {input.val} --theta {params.m[theta]} "
        "--min-score {params.m[tracklet_min_score]} --out {output} 2> {log}"


rule mine_cross_slice:
    input:
        tracklets="results/{exp}/mining/tracklets.parquet",
        lesions=f"{DL_PREP}/lesions.parquet",
        volumes=f"{DL_PREP}/volumes.parquet",
    output:
        "results/{exp}/mining/cross_slice.parquet",
    log:
        "results/logs/{exp}/mine_cross_slice.log",
    benchmark:
        "results/benchmarks/mine_cross_slice/{exp}.tsv"
    conda:
        ENV
    params:
        m=mining_settings("theta"),
        extent=extent_arg,
    shell:
        "lens mine-cross-slice --tracklets {input.tracklets} --lesions {input.lesions} --volumes {input.volumes} "
        "--theta {params.m[theta]} {params.extent} --out {output} 2> {log}"


rule embed_lesions:
    input:
        tracklets="results/{exp}/mining/tracklets.parquet",
        prep=prep_tables(["deeplesion"]),
    output:
        emb="results/{exp}/mining/embeddings.h5",
        encoder="results/{exp}/mining/encoder.pt",
    log:
        "results/logs/{exp}/embed_lesions.log",
    benchmark:
        "results/benchmarks/embed_lesions/{exp}.tsv"
    conda:
        ENV
    threads: workflow.cores
    params:
        m=mining_settings("embedding", "encoder_steps", "theta"),
        prep=parent_of("prep"),
    shell:
        "lens embed-lesions --prep-dir {params.prep} --tracklets {input.tracklets} --source {params.m[embedding]} "
        "--steps {params.m[encoder_steps]} --theta {params.m[theta]} --threads {threads} "
        "--encoder-out {output.encoder} --out {output.emb} --resume --no-progress 2> {log}"


# An audit that decides nothing: precision and recall of intra-patient matching against delta on the
# validation split (same hidden-truth lesion = correct), the configured delta marked; read by the report only.
rule audit_delta:
    input:
        tracklets="results/{exp}/mining/tracklets.parquet",
        emb="results/{exp}/mining/embeddings.h5",
        truth=DL_TRUTH,
        prep=prep_tables(["deeplesion"]),
    output:
        curve="results/{exp}/mining/delta_audit.parquet",
        plot=report("results/{exp}/mining/delta_audit.png", caption="../report/delta.rst", category="Mining"),
    log:
        "results/logs/{exp}/audit_delta.log",
    benchmark:
        "results/benchmarks/audit_delta/{exp}.tsv"
    conda:
        ENV
    params:
        m=mining_settings("delta", "theta"),
        prep=parent_of("prep"),
    shell:
        "lens audit-delta --prep-dir {params.prep} --truth {input.truth} --tracklets {input.tracklets} --embeddings {input.emb} "
        "--split val --delta {params.m[delta]} --theta {params.m[theta]} --out {output.curve} "
        "--plot {output.plot} 2> {log}"


rule mine_intra_patient:
    input:
        unpack(embedding_inputs),  # the source experiment's, when they would be the same (embedding_source)
        prep=prep_tables(["deeplesion"]),
    output:
        "results/{exp}/mining/intra_patient.parquet",
    log:
        "results/logs/{exp}/mine_intra_patient.log",
    benchmark:
        "results/benchmarks/mine_intra_patient/{exp}.tsv"
    conda:
        ENV
    params:
        m=mining_settings("delta", "theta"),
        prep=parent_of("prep"),
    shell:
        "lens mine-intra-patient --prep-dir {params.prep} --tracklets {input.tracklets} --embeddings {input.emb} "
        "--delta {params.m[delta]} --theta {params.m[theta]} --out {output} 2> {log}"


rule mine_cross_dataset:
    input:
        proposals=round1_proposals("train"),
        volumes=f"{DL_PREP}/volumes.parquet",
        lesions=f"{DL_PREP}/lesions.parquet",
        mined=mined_tables,  # the strategies that are on: their boxes are labels, not uncertain
    output:
        "results/{exp}/mining/uncertain.parquet",
    log:
        "results/logs/{exp}/mine_cross_dataset.log",
    benchmark:
        "results/benchmarks/mine_cross_dataset/{exp}.tsv"
    conda:
        ENV
    params:
        m=mining_settings("sigma"),
        experts=single_type_experts,
    shell:
        "lens mine-cross-dataset --proposals {input.proposals} --volumes {input.volumes} "
        "--labels {input.lesions} {input.mined} --experts {params.experts} --sigma {params.m[sigma]} "
        "--out {output} 2> {log}"


rule merge_labels:
    input:
        lesions=f"{DL_PREP}/lesions.parquet",
        # only the experiment's strategies that are on (Table IV switches them off one by one)
        mined=mined_tables,
        uncertain=uncertain_table,
        review=review_verdicts,  # the reviewer's verdicts, when imported (review_common.smk)
    output:
        "results/{exp}/mining/labels_round2.parquet",
    log:
        "results/logs/{exp}/merge_labels.log",
    benchmark:
        "results/benchmarks/merge_labels/{exp}.tsv"
    conda:
        ENV
    params:
        m=mining_settings("theta"),
        review=review_arg,
        uncertain=uncertain_arg,
    shell:
        "lens merge-labels --lesions {input.lesions} --mined {input.mined} "
        "{params.uncertain} --theta {params.m[theta]} {params.review} --out {output} 2> {log}"


rule audit_mining:
    input:
        cross_slice="results/{exp}/mining/cross_slice.parquet",
        intra_patient="results/{exp}/mining/intra_patient.parquet",
        uncertain="results/{exp}/mining/uncertain.parquet",
        truth=DL_TRUTH,
        prep=prep_tables(["deeplesion"]),
    output:
        md=report("results/{exp}/mining/audit.md", caption="../report/audit.rst", category="Mining"),
        table="results/{exp}/mining/audit.parquet",
        montage=report("results/{exp}/mining/montage.png", caption="../report/montage.rst", category="Mining"),
    log:
        "results/logs/{exp}/audit_mining.log",
    benchmark:
        "results/benchmarks/audit_mining/{exp}.tsv"
    conda:
        ENV
    params:
        prep=parent_of("prep"),
    shell:
        "lens audit-mining --prep-dir {params.prep} --truth {input.truth} --cross-slice {input.cross_slice} "
        "--intra-patient {input.intra_patient} --uncertain {input.uncertain} --out-md {output.md} "
        "--out-parquet {output.table} --montage {output.montage} 2> {log}"


# round 2 (and round2u, uncertain boxes as lesions: train_overrides): train_lens on the merged labels
use rule train_lens as train_lens_round2 with:
    input:
        unpack(round2_init),
        prep=prep_tables(DATASETS),
        labels="results/{exp}/mining/labels_round2.parquet",
    wildcard_constraints:
        round="round2|round2u",


# Mining precision without the truth (issue 21): the validation patients mined as if they were training data
# (the same tracklets, embeddings and settings), each mined box scored against the split's fully annotated 3D
# boxes (test3d.parquet; on real DeepLesion the manual 3D set's validation sub-volumes). A measurement printed
# beside the audit's hidden-truth precision; nothing is chosen on it.
rule mining_precision_val:
    input:
        tracklets="results/{exp}/mining/tracklets.parquet",
        emb="results/{exp}/mining/embeddings.h5",
        prep=prep_tables(["deeplesion"]),
    output:
        cross_slice=temp("results/{exp}/mining/val/cross_slice.parquet"),
        intra_patient=temp("results/{exp}/mining/val/intra_patient.parquet"),
        md="results/{exp}/mining/val_precision.md",
        table="results/{exp}/mining/val_precision.parquet",
    log:
        "results/logs/{exp}/mining_precision_val.log",
    benchmark:
        "results/benchmarks/mining_precision_val/{exp}.tsv"
    conda:
        ENV
    params:
        m=mining_settings("delta", "theta"),
        extent=extent_arg,
        prep=parent_of("prep"),
    shell:
        "(lens mine-cross-slice --split val --tracklets {input.tracklets} --lesions {params.prep}/lesions.parquet "
        "--volumes {params.prep}/volumes.parquet --theta {params.m[theta]} {params.extent} --out {output.cross_slice} && "
        "lens mine-intra-patient --split val --prep-dir {params.prep} --tracklets {input.tracklets} "
        "--embeddings {input.emb} --delta {params.m[delta]} --theta {params.m[theta]} --out {output.intra_patient} && "
        "lens mining-precision --prep-dir {params.prep} --cross-slice {output.cross_slice} "
        "--intra-patient {output.intra_patient} --split val --out-md {output.md} --out-parquet {output.table}) 2> {log}"
