"""Per-rule wall times of the last pipeline run, from Snakemake's `benchmark:` files.

    scripts/in-env python benchmarks/pipeline_times.py [results/benchmarks]

Prints each rule's job count, summed and longest job seconds, and peak memory, plus the total job time
(the DAG's wall time is shorter where jobs ran in parallel: see Snakemake's log for it).
"""
import sys
from pathlib import Path

from lens_core.report.page import rule_times, times_by_rule


def main() -> None:
    bench = Path(sys.argv[1] if len(sys.argv) > 1 else "results/benchmarks")
    times = rule_times(bench)
    if times.empty:
        sys.exit(f"{bench}: no benchmark files (run the pipeline first)")
    by = times_by_rule(times)
    by["longest_job_s"] = times.groupby("rule")["seconds"].max().reindex(by["rule"]).to_numpy()
    print(by.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"\ntotal job time: {times['seconds'].sum():.1f} s over {len(times)} jobs")


if __name__ == "__main__":
    main()
