# Issue 5: missing-annotation mining on the DeepLesion-like training split (paper Sec. V), each strategy
# a rule with its own artifact, then round-2 training from the merged labels.

MINED = "results/mining"
DL_PREP = "results/prep/deeplesion"


rule build_tracklets:
    input:
        train="results/round1/proposals/deeplesion/train.parquet",
        val="results/round1/proposals/deeplesion/val.parquet",
    output:
        f"{MINED}/tracklets.parquet",
    log:
        "results/logs/build_tracklets.log",
    benchmark:
        "results/benchmarks/build_tracklets.tsv"
    conda:
        "../../envs/lens.yaml"
    params:
        m=config["mining"],
    shell:
        "lens build-tracklets --proposals {input.train} {input.val} --theta {params.m[theta]} "
        "--min-score {params.m[tracklet_min_score]} --out {output} 2> {log}"


rule mine_cross_slice:
    input:
        tracklets=f"{MINED}/tracklets.parquet",
        lesions=f"{DL_PREP}/lesions.parquet",
    output:
        f"{MINED}/cross_slice.parquet",
    log:
        "results/logs/mine_cross_slice.log",
    benchmark:
        "results/benchmarks/mine_cross_slice.tsv"
    conda:
        "../../envs/lens.yaml"
    params:
        m=config["mining"],
    shell:
        "lens mine-cross-slice --tracklets {input.tracklets} --lesions {input.lesions} --theta {params.m[theta]} "
        "--out {output} 2> {log}"


rule embed_lesions:
    input:
        tracklets=f"{MINED}/tracklets.parquet",
        prep=prep_tables(["deeplesion"]),
    output:
        emb=f"{MINED}/embeddings.h5",
        encoder=f"{MINED}/encoder.pt",
    log:
        "results/logs/embed_lesions.log",
    benchmark:
        "results/benchmarks/embed_lesions.tsv"
    conda:
        "../../envs/lens.yaml"
    threads: workflow.cores
    params:
        m=config["mining"],
        prep=parent_of("prep"),
    shell:
        "lens embed-lesions --prep-dir {params.prep} --tracklets {input.tracklets} --source {params.m[embedding]} "
        "--steps {params.m[encoder_steps]} --theta {params.m[theta]} --threads {threads} "
        "--encoder-out {output.encoder} --out {output.emb} 2> {log}"


rule calibrate_delta:
    input:
        tracklets=f"{MINED}/tracklets.parquet",
        emb=f"{MINED}/embeddings.h5",
        truth=f"{DL_PREP}/truth.parquet",
        prep=prep_tables(["deeplesion"]),
    output:
        delta=f"{MINED}/delta.json",
        curve=f"{MINED}/delta.parquet",
        plot=report(f"{MINED}/delta.png", caption="../report/delta.rst", category="Mining"),
    log:
        "results/logs/calibrate_delta.log",
    benchmark:
        "results/benchmarks/calibrate_delta.tsv"
    conda:
        "../../envs/lens.yaml"
    params:
        m=config["mining"],
        prep=parent_of("prep"),
    shell:
        "lens calibrate-delta --prep-dir {params.prep} --tracklets {input.tracklets} --embeddings {input.emb} "
        "--split val --min-precision {params.m[min_precision]} --fallback {params.m[delta_fallback]} "
        "--theta {params.m[theta]} --out {output.delta} 2> {log}"


rule mine_intra_patient:
    input:
        tracklets=f"{MINED}/tracklets.parquet",
        emb=f"{MINED}/embeddings.h5",
        delta=delta_input,
        prep=prep_tables(["deeplesion"]),
    output:
        f"{MINED}/intra_patient.parquet",
    log:
        "results/logs/mine_intra_patient.log",
    benchmark:
        "results/benchmarks/mine_intra_patient.tsv"
    conda:
        "../../envs/lens.yaml"
    params:
        m=config["mining"],
        delta=delta_arg,
        prep=parent_of("prep"),
    shell:
        "lens mine-intra-patient --prep-dir {params.prep} --tracklets {input.tracklets} --embeddings {input.emb} "
        "--delta {params.delta} --theta {params.m[theta]} --out {output} 2> {log}"


rule mine_cross_dataset:
    input:
        proposals="results/round1/proposals/deeplesion/train.parquet",
        volumes=f"{DL_PREP}/volumes.parquet",
        lesions=f"{DL_PREP}/lesions.parquet",
        mined=[f"{MINED}/cross_slice.parquet", f"{MINED}/intra_patient.parquet"],
    output:
        f"{MINED}/uncertain.parquet",
    log:
        "results/logs/mine_cross_dataset.log",
    benchmark:
        "results/benchmarks/mine_cross_dataset.tsv"
    conda:
        "../../envs/lens.yaml"
    params:
        m=config["mining"],
        experts=",".join(config["mining"]["single_type_experts"]),
    shell:
        "lens mine-cross-dataset --proposals {input.proposals} --volumes {input.volumes} "
        "--labels {input.lesions} {input.mined} --experts {params.experts} --sigma {params.m[sigma]} "
        "--out {output} 2> {log}"


rule merge_labels:
    input:
        lesions=f"{DL_PREP}/lesions.parquet",
        cross_slice=f"{MINED}/cross_slice.parquet",
        intra_patient=f"{MINED}/intra_patient.parquet",
        uncertain=f"{MINED}/uncertain.parquet",
    output:
        f"{MINED}/labels_round2.parquet",
    log:
        "results/logs/merge_labels.log",
    benchmark:
        "results/benchmarks/merge_labels.tsv"
    conda:
        "../../envs/lens.yaml"
    params:
        m=config["mining"],
    shell:
        "lens merge-labels --lesions {input.lesions} --mined {input.cross_slice} {input.intra_patient} "
        "--uncertain {input.uncertain} --theta {params.m[theta]} --out {output} 2> {log}"


rule audit_mining:
    input:
        cross_slice=f"{MINED}/cross_slice.parquet",
        intra_patient=f"{MINED}/intra_patient.parquet",
        uncertain=f"{MINED}/uncertain.parquet",
        truth=f"{DL_PREP}/truth.parquet",
        prep=prep_tables(["deeplesion"]),
    output:
        md=report(f"{MINED}/audit.md", caption="../report/audit.rst", category="Mining"),
        table=f"{MINED}/audit.parquet",
        montage=report(f"{MINED}/montage.png", caption="../report/montage.rst", category="Mining"),
    log:
        "results/logs/audit_mining.log",
    benchmark:
        "results/benchmarks/audit_mining.tsv"
    conda:
        "../../envs/lens.yaml"
    params:
        prep=parent_of("prep"),
    shell:
        "lens audit-mining --prep-dir {params.prep} --cross-slice {input.cross_slice} "
        "--intra-patient {input.intra_patient} --uncertain {input.uncertain} --out-md {output.md} "
        "--out-parquet {output.table} --montage {output.montage} 2> {log}"


rule train_lens_round2:
    input:
        prep=prep_tables(DATASETS),
        labels=f"{MINED}/labels_round2.parquet",
    output:
        model="results/round2/lens.pt",
        losses="results/round2/losses.parquet",
        curve=report("results/round2/losses.png", caption="../report/losses.rst", category="Training"),
    log:
        "results/logs/train_lens_round2.log",
    benchmark:
        "results/benchmarks/train_lens_round2.tsv"
    conda:
        "../../envs/lens.yaml"
    threads: workflow.cores
    shell:
        "lens train --prep-dir results/prep --labels {input.labels} --config config.yaml --config-section train "
        "--out results/round2 --resume --threads {threads} --no-progress 2> {log}"
