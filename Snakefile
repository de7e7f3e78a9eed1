# LENS pipeline: universal lesion detection from heterogeneous, partially labeled CT datasets.
# The DAG is described in docs/ and README.md; every rule calls one `lens <step>` command.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/experiment_common.smk"
include: "workflow/rules/eval_common.smk"
include: "workflow/rules/review_common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/detector.smk"
include: "workflow/rules/mining.smk"
include: "workflow/rules/fpr.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/review.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/fig7_common.smk"
include: "workflow/rules/fig7.smk"
include: "workflow/rules/fig5_common.smk"
include: "workflow/rules/fig5.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/report.html",
        validation_precision,  # mining precision on the validation split (no hidden truth), where it has 3D truth
    default_target: True


# The experiments table: every experiment and Fig. 7 model the config declares, resolved as the rules look them
# up (workflow/experiment_table.py): `snakemake --cores 1 experiments`.
rule experiments:
    output:
        "results/experiments.tsv",
    log:
        "results/logs/experiments.log",
    params:
        table=experiments_json,  # a changed declaration reruns the rule (Snakemake's params trigger)
    localrule: True
    run:
        experiment_table.write_tsv(config, output[0], log[0])
