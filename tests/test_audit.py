"""Mining audit against the hidden truth, the delta audit and the review montage."""

import numpy as np
import pandas as pd
import pytest

from lens_core.io import InputError
from lens_core.mining import audit, delta_audit, montage
from lens_core.mining.cross_slice import mine_cross_slice
from lens_core.tracklets import tracklets_from_table


def _truth():
    # one volume, two lesions: L1 labeled on its key slice 10 (spans slices 8..12), L2 never labeled
    return pd.DataFrame({
        "volume_id": ["v1", "v1"], "patient_id": ["p", "p"], "split": ["train", "train"],
        "x1": [20.0, 60.0], "y1": [20.0, 60.0], "x2": [30.0, 70.0], "y2": [30.0, 70.0],
        "z1": [8.0, 3.0], "z2": [13.0, 6.0], "z": [10, 4], "instance_id": ["L1", "L2"], "labeled": [True, False]})


def _annotations():
    return pd.DataFrame({"volume_id": ["v1"], "patient_id": ["p"], "lesion_id": ["v1/001"], "z": [10],
                         "x1": [20.0], "y1": [20.0], "x2": [30.0], "y2": [30.0], "label_kind": ["gt"]})


def _mined(rows, kind, rule):
    df = pd.DataFrame(rows, columns=["z", "x1", "y1", "x2", "y2"]).assign(
        volume_id="v1", patient_id="p", label_kind=kind, source_rule=rule, tracklet_id=0)
    return df


def test_mined_box_on_unlabeled_lesion_is_tp_on_empty_tissue_fp_on_labeled_duplicate():
    cross = _mined([(9, 20.5, 20, 30, 30.5),     # L1 on a slice it is not labeled on: a missing annotation
                    (10, 20, 20.5, 30.5, 30)],   # L1 on its labeled key slice: a duplicate
                   "mined_cross_slice", "cross_slice")
    intra = _mined([(4, 60, 60, 70, 70),         # L2, labeled nowhere: TP
                    (4, 100, 100, 110, 110)],    # empty tissue: FP
                   "mined_intra_patient", "intra_patient")
    res = audit.audit_mining(_annotations(), {"cross_slice": cross, "intra_patient": intra}, _truth()).set_index("strategy")

    assert res.loc["cross_slice", ["boxes", "tp", "duplicate", "fp"]].tolist() == [2, 1, 1, 0]
    assert res.loc["intra_patient", ["boxes", "tp", "duplicate", "fp"]].tolist() == [2, 1, 0, 1]
    assert res.loc["intra_patient", "precision"] == pytest.approx(0.5)
    # missing lesion-slices: L1 on 8, 9, 11, 12 and L2 on 3, 4, 5 -> 7
    assert res.attrs["missing_lesion_slices"] == 7
    assert res.loc["cross_slice", "recall_missing"] == pytest.approx(1 / 7)
    assert res.loc["intra_patient", "recall_missing_cum"] == pytest.approx(2 / 7)
    assert res.loc["intra_patient", "new_instances"] == 1  # L2 had no label in this volume
    # Table IV columns, cumulative: the duplicate is dropped by the round-2 merge, the FP is not known to it
    assert res.loc["no_mining", ["n_3d_gt", "n_2d_gt", "n_training_slices"]].tolist() == [1, 1, 1]
    assert res.loc["cross_slice", ["n_3d_gt", "n_2d_gt", "n_training_slices"]].tolist() == [1, 2, 2]
    assert res.loc["intra_patient", ["n_3d_gt", "n_2d_gt", "n_training_slices"]].tolist() == [2, 4, 3]


def test_uncertain_boxes_split_into_labeled_and_unlabeled_slices():
    unc = _mined([(10, 60, 60, 70, 70),   # on a slice with ground truth (slice 10 holds L1's label)
                  (4, 60, 60, 70, 70)],   # on an unlabeled slice, and on L2: a real lesion
                 "uncertain", "cross_dataset_luna")
    res = audit.audit_mining(_annotations(), {"uncertain": unc}, _truth()).set_index("strategy")
    assert res.loc["cross_dataset", ["boxes", "fp"]].tolist() == [1, 1]
    assert res.loc["unlabeled", ["boxes", "tp"]].tolist() == [1, 1]
    # only the last row brings the unlabeled slice into training (Table IV)
    assert res.loc["cross_dataset", "n_training_slices"] == 1
    assert res.loc["unlabeled", ["n_2d_uncertain", "n_training_slices"]].tolist() == [2, 2]


def test_split_filter_and_missing_split_column():
    t = _truth().assign(split=["val", "val"])
    res = audit.audit_mining(_annotations(), {}, t, split="train")
    assert res.attrs["truth_lesions"] == 0
    with pytest.raises(InputError, match="split"):
        audit.audit_mining(_annotations(), {}, _truth().drop(columns="split"))


def test_write_audit_markdown_and_parquet(tmp_path):
    res = audit.audit_mining(_annotations(), {}, _truth())
    audit.write_audit(res, tmp_path / "audit.md", tmp_path / "audit.parquet")
    text = (tmp_path / "audit.md").read_text()
    assert "| strategy |" in text and "cross_slice" in text
    back = pd.read_parquet(tmp_path / "audit.parquet")
    assert back["strategy"].tolist() == list(audit.STRATEGY_ORDER)
    assert not list(tmp_path.glob("*.tmp"))


def test_precision_recall_curve_counts_nearest_matches():
    matches = pd.DataFrame({"distance": [0.05, 0.1, 0.2, 0.4], "correct": [True, True, False, True]})
    curve = delta_audit.precision_recall_curve(matches, n_findable=4, deltas=[0.08, 0.15, 0.3, 0.5])
    assert curve["matched"].tolist() == [1, 2, 3, 4]
    assert curve["precision"].tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.75])
    assert curve["recall"].tolist() == pytest.approx([0.25, 0.5, 0.5, 0.75])


