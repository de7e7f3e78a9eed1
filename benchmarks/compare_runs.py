"""Are two runs' results the same? Every Parquet table of run A's results folder against run B's.

    scripts/in-env python benchmarks/compare_runs.py BEFORE/results AFTER/results

For a refactor that must not change results: run the default DAG on a clean clone before and after, then
compare. A table counts as equal when every column of A is in B with equal values (B may add columns, e.g.
confidence intervals); tables only in A (e.g. shards that became temp()) are listed apart. Exits 1 when a
table differs.
"""
import sys
from pathlib import Path

import pandas as pd


def compare(a: Path, b: Path) -> tuple[list[str], list[str], list[str]]:
    equal, differ, only_a = [], [], []
    for f in sorted(a.rglob("*.parquet")):
        rel = f.relative_to(a)
        if not (b / rel).exists():
            only_a.append(str(rel))
            continue
        da, db = pd.read_parquet(f), pd.read_parquet(b / rel)
        same = set(da.columns) <= set(db.columns) and \
            da.reset_index(drop=True).equals(db[list(da.columns)].reset_index(drop=True))
        (equal if same else differ).append(f"{rel} ({len(da)} rows)")
    return equal, differ, only_a


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    equal, differ, only_a = compare(Path(argv[0]), Path(argv[1]))
    for name in differ:
        print(f"DIFFERS  {name}")
    print(f"{len(equal)} of {len(equal) + len(differ)} tables in both runs equal; {len(only_a)} only in the first")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
