"""Verdicts: the JSON the review page downloads, read into ``review.parquet`` (whose table,
:mod:`lens_core.mining.verdicts`, is what ``merge_labels`` reads).

The JSON (``format: lens-review-verdicts``) holds one row per card: ``box_id``, ``decision`` (``accept``,
``reject``, ``fix`` or null = not reviewed), ``box`` (the corrected ``[x1, y1, x2, y2]`` of a fix, in the
pipeline's pixel coordinates, docs/artifacts.md), ``reviewer`` and ``time`` (ISO 8601). ``review.parquet``
keeps the decided rows only (an unreviewed box is treated as without review).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from lens_core.mining.verdicts import DECISIONS, REVIEW_SCHEMA, conform_review

FORMAT = "lens-review-verdicts"


def read_verdicts_json(path: str | Path, boxes: pd.DataFrame) -> pd.DataFrame:
    """The decided verdicts of a page export as REVIEW_SCHEMA rows, checked against ``boxes``
    (review_boxes.parquet). Every problem is a ValueError that names ``path`` and the row: a file that
    is not a verdict export, an unknown box id, a box id given twice, an unknown decision, a fix without
    a box, a box that is empty or outside its image, a time that is not ISO 8601."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON verdict file ({e})") from None
    except RecursionError:  # a verdict file is two levels deep; this one nests past Python's stack
        raise ValueError(f"{path}: not a JSON verdict file (nested too deeply)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("verdicts"), list):
        raise ValueError(f"{path}: not a review page export (want an object with format {FORMAT!r} and a "
                         f"'verdicts' list)")
    known = boxes.set_index("box_id")
    rows, seen = [], set()
    for i, v in enumerate(doc["verdicts"]):
        where = f"{path}: row {i}"
        if not isinstance(v, dict) or not isinstance(v.get("box_id"), str):
            raise ValueError(f"{where}: a verdict is an object with a string 'box_id'")
        bid = v["box_id"]
        where = f"{where} (box {bid})"
        if bid not in known.index:
            raise ValueError(f"{where}: unknown box id: no mined box of this run has it (verdicts of another "
                             f"mining run?)")
        if bid in seen:
            raise ValueError(f"{where}: box id given twice")
        seen.add(bid)
        decision = v.get("decision")
        if decision is None:
            continue
        if decision not in DECISIONS:
            raise ValueError(f"{where}: decision {decision!r} is not one of {list(DECISIONS)} or null")
        b = known.loc[bid]
        box = [math.nan] * 4
        if decision == "fix":
            box = _check_box(v.get("box"), int(b["width"]), int(b["height"]), str(b["volume_id"]), where)
        time = v.get("time") or ""
        try:
            datetime.fromisoformat(str(time).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{where}: time {time!r} is not an ISO 8601 date-time") from None
        rows.append({"box_id": bid, "strategy": str(b["strategy"]), "volume_id": str(b["volume_id"]),
                     "z": int(b["z"]), "decision": decision, "x1": box[0], "y1": box[1], "x2": box[2],
                     "y2": box[3], "reviewer": str(v.get("reviewer") or ""), "time": str(time)})
    return conform_review(pd.DataFrame(rows, columns=[f.name for f in REVIEW_SCHEMA]))


def _check_box(box, width: int, height: int, volume: str, where: str) -> list[float]:
    if not isinstance(box, list) or len(box) != 4:
        raise ValueError(f"{where}: a fix needs 'box': [x1, y1, x2, y2], got {box!r}")
    # JSON numbers only: float() would take "12" and True (a hand-edited or foreign file)
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in box):
        raise ValueError(f"{where}: box {box!r} is not four numbers")
    x1, y1, x2, y2 = (float(c) for c in box)
    if not all(np.isfinite([x1, y1, x2, y2])) or not (x2 > x1 and y2 > y1):
        raise ValueError(f"{where}: box {box!r} is empty or not finite (need x1 < x2, y1 < y2)")
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise ValueError(f"{where}: box {box!r} lies outside the {width} x {height} image of volume {volume}")
    return [x1, y1, x2, y2]
