"""The mined boxes a reviewer can judge, each with a stable id.

Ids are :func:`lens_core.mining.verdicts.mined_box_ids`. ``review_boxes.parquet`` lists
every mined box with its id and its image size: the contract between the page, ``lens review-import``,
the simulated reviewer and ``merge_labels``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from lens_core.mining.verdicts import mined_box_ids

# strategies in the order the page shows them, and the label_kind each one's table holds
STRATEGIES = ("cross_slice", "intra_patient", "uncertain")

REVIEW_BOXES_SCHEMA = pa.schema([
    ("box_id", pa.string()), ("strategy", pa.string()), ("source_rule", pa.string()),
    ("volume_id", pa.string()), ("patient_id", pa.string()), ("dataset", pa.string()),
    ("z", pa.int64()), ("x1", pa.float64()), ("y1", pa.float64()), ("x2", pa.float64()), ("y2", pa.float64()),
    ("score", pa.float64()), ("key_iou", pa.float64()), ("embedding_distance", pa.float64()),
    ("tracklet_id", pa.int64()), ("lesion_id", pa.string()), ("lesion_type", pa.string()),
    ("width", pa.int64()), ("height", pa.int64()), ("n_slices", pa.int64()),
])


def mined_boxes(tables: Mapping[str, pd.DataFrame], volumes: pd.DataFrame) -> pd.DataFrame:
    """Every box of the mining tables (``{strategy: table}``) as REVIEW_BOXES_SCHEMA rows, with its id and
    the size of the image it lies on (from volumes.parquet). Raises ValueError naming the strategy and
    row of a box on a volume that volumes.parquet does not list."""
    unknown = set(tables) - set(STRATEGIES)
    if unknown:
        raise ValueError(f"unknown mining strategies {sorted(unknown)} (known: {list(STRATEGIES)})")
    # the volume's own dataset (uncertain boxes carry none of their own): what the page filters by
    size = volumes.drop_duplicates("volume_id").set_index("volume_id")[
        ["width", "height", "n_slices"] + (["dataset"] if "dataset" in volumes.columns else [])]
    frames = []
    for strategy in STRATEGIES:
        t = tables.get(strategy)
        if t is None or not len(t):
            continue
        t = t.reset_index(drop=True)
        bad = ~t["volume_id"].isin(size.index)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{strategy} row {i}: volume {t['volume_id'].iloc[i]!r} is not in volumes.parquet")
        dims = size.loc[t["volume_id"]].reset_index(drop=True)
        out = pd.DataFrame({"box_id": mined_box_ids(t), "strategy": strategy})
        for f in REVIEW_BOXES_SCHEMA:
            if f.name in out.columns:
                continue
            src = dims if f.name in dims.columns else t
            out[f.name] = src[f.name].to_numpy() if f.name in src.columns else (
                -1 if pa.types.is_integer(f.type) else np.nan if pa.types.is_floating(f.type) else "")
        frames.append(out)
    if not frames:
        return pd.DataFrame({f.name: pd.Series(dtype=f.type.to_pandas_dtype() if not pa.types.is_string(f.type)
                                               else object) for f in REVIEW_BOXES_SCHEMA})
    out = pd.concat(frames, ignore_index=True)
    dup = out["box_id"].duplicated()
    if dup.any():  # the same box mined by two strategies would make a verdict ambiguous
        raise ValueError(f"box id {out.loc[dup, 'box_id'].iloc[0]} occurs in two mining tables")
    return out
