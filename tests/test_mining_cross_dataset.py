"""Cross-dataset mining (paper Sec. V-C) and the round-2 label merge (Table IV)."""

import numpy as np
import pandas as pd
import pytest

from lens_core.io import InputError
from lens_core.mining.cross_dataset import mine_uncertain
from lens_core.mining.merge import merge_round2, training_slices
from lens_core.mining.schema import MINING_SCHEMA


def proposals(rows):
    """rows: (volume_id, z, x1, y1, x2, y2, score_luna, score_lits, score_nihln, score_deeplesion)."""
    df = pd.DataFrame(rows, columns=["volume_id", "z", "x1", "y1", "x2", "y2",
                                     "score_luna", "score_lits", "score_nihln", "score_deeplesion"])
    df["patient_id"], df["study_id"], df["series_id"] = "P", 1, 1
    df["score"] = df[["score_luna", "score_lits", "score_nihln", "score_deeplesion"]].max(axis=1)
    return df


def label(volume_id, z, box, label_kind="gt", z1=None, z2=None, lesion_id="L"):
    return {"volume_id": volume_id, "patient_id": "P", "study_id": 1, "series_id": 1, "dataset": "deeplesion",
            "lesion_id": lesion_id, "z": z, "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3],
            "z1": float(z if z1 is None else z1), "z2": float(z + 1 if z2 is None else z2),
            "kind": "2d", "lesion_type": "unknown", "label_kind": label_kind}


def test_confident_single_type_proposal_off_every_label_becomes_uncertain():
    props = proposals([
        ("v", 5, 10, 10, 20, 20, 0.9, 0.1, 0.0, 0.2),     # LUNA expert sure, nothing labelled: uncertain
        ("v", 5, 100, 100, 110, 110, 0.2, 0.3, 0.4, 0.99),  # only the universal expert is sure: not mined
        ("v", 6, 10, 10, 20, 20, 0.0, 0.5, 0.0, 0.0),      # score == sigma is not above it
        ("u", 0, 50, 50, 60, 60, 0.0, 0.1, 0.8, 0.0),      # unlabelled slice of another volume, NIH-LN expert
    ])
    out = mine_uncertain(props, pd.DataFrame([label("v", 9, (10, 10, 20, 20))]))
    assert list(out.columns) == MINING_SCHEMA.names
    assert out[["volume_id", "z", "source_rule"]].values.tolist() == [
        ["v", 5, "cross_dataset_luna"], ["u", 0, "cross_dataset_nihln"]]
    assert out["score"].tolist() == [0.9, 0.8] and set(out["label_kind"]) == {"uncertain"}


def test_proposal_touching_an_annotation_or_a_mined_box_is_not_uncertain():
    props = proposals([
        ("v", 5, 10, 10, 14, 14, 0.9, 0, 0, 0),   # small nodule box inside an annotated mass: IoU 0.04
        ("v", 7, 10, 10, 20, 20, 0, 0.9, 0, 0),   # overlaps a mined box on slice 7
        ("v", 8, 10, 10, 20, 20, 0, 0.9, 0, 0),   # inside the z-span of a 3D annotation
        ("v", 9, 30, 30, 40, 40, 0, 0.9, 0, 0),   # free
    ])
    labels = pd.DataFrame([label("v", 5, (0, 0, 50, 50)), label("v", 7, (12, 12, 22, 22), "mined_cross_slice"),
                           label("w", 8, (10, 10, 20, 20)), label("v", 8, (10, 10, 20, 20), z1=8, z2=9)])
    assert mine_uncertain(props, labels)["z"].tolist() == [9]
    # A looser overlap rule lets the nested nodule box through (documented trade-off).
    assert sorted(mine_uncertain(props, labels, overlap_iou=0.1)["z"].tolist()) == [5, 9]


def test_expert_columns_are_configurable_and_must_exist():
    props = proposals([("v", 5, 10, 10, 20, 20, 0.0, 0.0, 0.0, 0.9)])
    assert len(mine_uncertain(props, pd.DataFrame(), expert_cols=("score_deeplesion",))) == 1
    with pytest.raises(InputError, match="expert columns"):
        mine_uncertain(props, pd.DataFrame(), expert_cols=("score_kits",))


def test_round2_labels_keep_annotations_add_mined_once_and_ignore_uncertain():
    anns = pd.DataFrame([label("v", 5, (10, 10, 20, 20)), label("v", 0, (0, 0, 9, 9), "excluded")])
    cross = pd.DataFrame([label("v", 6, (10, 10, 20, 20), "mined_cross_slice")]).assign(source_rule="cross_slice")
    intra = pd.DataFrame([label("v", 6, (11, 10, 21, 20), "mined_intra_patient"),   # same lesion as cross
                          label("v", 5, (10, 10, 20, 20), "mined_intra_patient"),   # duplicates the annotation
                          label("w", 2, (10, 10, 20, 20), "mined_intra_patient")]).assign(source_rule="intra_patient")
    unc = pd.DataFrame([label("v", 9, (40, 40, 50, 50), "uncertain"), label("w", 2, (15, 15, 25, 25), "uncertain")])
    merged = merge_round2(anns, [cross, intra], unc)
    assert list(merged.columns) == MINING_SCHEMA.names
    got = sorted(merged[["volume_id", "z", "label_kind"]].values.tolist())
    assert got == [["v", 0, "excluded"], ["v", 5, "gt"], ["v", 6, "mined_cross_slice"], ["v", 9, "uncertain"],
                   ["w", 2, "mined_intra_patient"]]
    slices = training_slices(merged).set_index(["volume_id", "z"])
    assert slices.loc[("v", 9), "unlabeled"] and not slices.loc[("v", 6), "unlabeled"]
    assert int(slices["n_gt"].sum()) == 3 and int(slices["n_ignore"].sum()) == 2


def test_merge_rejects_a_mined_table_with_a_non_gt_kind():
    anns = pd.DataFrame([label("v", 5, (10, 10, 20, 20))])
    with pytest.raises(ValueError, match="label_kind"):
        merge_round2(anns, [pd.DataFrame([label("v", 6, (0, 0, 5, 5), "uncertain")])])


def test_merged_labels_carry_the_dataset_round_2_training_selects_by(tiny_prep, tmp_path):
    """Uncertain boxes come from proposals, which name no dataset; merge-labels gives them their volume's,
    or round-2 training (which takes a dataset's rows by `dataset`) would silently drop them."""
    from lens_core.cli import main
    from lens_core.mining.schema import write_mining_table

    prep = tiny_prep / "deeplesion"
    les = pd.read_parquet(prep / "lesions.parquet")
    vol = pd.read_parquet(prep / "volumes.parquet").volume_id.iloc[0]
    unc = pd.DataFrame([{"volume_id": vol, "patient_id": "p", "study_id": 1, "series_id": 1, "z": 0,
                         "x1": 1.0, "y1": 1.0, "x2": 3.0, "y2": 3.0, "z1": 0.0, "z2": 1.0, "kind": "2d",
                         "label_kind": "uncertain", "source_rule": "cross_dataset_luna"}])
    write_mining_table(unc, tmp_path / "unc.parquet")
    assert main(["merge-labels", "--lesions", str(prep / "lesions.parquet"), "--uncertain", str(tmp_path / "unc.parquet"),
                 "--out", str(tmp_path / "labels.parquet")]) == 0
    labels = pd.read_parquet(tmp_path / "labels.parquet")
    assert (labels.label_kind == "uncertain").sum() == 1 and len(labels) == len(les) + 1
    assert set(labels.dataset) == {"deeplesion"}
