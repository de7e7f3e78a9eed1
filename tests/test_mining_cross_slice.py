"""Cross-slice box propagation (paper Sec. V-A): a key-slice annotation recovers the lesion's other slices."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from lens_core.mining.cross_slice import mine_cross_slice
from lens_core.mining.schema import MINING_SCHEMA, write_mining_table
from lens_core.tracklets import tracklets_from_table


def proposals(rows):
    """rows: (volume_id, z, x1, y1, x2, y2, score)."""
    df = pd.DataFrame(rows, columns=["volume_id", "z", "x1", "y1", "x2", "y2", "score"])
    df["patient_id"] = "p" + df["volume_id"]
    df["study_id"], df["series_id"] = 1, 1
    return tracklets_from_table(df)


def annotation(volume_id, z, box, lesion_id="L1", label_kind="gt", **extra):
    row = {"volume_id": volume_id, "patient_id": "p" + volume_id, "study_id": 1, "series_id": 1,
           "dataset": "deeplesion", "lesion_id": lesion_id, "z": z, "x1": box[0], "y1": box[1],
           "x2": box[2], "y2": box[3], "z1": float(z), "z2": float(z + 1), "kind": "2d",
           "lesion_type": "liver", "label_kind": label_kind}
    row.update(extra)
    return row


LESION = (100, 100, 130, 130)


def test_annotated_lesion_is_recovered_on_its_other_slices():
    rows = [("v", z, *LESION, 0.9) for z in range(3, 8)]
    rows += [("v", 5, 300, 300, 320, 320, 0.8), ("v", 6, 301, 300, 321, 320, 0.8)]  # an unannotated FP tracklet
    mined = mine_cross_slice(proposals(rows), pd.DataFrame([annotation("v", 5, (101, 99, 131, 129))]))
    assert sorted(mined["z"].tolist()) == [3, 4, 6, 7]
    assert set(mined["lesion_id"]) == {"L1"} and set(mined["lesion_type"]) == {"liver"}
    assert set(mined["label_kind"]) == {"mined_cross_slice"} and set(mined["source_rule"]) == {"cross_slice"}
    assert (mined[["x1", "y1", "x2", "y2"]].to_numpy() == LESION).all()
    assert mined["tracklet_id"].nunique() == 1 and (mined["key_iou"] > 0.5).all()
    assert (mined["z2"] - mined["z1"] == 1).all() and set(mined["patient_id"]) == {"pv"}


def test_tracklet_with_low_key_slice_iou_mines_nothing():
    rows = [("v", z, *LESION, 0.9) for z in range(3, 8)]
    shifted = (115, 100, 145, 130)  # IoU 1/3 with the lesion box
    assert len(mine_cross_slice(proposals(rows), pd.DataFrame([annotation("v", 5, shifted)]))) == 0


def test_annotation_in_another_volume_or_not_gt_does_not_propagate():
    rows = [("v", z, *LESION, 0.9) for z in range(3, 8)]
    anns = pd.DataFrame([annotation("w", 5, LESION), annotation("v", 5, LESION, label_kind="excluded")])
    assert len(mine_cross_slice(proposals(rows), anns)) == 0


def test_branching_tracklet_keeps_the_best_box_per_slice():
    rows = [("v", 4, 100, 100, 130, 130, 0.9), ("v", 5, 100, 100, 130, 130, 0.9),
            ("v", 6, 100, 100, 130, 122, 0.4), ("v", 6, 100, 102, 130, 130, 0.7)]
    mined = mine_cross_slice(proposals(rows), pd.DataFrame([annotation("v", 5, LESION)]), iou_threshold=0.5)
    assert mined.sort_values("z")[["z", "y1", "score"]].values.tolist() == [[4, 100, 0.9], [6, 102, 0.7]]


def test_tracklet_touching_two_annotations_takes_the_closer_one_and_skips_labelled_slices():
    rows = [("v", z, *LESION, 0.9) for z in range(3, 8)]
    anns = pd.DataFrame([annotation("v", 5, (103, 100, 133, 130), lesion_id="far"),
                         annotation("v", 4, (101, 100, 131, 130), lesion_id="near")])
    mined = mine_cross_slice(proposals(rows), anns)
    # Key slice 4 (the better match) and slice 5 (already annotated) are not mined.
    assert sorted(mined["z"].tolist()) == [3, 6, 7] and set(mined["lesion_id"]) == {"near"}


def test_mined_table_round_trips_through_parquet_with_its_schema(tmp_path):
    rows = [("v", z, *LESION, 0.9) for z in range(4, 7)]
    mined = mine_cross_slice(proposals(rows), pd.DataFrame([annotation("v", 5, LESION)]))
    write_mining_table(mined, tmp_path / "cross_slice.parquet")
    back = pq.read_table(tmp_path / "cross_slice.parquet")
    assert back.schema.remove_metadata().equals(MINING_SCHEMA) and back.num_rows == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_no_proposals_or_no_annotations_give_an_empty_table_with_the_schema():
    empty = mine_cross_slice(proposals([]), pd.DataFrame([annotation("v", 5, LESION)]))
    assert len(empty) == 0 and list(empty.columns) == MINING_SCHEMA.names
    none = mine_cross_slice(proposals([("v", 5, *LESION, 0.9)]), pd.DataFrame([annotation("v", 5, LESION)]).iloc[:0])
    assert len(none) == 0


def test_lesion_extent_prior_stops_propagation_far_from_the_key_slice():
    """A tracklet running on past the lesion (a vessel, the next organ) is cut at max_dz slices from the key."""
    rows = [("v", z, *LESION, 0.9) for z in range(0, 11)]
    ann = pd.DataFrame([annotation("v", 5, (101, 99, 131, 129), max_dz=2.0)])
    mined = mine_cross_slice(proposals(rows), ann)
    assert sorted(mined["z"].tolist()) == [3, 4, 6, 7]
