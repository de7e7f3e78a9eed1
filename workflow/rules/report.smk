# The run's report (also: snakemake --report results/report.zip for the captioned Snakemake report).


rule html_report:
    input:
        eval=["results/eval/froc.png", "results/eval/table.md"],
        mining=mining_report_files,
        training=expand("results/{exp}/{round}/losses.png", exp=MAIN, round=["round1", "round2"]),
    output:
        "results/report.html",
    log:
        "results/logs/report.log",
    conda:
        ENV
    params:
        results=parent_of(0),
    shell:
        "lens report --results {params.results} --section Evaluation {input.eval} --section Mining {input.mining} "
        "--section Training {input.training} --out {output} 2> {log}"
