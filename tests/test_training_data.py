"""Training data (paper Sec. VI-A/B): labels -> per-slice boxes, dataset-homogeneous 2:1 sampling,
augmentation that moves boxes with the image, config-driven label kinds."""
import numpy as np
import pandas as pd
import pytest
import torch

from lens_core.training.config import TrainConfig
from lens_core.training.data import SliceReader, augment, build_index, load_batch, slice_boxes
from lens_core.training.sampler import DatasetHomogeneousSampler
from synthetic_prep import make_prep

DATASETS = ["deeplesion", "luna"]


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return make_prep(tmp_path_factory.mktemp("prep"), datasets=DATASETS, n_volumes=4, depth=24, size=64)


def cfg(**kw):
    return TrainConfig.from_config({"datasets": DATASETS, **kw})


def test_a_3d_label_is_a_2d_box_on_every_slice_it_spans_shrinking_toward_its_ends():
    row = pd.Series({"kind": "3d", "z": 4, "z1": 2, "z2": 7, "x1": 10.0, "y1": 20.0, "x2": 30.0, "y2": 30.0}).to_frame().T
    boxes = slice_boxes(next(row.itertuples(index=False)), min_end_scale=0.5)
    assert [z for z, _ in boxes] == [2, 3, 4, 5, 6]
    widths = [b[2] - b[0] for _, b in boxes]
    assert widths[2] == pytest.approx(20.0)  # the centre slice carries the full box
    assert widths[0] == widths[4] < widths[1] == widths[3] < widths[2]
    assert min(widths) >= 10.0
    for _, b in boxes:  # same centre on every slice
        assert (b[0] + b[2]) / 2 == pytest.approx(20.0) and (b[1] + b[3]) / 2 == pytest.approx(25.0)


def test_label_kinds_from_config_decide_positives_and_ignores(prep, tmp_path):
    les = pd.read_parquet(prep / "deeplesion" / "lesions.parquet")
    extra = les.iloc[[0]].assign(label_kind="uncertain", z=1, z1=1, z2=2, lesion_id="u")
    mined = les.iloc[[0]].assign(label_kind="mined_cross_slice", z=les.iloc[0].z + 1, lesion_id="m")
    table = pd.concat([les, extra, mined], ignore_index=True)
    vid = les.iloc[0].volume_id
    round2 = build_index(cfg(), prep, table)["deeplesion"]
    assert round2.labels[(vid, 1)].ignore and not round2.labels[(vid, 1)].gt
    assert round2.labels[(vid, int(les.iloc[0].z) + 1)].gt
    assert len(round2.lesion_slices) == len(les) + 1
    # an ablation that does not trust mined labels: they are dropped, uncertain still ignored
    strict = build_index(cfg(gt_kinds=["gt"]), prep, table)["deeplesion"]
    assert len(strict.lesion_slices) == len(les) and (vid, int(les.iloc[0].z) + 1) not in strict.labels
    # the round-2 table only replaces the datasets it contains
    assert len(round2.lesion_slices) and build_index(cfg(), prep, table)["luna"].lesion_slices


def test_bad_label_rows_name_the_file_and_row(prep):
    les = pd.read_parquet(prep / "deeplesion" / "lesions.parquet")
    bad = les.copy()
    bad.loc[3, "x2"] = bad.loc[3, "x1"]
    with pytest.raises(ValueError, match="labels table: row 3"):
        build_index(cfg(), prep, bad)
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_config({"datasets": DATASETS, "epohcs": 3})


def test_batches_hold_one_dataset_and_positives_outnumber_negatives_two_to_one(prep):
    index = build_index(cfg(unlabeled_slices=True), prep)
    sampler = DatasetHomogeneousSampler(index, batch_size=4, pos_neg_ratio=2, seed=0)
    plan = sampler.plan(0)
    assert {name for name, _ in plan} == set(DATASETS)
    for name in DATASETS:
        keys = [k for n, ks in plan if n == name for k in ks]
        assert len(keys) == len(set(keys))
        pos = [k for k in keys if index[name].labels.get(k) and index[name].labels[k].gt]
        neg = [k for k in keys if k not in index[name].labels]
        assert len(pos) + len(neg) == len(keys)
        assert len(neg) == round(len(pos) / 2)
    assert all(len(ks) <= 4 for _, ks in plan)
    assert sampler.plan(0) == plan and sampler.plan(1) != plan


