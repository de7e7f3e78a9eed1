"""Do two proposal tables (e.g. `lens propose --device cuda` and `--device cpu`, same model) agree?

    python benchmarks/compare_proposals.py A.parquet B.parquet [--iou 0.95]

Matches every proposal of A to the best-overlapping one of B on the same slice (volume_id, z) and prints
how many match (box IoU > --iou) and the largest fused-score difference among the matches.
"""
from __future__ import annotations

import argparse

import pandas as pd
import torch
from torchvision.ops import box_iou

XY = ["x1", "y1", "x2", "y2"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--iou", type=float, default=0.95)
    args = p.parse_args()
    a, b = pd.read_parquet(args.a), pd.read_parquet(args.b)
    keys = ["volume_id", "z"]
    by_slice = dict(tuple(b.groupby(keys)))
    matched, diffs = 0, []
    for key, ga in a.groupby(keys):
        gb = by_slice.get(key)
        if gb is None:
            continue
        best, j = box_iou(torch.tensor(ga[XY].to_numpy(float)), torch.tensor(gb[XY].to_numpy(float))).max(1)
        ok = (best > args.iou).numpy()
        matched += int(ok.sum())
        diffs += list(abs(ga["score"].to_numpy()[ok] - gb["score"].to_numpy()[j.numpy()[ok]]))
    print(f"{args.a}: {len(a)} proposals, {args.b}: {len(b)}; matched (IoU > {args.iou}): {matched} "
          f"({100 * matched / max(len(a), 1):.1f} %); max |score difference| "
          f"{max(diffs) if diffs else float('nan'):.4f}")


if __name__ == "__main__":
    main()