def test_delta_audit_plot_is_written(tmp_path):
    curve = pd.DataFrame({"delta": [0.1, 0.2], "matched": [1, 2], "precision": [1.0, 0.5], "recall": [0.5, 0.5]})
    delta_audit.plot_delta_audit(curve, 0.15, tmp_path / "delta.png")
    assert (tmp_path / "delta.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def dl_prep(tiny_prep):
    return tiny_prep / "deeplesion"


def test_cross_slice_propagation_on_stand_in_proposals_is_precise(dl_prep):
    """Issue 5's bar: >= 95% of cross-slice boxes are real unlabeled lesion-slices (stand-in proposals)."""
    truth = pd.read_parquet(dl_prep / "truth.parquet")
    ann = pd.read_parquet(dl_prep / "lesions.parquet")
    props = delta_audit.proposals_from_truth(truth, dl_prep, seed=1)
    assert {"score", "score_deeplesion", "score_luna", "patient_id"} <= set(props.columns)
    cross = mine_cross_slice(tracklets_from_table(props, 0.5), ann)
    pad = audit.annotation_pad_px(dl_prep)
    res = audit.audit_mining(ann, {"cross_slice": cross}, truth, split=None, pad_px=pad).set_index("strategy")
    assert res.loc["cross_slice", "boxes"] > 0
    assert res.loc["cross_slice", "precision"] >= 0.95
    assert 0 < res.loc["cross_slice", "recall_missing"] <= 1


def test_montage_png_of_mined_boxes(dl_prep, tmp_path):
    truth = pd.read_parquet(dl_prep / "truth.parquet")
    pad = audit.annotation_pad_px(dl_prep)
    sl = audit.truth_slices(truth, pad)
    boxes = sl.head(5)[["volume_id", "z", "x1", "y1", "x2", "y2"]].assign(source_rule="cross_slice")
    boxes = pd.concat([boxes, boxes.head(1).assign(x1=0.0, y1=0.0, x2=4.0, y2=4.0, source_rule="intra_patient")],
                      ignore_index=True)
    sample = montage.sample_for_review(boxes, n=4)
    assert sorted(sample["source_rule"].unique()) == ["cross_slice", "intra_patient"]  # both strategies shown
    verdict = audit.classify_boxes(sample, sl, np.zeros(len(sl), bool))["verdict"].to_numpy()
    assert "FP" in verdict and "TP" in verdict
    montage.write_montage(sample, dl_prep, tmp_path / "montage.png", verdict=verdict)
    assert (tmp_path / "montage.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="no volume"):
        montage.write_montage(sample.assign(volume_id="nope"), dl_prep, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_mining_precision_scores_mined_validation_boxes_against_the_full_3d_boxes(tiny_prep, tmp_path):
    """Issue 21: mining precision without the hidden truth. On the validation patients, a mined box on an
    unlabelled slice of an annotated 3D box is a true missing annotation, one on a labelled slice a duplicate,
    one away from every 3D box a false positive."""
    import pandas as pd

    from lens_core.cli import main
    from lens_core.mining.schema import conform

    dl = tiny_prep / "deeplesion"
    boxes = pd.read_parquet(dl / "test3d.parquet")
    boxes = boxes[boxes["split"] == "val"]
    marks = pd.read_parquet(dl / "lesions.parquet")
    marked = set(zip(marks["volume_id"], marks["z"]))
    # a 3D box's slice that no annotation marks: a mined box there is a recovered missing annotation
    pick = next((b, z) for b in boxes.itertuples() for z in range(int(b.z1), int(b.z2))
                if (b.volume_id, z) not in marked and b.z2 - b.z1 >= 1)
    b, z = pick
    hit = {"volume_id": b.volume_id, "z": z, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2}
    miss = {**hit, "x1": 0.0, "y1": 0.0, "x2": 3.0, "y2": 3.0}
    cross = conform(pd.DataFrame([hit, miss]).assign(label_kind="mined_cross_slice", dataset="deeplesion"))
    intra = conform(pd.DataFrame([miss]).assign(label_kind="mined_intra_patient", dataset="deeplesion"))
    cross.to_parquet(tmp_path / "cs.parquet")
    intra.to_parquet(tmp_path / "ip.parquet")
    out = tmp_path / "p.parquet"
    assert main(["mining-precision", "--prep-dir", str(dl), "--cross-slice", str(tmp_path / "cs.parquet"),
                 "--intra-patient", str(tmp_path / "ip.parquet"), "--out-md", str(tmp_path / "p.md"),
                 "--out-parquet", str(out)]) == 0
    t = pd.read_parquet(out).set_index("strategy")
    assert (t.loc["cross_slice", "boxes"], t.loc["cross_slice", "tp"], t.loc["cross_slice", "fp"]) == (2, 1, 1)
    assert t.loc["cross_slice", "precision"] == 0.5 and t.loc["intra_patient", "precision"] == 0.0
    assert "no hidden truth" in (tmp_path / "p.md").read_text()
    # a split without fully annotated boxes: a clear error naming the file, nothing written
    out2 = tmp_path / "q.parquet"
    assert main(["mining-precision", "--prep-dir", str(dl), "--cross-slice", str(tmp_path / "cs.parquet"),
                 "--intra-patient", str(tmp_path / "ip.parquet"), "--split", "train", "--out-md",
                 str(tmp_path / "q.md"), "--out-parquet", str(out2)]) == 1
    assert not out2.exists()
