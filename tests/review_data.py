"""A tiny mining output for the review tests: the real mining commands run on stand-in proposals of the
tiny corpus (made from its truth, so no detector is trained), then `lens review-boxes` and `lens review`."""
import contextlib
import http.server
import json
import re
import threading
from pathlib import Path

import pandas as pd

from lens_core.cli import main
from lens_core.mining.delta_audit import proposals_from_truth


def run(*args) -> None:
    assert main([str(a) for a in args]) == 0, args


def build_mining(dl_prep: Path, out: Path) -> Path:
    """results/<exp>/mining-like folder under ``out``: tracklets, the three mining tables, labels_round2
    (no review), review_boxes.parquet and the review page in review/."""
    out.mkdir(parents=True, exist_ok=True)
    truth = pd.read_parquet(dl_prep / "truth.parquet")
    props = proposals_from_truth(truth, dl_prep, seed=1)
    props.to_parquet(out / "proposals.parquet")
    vols, les = dl_prep / "volumes.parquet", dl_prep / "lesions.parquet"
    run("build-tracklets", "--proposals", out / "proposals.parquet", "--volumes", vols, "--min-score", 0.3,
        "--out", out / "tracklets.parquet")
    run("mine-cross-slice", "--tracklets", out / "tracklets.parquet", "--lesions", les, "--volumes", vols,
        "--out", out / "cross_slice.parquet")
    run("embed-lesions", "--prep-dir", dl_prep, "--tracklets", out / "tracklets.parquet", "--source", "position",
        "--out", out / "embeddings.h5")
    run("mine-intra-patient", "--prep-dir", dl_prep, "--tracklets", out / "tracklets.parquet", "--embeddings",
        out / "embeddings.h5", "--delta", 0.3, "--out", out / "intra_patient.parquet")
    run("mine-cross-dataset", "--proposals", out / "proposals.parquet", "--volumes", vols, "--labels", les,
        out / "cross_slice.parquet", out / "intra_patient.parquet", "--out", out / "uncertain.parquet")
    run(*merge_args(dl_prep, out), "--out", out / "labels_round2.parquet")
    run("review-boxes", "--cross-slice", out / "cross_slice.parquet", "--intra-patient", out / "intra_patient.parquet",
        "--uncertain", out / "uncertain.parquet", "--volumes", vols, "--out", out / "review_boxes.parquet")
    run("review", "--boxes", out / "review_boxes.parquet", "--prep-dir", dl_prep, "--tracklets",
        out / "tracklets.parquet", "--proposals", out / "proposals.parquet", "--uncertain-sample", 6,
        "--experiment", "tiny", "--out", out / "review")
    return out


def merge_args(dl_prep: Path, out: Path) -> list:
    return ["merge-labels", "--lesions", dl_prep / "lesions.parquet", "--mined", out / "cross_slice.parquet",
            out / "intra_patient.parquet", "--uncertain", out / "uncertain.parquet"]


CHUNK_CALL = re.compile(r"^window\.lensReviewChunk\((\d+),(.*)\);\s*$", re.S)


def page_data(page: Path) -> dict:
    """A review page's data as the browser sees it: index.html's summary plus every chunk's cards, in order."""
    text = (page / "index.html").read_text()
    m = re.search(r'<script id="lens-data" type="application/json">(.*?)</script>', text, re.S)
    data = json.loads(m.group(1).replace("<\\/", "</"))
    cards = []
    for k in range(data["page"]["chunks"]):
        call = CHUNK_CALL.match((page / "data" / f"cards-{k:05d}.js").read_text())
        assert call and int(call.group(1)) == k
        cards += json.loads(call.group(2))
    return {**data, "cards": cards}


def write_chunk(page: Path, k: int, cards: list) -> None:
    (page / "data" / f"cards-{k:05d}.js").write_text(f"window.lensReviewChunk({k},{json.dumps(cards)});\n")


def synthetic_review_page(folder: Path, n: int, seed: int = 0) -> Path:
    """A review page of ``n`` cards shaped like the default run's (the same fields and sizes, ~900 bytes a
    record), all showing one shared set of crops: the page at real DeepLesion's scale without rendering
    tens of thousands of PNGs. Strategies come in runs (as mining writes them), so filters skip chunks."""
    import numpy as np
    from PIL import Image

    from lens_core.review.page import write_page

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    img = (rng.random((32, 32)) * 255).astype(np.uint8)
    Image.fromarray(img).save(folder / "img" / "crop.png")
    Image.fromarray(np.concatenate([img] * 5, axis=1)).save(folder / "img" / "strip.png")
    strategies = np.repeat(["cross_slice", "intra_patient", "uncertain"], [n * 4 // 10, n * 4 // 10, n - 2 * (n * 4 // 10)])
    records = []
    for i in range(n):
        s = str(strategies[i])
        box = [round(float(v), 2) for v in (50 + rng.random(2) * 4).tolist() + (58 + rng.random(2) * 4).tolist()]
        box = [box[0], box[1], box[2], box[3]]
        r = {"id": f"{i:012x}", "strategy": s, "source_rule": s, "volume_id": f"{i // 40:06d}_01_01_024-034",
             "patient_id": f"{i // 80:06d}", "dataset": "deeplesion", "lesion_type": "unknown", "z": 2, "box": box,
             "width": 144, "height": 102, "score": round(float(rng.random()), 4),
             "key_iou": round(float(rng.random()), 4) if s == "cross_slice" else None,
             "embedding_distance": round(float(rng.random()) * 0.15, 4) if s == "intra_patient" else None,
             "experts": {d: round(float(rng.random()), 4) for d in ("deeplesion", "luna", "lits", "nihln")},
             "img": "img/crop.png", "crop": [41, 41, 32], "strip": "img/strip.png", "strip_z": [0, 1, 2, 3, 4],
             "annotations": {"3": [box]}, "tracklet": {str(z): [box] for z in (1, 2, 3)}}
        if s != "uncertain":
            r["source"] = {"volume_id": r["volume_id"], "study_id": 1, "series_id": 1, "z": 3, "box": box,
                           "lesion_id": f"{r['volume_id']}/001", "lesion_type": "unknown", "img": "img/crop.png",
                           "crop": [41, 41, 32]}
        records.append(r)
    counts = {s: int((strategies == s).sum()) for s in ("cross_slice", "intra_patient", "uncertain")}
    write_page(folder, records, {"id": f"synthetic{n}", "experiment": f"synthetic {n}", "built": "2026-01-01T00:00:00+00:00",
                                 "cards": n, "boxes": counts}, f"Cards: {n} synthetic.")
    return folder / "index.html"


@contextlib.contextmanager
def counting_server(folder: Path):
    """A static server of ``folder`` that records every path the browser asks for: (base URL, paths)."""
    served: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            served.append(self.path.split("?")[0])
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()
