"""`lens propose` (paper Sec. IV-C): per-expert scores, proposal fusion, 2D->3D stacking, shards."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from lens_core.cli import main
from lens_core.inference.fusion import fuse_experts
from lens_core.inference.expert_proposals import select_volumes, stack_proposals_3d
from synthetic_prep import make_prep

DATASETS = ["deeplesion", "luna"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fusion_is_the_union_of_the_experts_boxes_then_nms():
    # 3 pooled proposals seen by 2 experts: [D, N, 4] boxes and [N, D] scores
    boxes = torch.tensor([
        [[10.0, 10, 30, 30], [60, 60, 80, 80], [10, 40, 20, 50]],   # expert 0 ("deeplesion")
        [[11.0, 10, 31, 30], [61, 60, 81, 80], [12, 40, 22, 50]],   # expert 1 ("luna")
    ])
    scores = torch.tensor([[0.9, 0.2], [0.1, 0.8], [0.05, 0.02]])
    b, fused, s, expert = fuse_experts(boxes, scores, fuse=[0, 1], nms_thresh=0.5)
    # each lesion once, from the expert most sure of it; every expert's score kept for mining
    assert fused.tolist() == pytest.approx([0.9, 0.8, 0.05])
    assert expert.tolist() == [0, 1, 0]
    assert torch.equal(b[1], boxes[1, 1])
    assert torch.equal(s, scores[[0, 1, 2]])
    # the DeepLesion expert alone (Table II row (b)) ranks the second lesion low
    b0, fused0, _, expert0 = fuse_experts(boxes, scores, fuse=[0], nms_thresh=0.5, min_score=0.08)
    assert fused0.tolist() == pytest.approx([0.9, 0.1]) and expert0.tolist() == [0, 0]


def test_shards_partition_the_volumes():
    vols = pd.DataFrame({"volume_id": [f"v{i}" for i in range(7)][::-1], "split": ["test"] * 6 + ["train"]})
    parts = [select_volumes(vols, "test", (i, 3))["volume_id"].tolist() for i in range(3)]
    flat = sorted(v for p in parts for v in p)
    assert flat == sorted(vols[vols.split == "test"].volume_id) and len(flat) == len(set(flat))


def test_2d_boxes_on_consecutive_slices_stack_into_one_3d_box():
    rows = [  # one lesion on slices 4-6, weights 1:3:1; an unrelated box; a gap before slice 8
        (4, [10, 10, 20, 20], 0.2), (5, [12, 10, 22, 20], 0.6), (6, [10, 10, 20, 20], 0.2),
        (5, [40, 40, 50, 50], 0.5), (8, [10, 10, 20, 20], 0.3),
    ]
    df = pd.DataFrame([{"volume_id": "v", "patient_id": "p", "study_id": "s", "series_id": "r", "z": z,
                        "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "score_deeplesion": s, "score": s,
                        "expert": "deeplesion"} for z, b, s in rows])
    out = stack_proposals_3d(df, iou_threshold=0.5).sort_values(["z1", "x1"]).reset_index(drop=True)
    assert len(out) == 3
    lesion = out.iloc[0]
    assert (lesion.z1, lesion.z2) == (4, 7)
    assert lesion.x1 == pytest.approx((0.2 * 10 + 0.6 * 12 + 0.2 * 10) / 1.0)
    assert lesion.x2 == pytest.approx((0.2 * 20 + 0.6 * 22 + 0.2 * 20) / 1.0)
    assert (out.iloc[2].z1, out.iloc[2].z2) == (8, 9)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    prep = make_prep(root / "prep", datasets=DATASETS, n_volumes=4, depth=8, size=48, splits=("train", "test"))
    cfg = root / "train.json"
    cfg.write_text(json.dumps({"datasets": DATASETS, "epochs": 1, "lr": 1e-3, "fc_dim": 32, "rois_per_image": 16}))
    rc = main(["train", "--prep-dir", str(prep), "--config", str(cfg), "--out", str(root / "r1"),
               "--device", "cpu", "--seed", "0", "--no-progress"])
    assert rc == 0
    return root, prep


def test_train_then_propose_from_the_command_line(trained):
    root, prep = trained
    out = root / "r1"
    for name in ["lens.pt", "losses.parquet", "losses.png"]:
        assert (out / name).exists(), name
    assert not (out / "checkpoint.pt").exists()  # only an unfinished training leaves one
    assert torch.load(out / "lens.pt", weights_only=True)["meta"]["datasets"] == DATASETS

    def propose(shard, name):
        rc = main(["propose", "--model", str(out / "lens.pt"), "--prep-dir", str(prep), "--dataset", "deeplesion",
                   "--split", "test", "--shard", shard, "--out", str(root / f"{name}.parquet"),
                   "--out3d", str(root / f"{name}_3d.parquet"), "--device", "cpu", "--min-score", "0",
                   "--no-progress"])
        assert rc == 0
        return pd.read_parquet(root / f"{name}.parquet"), pd.read_parquet(root / f"{name}_3d.parquet")

    full, full3d = propose("0/1", "all")
    assert {"volume_id", "patient_id", "study_id", "series_id", "z", "x1", "y1", "x2", "y2",
            "score_deeplesion", "score_luna", "score"} <= set(full.columns)
    test_vols = set(pd.read_parquet(prep / "deeplesion" / "volumes.parquet").query("split == 'test'").volume_id)
    assert set(full.volume_id) == test_vols
    assert (full[["x2", "y2"]].to_numpy() > full[["x1", "y1"]].to_numpy()).all()
    assert np.allclose(full.score, full[["score_deeplesion", "score_luna"]].to_numpy()[
        np.arange(len(full)), (full.expert == "luna").to_numpy().astype(int)])
    assert {"volume_id", "x1", "y1", "z1", "x2", "y2", "z2", "score"} <= set(full3d.columns)
    assert (full3d.z2 > full3d.z1).all()
    # scatter over 3 shards, gather as the workflow does (`lens concat --sort volume_id`): the same table
    parts = [root / f"s{i}.parquet" for i in range(3) if propose(f"{i}/3", f"s{i}") is not None]
    assert main(["concat", *map(str, parts), "--sort", "volume_id", "--out", str(root / "gathered.parquet")]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(root / "gathered.parquet"), full)


def test_bad_inputs_fail_with_the_file_named(trained, tmp_path):
    root, prep = trained
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nope")
    rc = main(["propose", "--model", str(bad), "--prep-dir", str(prep), "--dataset", "deeplesion",
               "--out", str(tmp_path / "x.parquet"), "--device", "cpu"])
    assert rc == 1 and not (tmp_path / "x.parquet").exists()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("datasets: [deeplesion]\nepochs: 1\nbogus: 3\n")
    rc = main(["train", "--prep-dir", str(prep), "--config", str(cfg), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert rc == 1 and not (tmp_path / "o" / "lens.pt").exists()
