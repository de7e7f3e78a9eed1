"""`lens review`'s page: ``index.html`` (every script and style inline, the page's summary), ``data/`` (the
cards' records, CHUNK to a file, loaded one at a time as the reviewer moves on) and ``img/`` (the cards' PNG
crops), written as one folder that replaces the old one only when complete. It needs no server and no
network: it opens from the file system and through any static server alike. Real DeepLesion mines tens of
thousands of boxes: the first view loads index.html, one data file and one card's images, whatever the count."""

from __future__ import annotations

import hashlib
import html
import json
import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from lens_core.io import atomic_folder
from lens_core.review.cards import choose_cards, expert_scores, render_cards, source_annotations

STATIC = Path(__file__).with_name("static")
CHUNK = 500  # cards per data file (~0.5 MB)

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>LENS review · {experiment}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
{css}
</style>
</head>
<body>
<header>
  <h1>Mined lesions · {experiment}</h1>
  <span id="progress"></span>
  <label>reviewer <input id="reviewer" size="12" placeholder="your name"></label>
  <button id="export" title="download the verdicts as JSON (key e)">Export verdicts</button>
</header>
<nav>
  <label>strategy <select id="f-strategy"><option value="">all</option></select></label>
  <label>dataset <select id="f-dataset"><option value="">all</option></select></label>
  <label>fused score &ge; <input id="f-score" type="number" min="0" max="1" step="0.05" size="5"></label>
  <label><input id="f-undecided" type="checkbox"> undecided only</label>
  <span id="showing"></span>
</nav>
<main>
  <section id="card"></section>
  <aside>
    <p><kbd>a</kbd>accept: a lesion, the box fits</p>
    <p><kbd>r</kbd>reject: not a lesion</p>
    <p><kbd>f</kbd>lesion, wrong box: then drag the box on the large image</p>
    <p><kbd>u</kbd>clear this card's verdict</p>
    <p><kbd>j</kbd><kbd>&rarr;</kbd>next &nbsp; <kbd>k</kbd><kbd>&larr;</kbd>previous</p>
    <p><kbd>n</kbd>next undecided &nbsp; <kbd>e</kbd>export</p>
    <p><kbd>[</kbd><kbd>]</kbd>previous / next part of the cards (each part loads as you reach it)</p>
    <p style="color:#9aa0a6">Orange: the mined box. Green: annotations. Yellow dashed: the tracklet on neighbouring
    slices. Blue: your fixed box. Verdicts stay in this browser until you export them
    (<code>lens review-import</code>).</p>
    <p style="color:#9aa0a6">{summary}</p>
  </aside>
</main>
<div id="list"></div>
<div id="toast"></div>
<script id="lens-data" type="application/json">{data}</script>
<!-- the cards' records: data/cards-NNNNN.js, loaded by review.js one file at a time -->
<script>
{js}
</script>
</body>
</html>
"""


def _num(v) -> float | None:
    v = float(v)
    return round(v, 4) if math.isfinite(v) else None


def card_records(cards: pd.DataFrame, experts: list[dict], geometry: list[dict]) -> list[dict]:
    out = []
    for c, e, g in zip(cards.itertuples(index=False), experts, geometry):
        out.append({"id": str(c.box_id), "strategy": str(c.strategy), "source_rule": str(c.source_rule),
                    "volume_id": str(c.volume_id), "patient_id": str(c.patient_id), "dataset": str(c.dataset),
                    "lesion_type": str(c.lesion_type), "z": int(c.z),
                    "box": [round(float(getattr(c, k)), 2) for k in ("x1", "y1", "x2", "y2")],
                    "width": int(c.width), "height": int(c.height), "score": _num(c.score),
                    "key_iou": _num(c.key_iou), "embedding_distance": _num(c.embedding_distance),
                    "experts": e, **g})
    return out


def chunk_file(k: int) -> str:
    """The data file of chunk ``k`` (review.js builds the same name)."""
    return f"data/cards-{k:05d}.js"


def chunk_summary(part: list[dict]) -> dict:
    """What the filters need to skip a chunk unread: its cards per strategy and dataset, its best score."""
    scores = [c["score"] for c in part if c["score"] is not None]
    return {"n": len(part), "strategy": dict(Counter(c["strategy"] for c in part)),
            "dataset": dict(Counter(c["dataset"] for c in part)), "max_score": max(scores) if scores else None}


def write_page(folder: Path, records: list[dict], page: dict, summary: str, chunk: int = CHUNK) -> None:
    """index.html and data/ of a page of ``records`` (card_records) into ``folder`` (the img/ files are the
    caller's): the records CHUNK to a data file, index.html with the page's metadata and each chunk's summary."""
    parts = [records[i:i + chunk] for i in range(0, len(records), chunk)] or [[]]
    (folder / "data").mkdir()
    for k, part in enumerate(parts):
        js = json.dumps(part, separators=(",", ":"), allow_nan=False)
        (folder / chunk_file(k)).write_text(f"window.lensReviewChunk({k},{js});\n", encoding="utf-8")
    data = json.dumps({"page": {**page, "chunk_size": chunk, "chunks": len(parts)},
                       "index": [chunk_summary(p) for p in parts]}, separators=(",", ":"), allow_nan=False)
    text = TEMPLATE.format(experiment=html.escape(page["experiment"]), css=(STATIC / "review.css").read_text(),
                           js=(STATIC / "review.js").read_text(), summary=html.escape(summary),
                           data=data.replace("</", "<\\/"))  # a "</script>" inside the data must not end it
    (folder / "index.html").write_text(text, encoding="utf-8")


def build_page(boxes: pd.DataFrame, prep_dir: Path, out_dir: Path, *, experiment: str = "lens",
               tracklets: pd.DataFrame | None = None, proposals: pd.DataFrame | None = None,
               uncertain_sample: int | None = 100, window: int = 2, seed: int = 0) -> dict:
    """Write the review page for ``boxes`` (review_boxes.parquet) into ``out_dir`` (replaced whole, only
    once complete). ``prep_dir``: the mined dataset's preprocessed folder (volumes.h5, lesions.parquet).
    Returns a summary: cards per strategy, files, bytes."""
    prep_dir, out_dir = Path(prep_dir), Path(out_dir)
    lesions = pd.read_parquet(prep_dir / "lesions.parquet")
    cards = choose_cards(boxes, uncertain_sample, seed)
    sources = source_annotations(cards, lesions)
    # the page and its images are one unit: a temporary folder replaces out_dir whole, only once complete
    with atomic_folder(out_dir, own={"index.html", "img", "data"}) as tmp:
        geometry = render_cards(cards, prep_dir / "volumes.h5", tmp / "img", lesions, tracklets, sources, window=window)
        records = card_records(cards, expert_scores(cards, tracklets, proposals), geometry)
        counts = cards["strategy"].value_counts().to_dict()
        total = boxes["strategy"].value_counts().to_dict()
        page = {"id": hashlib.blake2b("|".join([experiment, *cards["box_id"]]).encode(), digest_size=8).hexdigest(),
                "experiment": experiment, "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "cards": int(len(cards)), "boxes": {k: int(v) for k, v in total.items()}}
        shown = ", ".join(f"{counts.get(s, 0)} of {total.get(s, 0)} {s}" for s in total) or "no mined boxes"
        write_page(tmp, records, page, f"Cards: {shown}.")
        tmp.chmod(0o755)
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    return {"cards": int(len(cards)), "by_strategy": {k: int(v) for k, v in counts.items()},
            "files": len(files), "bytes": int(np.sum([p.stat().st_size for p in files]))}