@pytest.mark.parametrize("steps", [1, 3, 50])
def test_a_step_budget_gives_that_many_batches_whatever_the_corpus_size(prep, steps):
    """steps_per_epoch: N batches per epoch, one dataset each, the full pass's dataset mix, 2:1 pos:neg."""
    index = build_index(cfg(unlabeled_slices=True), prep)  # DeepLesion's negatives too (round 2's sampling)
    full = DatasetHomogeneousSampler(index, batch_size=4, pos_neg_ratio=2, seed=0).plan(0)
    sampler = DatasetHomogeneousSampler(index, batch_size=4, pos_neg_ratio=2, seed=0, steps_per_epoch=steps)
    plan = sampler.plan(0)
    assert len(plan) == steps and all(len(ks) == 4 for _, ks in plan)
    share = {n: sum(1 for m, _ in full if m == n) / len(full) for n in DATASETS}
    for name in DATASETS:
        got = sum(1 for n, _ in plan if n == name)
        assert abs(got - share[name] * steps) < 1  # largest-remainder split of the full pass's mix
        keys = [k for n, ks in plan if n == name for k in ks]
        pos = [k for k in keys if index[name].labels.get(k) and index[name].labels[k].gt]
        neg = [k for k in keys if k not in index[name].labels]
        assert len(pos) + len(neg) == len(keys)
        assert len(neg) == round(len(keys) / 3)
        if len(keys) <= len(set(index[name].negatives)):  # within one pass over a list nothing repeats
            assert len(set(neg)) == len(neg)
    assert sampler.plan(0) == plan and sampler.plan(1) != plan
    # the same budget on a corpus with every volume twice (the index's lists doubled): still N batches
    for ds in index.values():
        ds.lesion_slices = ds.lesion_slices * 2
        ds.negatives = ds.negatives * 2
    assert len(DatasetHomogeneousSampler(index, 4, 2, seed=0, steps_per_epoch=steps).plan(0)) == steps
    with pytest.raises(ValueError, match="steps_per_epoch"):
        cfg(steps_per_epoch=0)


def test_negative_slices_keep_away_from_2d_key_slices(prep):
    c = cfg(neg_gap_2d=4, unlabeled_slices=True)
    ds = build_index(c, prep)["deeplesion"]
    les = pd.read_parquet(prep / "deeplesion" / "lesions.parquet")
    for r in les.itertuples():
        near = {(r.volume_id, z) for z in range(r.z - 4, r.z + 5)}
        assert not near & set(ds.negatives)
    assert ds.negatives


