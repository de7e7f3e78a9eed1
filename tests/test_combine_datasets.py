"""Paper Table V, ways to combine datasets: data pooling (one task over every dataset's slices) and
separate models (one detector per dataset, their proposals fused at inference)."""
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from lens_core.cli import main
from lens_core.inference.fusion import fuse_models
from lens_core.training.config import TrainConfig
from lens_core.model.network_input import stack_slices
from lens_core.training.data import DatasetIndex, SliceReader, build_index, load_batch, pool_index
from lens_core.training.sampler import DatasetHomogeneousSampler
from synthetic_prep import make_prep

DATASETS = ["deeplesion", "luna", "lits"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return make_prep(tmp_path_factory.mktemp("prep"), datasets=DATASETS, n_volumes=4, depth=8, size=48,
                     splits=("train", "test"))


def cfg(**kw):
    return TrainConfig.from_config({"augment": False, **kw})


def test_pooling_makes_one_task_of_every_datasets_slices_read_from_their_own_files(prep):
    alone = build_index(cfg(datasets=DATASETS), prep)
    pooled = build_index(cfg(datasets=["deeplesion"], pool=["luna", "lits"]), prep)
    assert list(pooled) == ["deeplesion"]
    ds = pooled["deeplesion"]
    assert ds.lesion_slices == [k for d in DATASETS for k in alone[d].lesion_slices]
    # every pooled dataset's negatives are the task's negatives (Table V: pooling adds many of them)
    assert ds.negatives == sorted(k for d in DATASETS for k in alone[d].negatives)
    assert {v for v, _ in ds.negatives} >= {v for v, _ in alone["luna"].negatives} and alone["luna"].negatives
    assert ds.labels == {k: v for d in DATASETS for k, v in alone[d].labels.items()}
    keys = [alone[d].lesion_slices[0][0] for d in DATASETS] + [alone["lits"].negatives[0]]
    assert [ds.h5_of(v) for v, _ in keys] == [prep / d / "volumes.h5" for d in DATASETS + ["lits"]]
    batch = load_batch(keys, ds, SliceReader(3), cfg(datasets=["deeplesion"]), stride=4, rng=None)
    assert batch.dataset == "deeplesion" and len(batch.targets[3].boxes) == 0
    for (vol, z), d, image in zip(keys, DATASETS + ["lits"], batch.images):
        with h5py.File(prep / d / "volumes.h5", "r") as f:
            expected = (torch.from_numpy(stack_slices(f[vol]["image"][...], z, 3)).float() - 64) / 64
        assert torch.equal(image, expected)
    # the sampler mixes the pooled datasets' slices in the one task's batches
    plan = DatasetHomogeneousSampler(pooled, batch_size=4, seed=0).plan(0)
    assert {n for n, _ in plan} == {"deeplesion"}
    assert {v.split("_")[0] for _, ks in plan for v, _ in ks} == set(DATASETS)
    # without pool the index is the one of before
    assert build_index(cfg(datasets=["deeplesion"]), prep)["deeplesion"] == alone["deeplesion"]


def test_positive_only_pooling_adds_the_pooled_datasets_lesion_slices_and_none_of_their_negatives(prep):
    """Table V's "positive data pooling": the single-type sets' lesion slices join DeepLesion's task,
    their lesion-free slices do not (so only DeepLesion's own sampling decides its negatives)."""
    alone = build_index(cfg(datasets=DATASETS, unlabeled_slices=True, neg_gap_2d=1), prep)
    pos = build_index(cfg(datasets=["deeplesion"], pool=["luna", "lits"], pool_positive_only=True,
                          unlabeled_slices=True, neg_gap_2d=1), prep)["deeplesion"]
    assert pos.lesion_slices == [k for d in DATASETS for k in alone[d].lesion_slices]
    assert alone["luna"].negatives and alone["deeplesion"].negatives
    assert pos.negatives == alone["deeplesion"].negatives
    plan = DatasetHomogeneousSampler({"deeplesion": pos}, batch_size=4, seed=0).plan(0)
    sampled = {k for _, ks in plan for k in ks}
    assert {v.split("_")[0] for v, _ in sampled} == set(DATASETS)
    assert all(pos.labels[k].gt for k in sampled if not k[0].startswith("deeplesion"))
    with pytest.raises(ValueError, match="pool_positive_only needs datasets to pool"):
        cfg(datasets=["deeplesion"], pool_positive_only=True)


def test_pooling_config_and_volume_id_clashes_fail_clearly():
    with pytest.raises(ValueError, match="pool"):
        cfg(datasets=["deeplesion", "luna"], pool=["luna"])
    with pytest.raises(ValueError, match="pool"):
        cfg(datasets=["deeplesion"], pool=["luna", "luna"])
    assert cfg(datasets=["deeplesion"], pool=["luna"], volume_fraction={"luna": 0.5}).pool == ["luna"]
    a = DatasetIndex("deeplesion", "a.h5", {}, [[("v1", 0)]], [("v2", 1)])
    b = DatasetIndex("luna", "b.h5", {}, [], [("v2", 3)])
    with pytest.raises(ValueError, match="cannot pool luna into deeplesion: volume id 'v2' is also in deeplesion"):
        pool_index(a, [b])


def test_separate_models_fuse_like_experts_and_score_each_others_boxes_by_overlap():
    # model 0 (1 expert) and model 1 (1 expert), two RoIs each
    out0 = (torch.tensor([[[10.0, 10, 30, 30], [60, 60, 70, 70]]]), torch.tensor([[0.9], [0.3]]))
    out1 = (torch.tensor([[[11.0, 10, 31, 30], [40, 0, 50, 10]]]), torch.tensor([[0.7], [0.6]]))
    boxes, fused, scores, expert = fuse_models([out0, out1], [[0], [0]], nms_thresh=0.5)
    assert fused.tolist() == pytest.approx([0.9, 0.6, 0.3]) and expert.tolist() == [0, 1, 0]
    assert torch.equal(boxes[1], out1[0][0, 1])
    # own column: the model's score of that RoI; other column: its best overlapping box, else 0
    assert torch.allclose(scores, torch.tensor([[0.9, 0.7], [0.0, 0.6], [0.3, 0.0]]))
    # fusing only model 0's expert gives its own boxes back, model 1 still scoring them
    boxes0, fused0, scores0, _ = fuse_models([out0, out1], [[0], []], nms_thresh=0.5)
    assert torch.equal(boxes0, out0[0][0]) and scores0[:, 1].tolist() == pytest.approx([0.7, 0.0])


@pytest.fixture(scope="module")
def alone_models(prep, tmp_path_factory):
    """One tiny round-1 model per dataset, each trained alone (1 epoch)."""
    root = tmp_path_factory.mktemp("alone")
    paths = {}
    for d in ["deeplesion", "luna"]:
        conf = root / f"{d}.json"
        conf.write_text(json.dumps({"datasets": [d], "epochs": 1, "lr": 1e-3, "fc_dim": 32, "rois_per_image": 16}))
        assert main(["train", "--prep-dir", str(prep), "--config", str(conf), "--out", str(root / d),
                     "--device", "cpu", "--seed", "0", "--no-progress"]) == 0
        paths[d] = root / d / "lens.pt"
    return paths


def _propose(prep, models, out, *extra):
    rc = main(["propose", "--model", *map(str, models), "--prep-dir", str(prep), "--dataset", "deeplesion",
               "--split", "test", "--out", str(out), "--out3d", str(out.with_suffix(".3d.parquet")),
               "--device", "cpu", "--min-score", "0", "--no-progress", *extra])
    return rc, (pd.read_parquet(out) if rc == 0 else None)


def test_propose_fuses_several_models_proposals(prep, alone_models, tmp_path):
    rc, both = _propose(prep, alone_models.values(), tmp_path / "both.parquet")
    assert rc == 0
    assert list(both.columns[-4:]) == ["score_deeplesion", "score_luna", "score", "expert"]
    assert set(both.expert) <= {"deeplesion", "luna"} and len(both)
    own = np.where(both.expert == "luna", both.score_luna, both.score_deeplesion)
    assert np.allclose(both.score, own)
    stacked = pd.read_parquet(tmp_path / "both.3d.parquet")
    assert {"x1", "y1", "z1", "x2", "y2", "z2", "score", "score_luna"} <= set(stacked.columns)
    # fusing only the DeepLesion model's expert reproduces that model's proposals on their own
    rc, dl_only = _propose(prep, alone_models.values(), tmp_path / "dl.parquet", "--experts", "deeplesion")
    rc1, single = _propose(prep, [alone_models["deeplesion"]], tmp_path / "single.parquet")
    assert rc == rc1 == 0
    pd.testing.assert_frame_equal(dl_only.drop(columns="score_luna"), single)
    # two models with the same expert cannot share its score column
    rc, _ = _propose(prep, [alone_models["luna"], alone_models["luna"]], tmp_path / "dup.parquet")
    assert rc == 1 and not (tmp_path / "dup.parquet").exists()
