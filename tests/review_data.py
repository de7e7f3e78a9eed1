"""A tiny mining output for the review tests: the real mining commands run on stand-in proposals of the
tiny corpus (made from its truth, so no detector is trained), then `lens review-boxes` and `lens review`."""
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