def test_augmentation_moves_boxes_with_the_image():
    img = torch.full((3, 64, 64), -1.0)
    img[:, 20:30, 12:40] = 2.0
    box = np.array([[12.0, 20.0, 40.0, 30.0]])
    c = cfg()
    for seed in range(5):
        out, moved, _ = augment(img, box, np.zeros((0, 4)), np.random.default_rng(seed), c)
        x1, y1, x2, y2 = moved[0]
        inside = out[0, int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
        assert (inside > 1.5).all()
        bright = (out[0] > 1.0).nonzero().float()
        assert abs(bright[:, 0].mean() - (y1 + y2) / 2) < 1.0 and abs(bright[:, 1].mean() - (x1 + x2) / 2) < 1.0


def test_batch_targets_come_from_the_slice_labels(prep):
    c = cfg(augment=False)
    index = build_index(c, prep)
    ds = index["luna"]
    key = ds.lesion_slices[0][0]
    batch = load_batch([key], ds, SliceReader(3), c, stride=4, rng=None)
    assert batch.images.shape == (1, 3, 64, 64) and batch.dataset == "luna"
    assert torch.allclose(batch.targets[0].boxes, torch.tensor(ds.labels[key].gt, dtype=torch.float32))
    assert batch.afp.center.sum() >= 1


def test_crops_keep_a_lesion_whole_and_turn_slivers_into_ignored_regions():
    from lens_core.training.data import crop

    img = torch.zeros(3, 100, 140)
    gt = np.array([[100.0, 40.0, 120.0, 60.0], [5.0, 5.0, 25.0, 25.0]])
    for seed in range(20):
        rng = np.random.default_rng(seed)
        out, g, ign = crop(img + torch.arange(140.0), gt, np.zeros((0, 4)), 64, rng)
        assert out.shape == (3, 64, 64) and len(g) >= 1
        x0 = float(out[0, 0, 0])  # the pixel values encode the column: the window's offset
        whole = [b for b in gt if b[0] >= x0 and b[2] <= x0 + 64]
        assert len(whole) >= 1
        for b in g:  # every kept lesion is a window-coordinate copy of one that is mostly inside
            assert (b >= 0).all() and (b <= 64).all()
        assert len(g) + len(ign) <= 2
    out, g, ign = crop(img, gt, np.zeros((0, 4)), 128, np.random.default_rng(0))
    assert out.shape == (3, 128, 128) and (out[:, 100:] == -1).all()  # padded with air
    assert len(g) == 2 and len(ign) == 0


def test_a_slice_with_only_uncertain_boxes_stays_a_negative_with_its_regions_ignored(prep):
    """Table IV's last row: unlabeled slices join training; their uncertain lesions are ignored, not
    turned into lesions and not a reason to drop the slice (or its neighbours) from the negatives."""
    les = pd.read_parquet(prep / "deeplesion" / "lesions.parquet")
    vid = les.iloc[0].volume_id
    taken = set(les.loc[les.volume_id == vid, "z"].astype(int))
    n = int(pd.read_parquet(prep / "deeplesion" / "volumes.parquet").set_index("volume_id").n_slices[vid])
    before = build_index(cfg(unlabeled_slices=True), prep)["deeplesion"]
    free = [z for z in range(n) if (vid, z) in set(before.negatives)]
    assert free, "the synthetic volume needs a negative slice for this test"
    z = free[0]
    unc = les.iloc[[0]].assign(label_kind="uncertain", kind="2d", z=z, z1=z, z2=z + 1, lesion_id="u")
    after = build_index(cfg(unlabeled_slices=True), prep, pd.concat([les, unc], ignore_index=True))["deeplesion"]
    assert (vid, z) in after.negatives and after.negatives == before.negatives
    assert after.labels[(vid, z)].ignore and not after.labels[(vid, z)].gt
    assert z not in taken


def test_round_1_samples_only_the_labelled_slices_of_a_key_slice_dataset(prep):
    """The paper's round 1: DeepLesion's slices without a label are unlabelled, not lesion-free, so they
    are not sampled at all; a single-type set (3D labels, complete for its type) keeps its negatives.
    With unlabeled_slices (round 2, Table IV "+ Unlabeled") DeepLesion's far slices join as negatives."""
    les = pd.read_parquet(prep / "deeplesion" / "lesions.parquet")
    vid = les.iloc[0].volume_id
    z = next(z for z in range(24) if all(abs(z - int(k)) > 4 for k in les.loc[les.volume_id == vid, "z"]))
    unc = les.iloc[[0]].assign(label_kind="uncertain", kind="2d", z=z, z1=z, z2=z + 1, lesion_id="u")
    table = pd.concat([les, unc], ignore_index=True)
    for labels in (None, table):  # round 1's own labels, and a round-2 table with an uncertain box
        r1 = build_index(cfg(), prep, labels)
        assert r1["deeplesion"].negatives == []
        assert len(r1["deeplesion"].lesion_slices) == len(les)
        plan = DatasetHomogeneousSampler(r1, batch_size=4, seed=0).plan(0)
        sampled = {k for n, ks in plan if n == "deeplesion" for k in ks}
        assert sampled == {k for keys in r1["deeplesion"].lesion_slices for k in keys}
        assert all(r1["deeplesion"].labels[k].gt for k in sampled)  # no unlabelled or uncertain-only slice
        full = build_index(cfg(unlabeled_slices=True), prep, labels)
        assert r1["luna"].negatives and r1["luna"].negatives == full["luna"].negatives
        assert (vid, z) in full["deeplesion"].negatives
    # pooling keeps the pooled single-type set's negatives (they are lesion-free for its type)
    pooled = build_index(cfg(datasets=["deeplesion"], pool=["luna"]), prep)["deeplesion"]
    assert pooled.negatives == r1["luna"].negatives


def test_volume_fraction_keeps_a_nested_seed_independent_subset_of_training_volumes(tmp_path):
    """Paper Fig. 7: a dataset trained on 25 / 50 / 100 % of its training volumes; the smaller sets lie
    inside the larger ones and do not change with the training seed, so only the amount of data varies."""
    root = make_prep(tmp_path, datasets=DATASETS, n_volumes=10, depth=12, size=32, splits=("train", "train", "val"))
    vols = pd.read_parquet(root / "luna" / "volumes.parquet")
    train = set(vols.loc[vols.split == "train", "volume_id"])

    def volumes_of(ds):
        return {v for v, _ in ds.negatives} | {v for keys in ds.lesion_slices for v, _ in keys}

    def kept(fraction, seed=0, split="train"):
        c = cfg(volume_fraction={"luna": fraction}, seed=seed) if fraction else cfg(seed=seed)
        return volumes_of(build_index(c, root, split=split)["luna"])

    assert kept(None) == train and len(train) == 7
    quarter, half, full = kept(0.25), kept(0.5), kept(1.0)
    assert len(quarter) == 2 and len(half) == 4 and full == train  # ceil(f * 7)
    assert quarter < half < full
    assert kept(0.25, seed=5) == quarter and kept(0.01) and len(kept(0.01)) == 1
    assert kept(0.25, split="val") == kept(None, split="val")  # validation volumes are never dropped
    # other datasets keep all their volumes
    dl = build_index(cfg(volume_fraction={"luna": 0.25}), root)["deeplesion"]
    assert volumes_of(dl) == volumes_of(build_index(cfg(), root)["deeplesion"])


@pytest.mark.parametrize("fraction, message", [
    ({"luna": 0.0}, r"volume_fraction of 'luna' must be in \(0, 1\]"),
    ({"luna": 1.5}, r"must be in \(0, 1\]"),
    ({"luna": "half"}, r"must be in \(0, 1\]"),
    ({"lits": 0.5}, r"volume_fraction names 'lits', not in datasets"),
    ([0.5], "volume_fraction must map dataset -> fraction"),
])
def test_bad_volume_fractions_are_rejected_with_a_clear_error(fraction, message):
    with pytest.raises(ValueError, match=message):
        cfg(volume_fraction=fraction)


@pytest.mark.parametrize("n,z,expect", [(3, 5, [4, 5, 6]), (6, 5, [2, 3, 4, 5, 6, 7]), (9, 1, [0, 0, 0, 0, 1, 2, 3, 4, 5]),
                                        (6, 9, [6, 7, 8, 9, 9, 9])])
def test_a_stack_has_the_asked_number_of_slices_around_its_key_slice(n, z, expect):
    """Two groups of 3 (the CPU preset) as well as one or three: edge slices repeat past the ends."""
    from lens_core.model.network_input import stack_slices

    vol = np.arange(10)[:, None, None] * np.ones((1, 2, 2))
    assert stack_slices(vol, z, n)[:, 0, 0].tolist() == expect


def test_mined_boxes_are_slices_of_3d_lesions_and_an_epoch_samples_one_slice_of_each(prep):
    """Issue 21 / paper Table IV: one positive slice per 3D lesion per epoch. A cross-slice box joins its
    key-slice lesion (same volume and lesion_id); an intra-patient tracklet is one new lesion, whichever
    annotation (of another study) it matched."""
    les = pd.read_parquet(prep / "deeplesion" / "lesions.parquet")
    key = les.iloc[0]
    vid, z = key.volume_id, int(key.z)
    cross = pd.concat([les.iloc[[0]].assign(label_kind="mined_cross_slice", z=z + d) for d in (1, 2)])
    tracklet = pd.concat([les.iloc[[0]].assign(label_kind="mined_intra_patient", tracklet_id=7, z=z + d,
                                               lesion_id="other-study/001", x1=key.x1 + 20, x2=key.x2 + 20)
                          for d in (-3, -4, -5)])
    table = pd.concat([les.assign(tracklet_id=-1), cross, tracklet], ignore_index=True)
    ds = build_index(cfg(unlabeled_slices=True), prep, table)["deeplesion"]
    assert len(ds.lesion_slices) == len(les) + 1  # the key lesion grew, the tracklet is one more
    grown = next(keys for keys in ds.lesion_slices if (vid, z) in keys)
    assert grown == [(vid, z), (vid, z + 1), (vid, z + 2)]
    assert [(vid, z - 5), (vid, z - 4), (vid, z - 3)] in ds.lesion_slices
    one = DatasetHomogeneousSampler({"deeplesion": ds}, 4, slices_per_lesion=1, seed=0)
    every = DatasetHomogeneousSampler({"deeplesion": ds}, 4, slices_per_lesion=None, seed=0)
    # (a few lesions may share their key slice: a slice counts once)
    pos_one = set(one._positives(ds, np.random.default_rng(0)))
    assert len(pos_one & set(grown)) == 1 and len(pos_one & {(vid, z - 5), (vid, z - 4), (vid, z - 3)}) == 1
    assert set(grown) <= set(every._positives(ds, np.random.default_rng(0)))
    # over epochs the one slice of a lesion changes
    picked = {next(iter(set(one._positives(ds, np.random.default_rng(e))) & set(grown))) for e in range(20)}
    assert picked == set(grown)


def test_the_paper_epoch_grows_with_the_data_and_a_step_cap_does_not(prep):
    """An epoch is one pass over every dataset's positives: adding a dataset adds its batches, it does not
    take them from the others (issue 21); steps_per_epoch is the smoke-test cap."""
    both = build_index(cfg(), prep)
    alone = build_index(cfg(datasets=["deeplesion"]), prep)
    count = lambda idx, **kw: pd.Series([n for n, _ in DatasetHomogeneousSampler(idx, 4, **kw).plan(0)]).value_counts()
    assert count(both)["deeplesion"] == count(alone)["deeplesion"] and count(both)["luna"] > 0
    capped = count(both, steps_per_epoch=5)
    assert capped.sum() == 5 and capped["deeplesion"] < count(both)["deeplesion"]
