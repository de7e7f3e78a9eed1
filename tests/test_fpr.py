"""3D false-positive reduction (paper Sec. IV-D, Eq. 4, Sec. VI-B): the inflated ResNet-18 layout,
multi-scale ROI pooling, TP/FP sampling, score fusion, and a network that learns."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lens_core import cli
from lens_core.fpr.model import PRESETS, FprNet, focal_loss, load_fpr, roi_pool_3d, save_fpr
from lens_core.fpr.patches import augment, centre_window, crop_patches, flip, transpose_xy
from lens_core.fpr.samples import FP, TP, UNUSED, epoch_samples, label_proposals
from lens_core.fpr.score import eq4, fpr_scores, h5_volumes, with_fpr_scores
from lens_core.fpr.train import FprTrainConfig, SampleSource, roc_auc, train_fpr
from synthetic_prep import make_prep
from killing import run_killed



pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def lens_main():
    return cli.main


def convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv3d)]


# ------------------------------------------------------------------------------------------ network
@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_resnet18_3x3_convs_become_1x3x3_in_blocks_1_to_3_and_3x3x3_in_block_4(preset):
    net = FprNet(preset)
    assert not [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    assert net.stem[0].kernel_size == (1, 7, 7)
    widths = PRESETS[preset].widths
    for i, layer in enumerate([net.layer1, net.layer2, net.layer3, net.layer4]):
        spatial = [c for c in convs(layer) if c.kernel_size[1:] == (3, 3)]
        assert len(spatial) == 4  # ResNet-18: two BasicBlocks of two 3x3 convs per ResBlock
        assert {c.kernel_size for c in spatial} == {(3, 3, 3) if i == 3 else (1, 3, 3)}
        assert {c.kernel_size for c in convs(layer)} - {c.kernel_size for c in spatial} <= {(1, 1, 1)}
        assert spatial[-1].out_channels == widths[i]
        # blocks 1-3 keep every slice (ROI pooling reads the box's slices); block 4 strides in z
        assert {c.stride[0] for c in convs(layer)} == ({1, 2} if i == 3 else {1})


def test_multiscale_roi_pooling_shapes_box_regions_from_blocks_1_to_3_and_the_whole_patch_from_block_4():
    net = FprNet("cpu").eval()
    p = net.preset
    d, h, w = p.patch
    patch = torch.randn(3, 1, d, h, w)
    boxes = torch.tensor([[10.0, 10, 2, 20, 22, 5], [0, 0, 0, w, h, d], [15, 15, 4, 17, 18, 5]])
    pooled = net.features(patch, boxes)
    k = p.roi_size
    assert [tuple(f.shape) for f in pooled] == [(3, p.widths[0], k, k), (3, p.widths[1], k, k),
                                                (3, p.widths[2], k, k), (3, p.widths[3])]
    assert net.feature_dim == k * k * sum(p.widths[:3]) + p.widths[3]
    assert net(patch, boxes).shape == (3,)
    with pytest.raises(ValueError, match="B, 6"):
        net(patch, boxes[:2])


def test_roi_pooling_averages_the_box_region_over_the_slices_the_box_spans():
    # feature value = slice index inside a square, -100 outside it
    d, h, w = 8, 16, 16
    feat = torch.full((1, 1, d, h, w), -100.0)
    for z in range(d):
        feat[0, 0, z, 4:12, 4:12] = z
    # input 2x larger in-plane than the map (stride 2), same slices
    out = roi_pool_3d(feat, torch.tensor([[8.0, 8, 2, 24, 24, 5]]), (d, 32, 32), 2)
    assert torch.allclose(out, torch.full_like(out, (2 + 3 + 4) / 3))
    # a box thinner than a slice still pools the slice holding its centre
    out = roi_pool_3d(feat, torch.tensor([[8.0, 8, 6.2, 24, 24, 6.4]]), (d, 32, 32), 2)
    assert torch.allclose(out, torch.full_like(out, 6.0))


def test_imagenet_weights_are_inflated_from_a_local_resnet18_file(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    ref = resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")
    net = FprNet("paper", weights_path=str(tmp_path / "resnet18.pth"))
    # 1x3x3: the 2D kernel itself; 3x3x3: repeated over depth / 3, so a z-constant input gives the 2D
    # response; the RGB stem is summed for the one CT channel
    torch.testing.assert_close(net.layer2[1].conv1.weight[:, :, 0], ref.layer2[1].conv1.weight)
    torch.testing.assert_close(net.layer4[0].conv2.weight.sum(2), ref.layer4[0].conv2.weight)
    torch.testing.assert_close(net.stem[0].weight[:, 0, 0], ref.conv1.weight.sum(1))
    torch.testing.assert_close(net.layer3[0].bn1.running_var, ref.layer3[0].bn1.running_var)
    with pytest.raises(ValueError, match="widths"):
        FprNet("cpu", weights_path=str(tmp_path / "resnet18.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        FprNet("paper", weights_path=str(tmp_path / "nope.pth"))


def test_saved_network_loads_with_weights_only_and_scores_the_same(tmp_path):
    torch.manual_seed(1)
    net = FprNet("cpu").eval()
    d, h, w = net.preset.patch
    x, b = torch.randn(2, 1, d, h, w), torch.tensor([[8.0, 8, 2, 20, 20, 6]] * 2)
    save_fpr(tmp_path / "fpr.pt", net, {"note": "x"})
    blob = torch.load(tmp_path / "fpr.pt", weights_only=True)
    assert blob["meta"]["preset"]["patch"] == list(net.preset.patch)
    loaded, meta = load_fpr(tmp_path / "fpr.pt")
    assert meta["note"] == "x"
    torch.testing.assert_close(loaded(x, b), net(x, b))
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.pt"):
        load_fpr(tmp_path / "bad.pt")


# ------------------------------------------------------------------------------------------ patches
def test_patch_is_centred_on_the_box_and_large_boxes_are_resampled_into_it():
    vol = np.zeros((12, 80, 80), np.uint8)  # air
    vol[4:7, 30:40, 20:30] = 128  # a bright block: x 20..30, y 30..40, z 4..7
    big = np.zeros((12, 80, 80), np.uint8)
    big[2:9, 10:70, 10:70] = 128
    patches, local = crop_patches(vol, np.array([[20.0, 30, 4, 30, 40, 7]]), (8, 32, 32))
    assert patches.shape == (1, 1, 8, 32, 32)
    z1, y1, x1 = (int(v) for v in local[0, [2, 1, 0]])
    z2, y2, x2 = (int(v) for v in local[0, [5, 4, 3]])
    inside = patches[0, 0, z1:z2, y1:y2, x1:x2]
    assert (x1, y1, x2, y2) == (11, 11, 21, 21) and (z1, z2) == (2, 5)
    assert torch.allclose(inside, torch.ones_like(inside))  # v / 64 - 1 with v = 128
    assert float(patches.sum()) == pytest.approx(float(inside.sum()) - (patches.numel() - inside.numel()))
    # a 60-px box: the patch covers 2 x 60 px in-plane, so the box is half the patch
    patches, local = crop_patches(big, np.array([[10.0, 10, 2, 70, 70, 9]]), (8, 32, 32))
    np.testing.assert_allclose(local[0].numpy(), [8, 8, 0, 24, 24, 7], atol=1e-5)
    # slices beyond the volume's ends are air (-1), inside it water is 0
    water = np.full((12, 80, 80), 64, np.uint8)
    patches, _ = crop_patches(water, np.array([[20.0, 30, 0, 30, 40, 1]]), (8, 32, 32))
    assert torch.all(patches[0, 0, :3] == -1.0) and torch.all(patches[0, 0, 3:] == 0.0)


def test_flipping_moves_the_box_with_the_lesion():
    vol = np.zeros((10, 40, 40), np.uint8)
    vol[2:5, 5:13, 25:33] = 128
    patches, local = crop_patches(vol, np.array([[25.0, 5, 2, 33, 13, 5]]), (8, 32, 32))
    fp, fb = flip(patches, local, (True, True, True))
    x1, y1, z1, x2, y2, z2 = (int(round(v)) for v in fb[0].tolist())
    assert torch.all(fp[0, 0, z1:z2, y1:y2, x1:x2] == 1.0)


def test_a_patch_cropped_with_a_margin_holds_the_scoring_patch_in_its_middle():
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 256, (12, 60, 70), dtype=np.uint8)
    boxes = np.array([[20.0, 30, 4, 30, 40, 7], [2, 3, 0, 50, 55, 3], [60, 50, 9, 69, 59, 12]])  # small, big, at edges
    p0, b0 = crop_patches(vol, boxes, (8, 32, 32))
    p4, b4 = crop_patches(vol, boxes, (8, 32, 32), margin=4)
    assert p4.shape == (3, 1, 8, 40, 40)
    pc, bc = centre_window(p4, b4, (8, 32, 32))
    torch.testing.assert_close(pc, p0, atol=1e-4, rtol=0)
    torch.testing.assert_close(bc, b0, atol=1e-4, rtol=0)


def test_augmentation_moves_the_box_with_the_lesion_and_covers_shifts_mirrors_and_transposes():
    vol = np.zeros((10, 60, 60), np.uint8)
    vol[3:6, 20:26, 24:34] = 128  # a bright block, wider than high: x 24..34, y 20..26, z 3..6
    patches, local = crop_patches(vol, np.array([[24.0, 20, 3, 34, 26, 6]] * 64), (8, 32, 32), margin=4)
    rng = np.random.default_rng(0)
    out, b = augment(patches, local, (8, 32, 32), rng)
    assert out.shape == (64, 1, 8, 32, 32)
    for i in range(64):
        x1, y1, z1, x2, y2, z2 = (int(round(v)) for v in b[i].tolist())
        assert torch.all(out[i, 0, z1:z2, y1:y2, x1:x2] == 1.0)  # the box is still exactly on the block
        assert (out[i] == 1.0).sum() == 3 * 6 * 10  # the whole block, nothing cut off
    # shifted by up to 4 px (the margin) off the centre, and both orientations of the wide block
    off = torch.cat([(b[:, 0] + b[:, 3]) / 2 - 16, (b[:, 1] + b[:, 4]) / 2 - 16]).round()
    assert off.abs().max() == 4 and len(set(off.tolist())) >= 7
    widths = (b[:, 3] - b[:, 0]).round()
    assert set(widths.tolist()) == {6.0, 10.0}
    # transposing twice is the identity
    t2 = transpose_xy(*transpose_xy(out, b))
    torch.testing.assert_close(t2[0], out)
    torch.testing.assert_close(t2[1], b)


# ------------------------------------------------------------------------------------------ samples
def proposal(vol, x1, y1, z1, x2, y2, z2, score=0.5):
    return {"volume_id": vol, "x1": x1, "y1": y1, "z1": z1, "x2": x2, "y2": y2, "z2": z2, "score": score}


def label(vol, z, x1, y1, x2, y2, kind):
    return {"volume_id": vol, "z": z, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "z1": z, "z2": z + 1,
            "kind": "2d", "label_kind": kind}


def test_tp_fp_sampling_rules_of_sec_vi_b():
    labels = pd.DataFrame([
        label("v", 5, 10, 10, 20, 20, "gt"),                   # an annotation (key slice 5)
        label("v", 8, 40, 40, 50, 50, "mined_cross_slice"),    # a mined missing annotation
        label("v", 12, 60, 60, 70, 70, "uncertain"),           # an uncertain lesion
    ])
    props = pd.DataFrame([
        proposal("v", 10, 10, 3, 20, 20, 8),     # spans slice 5, IoU 1 with the annotation -> TP
        proposal("v", 41, 40, 7, 51, 50, 10),    # IoU 0.82 with the mined box on slice 8 -> TP
        proposal("v", 60, 60, 11, 70, 70, 14),   # the uncertain lesion: never an FP
        proposal("v", 61, 61, 11, 69, 69, 14),   # inside it (IoU 0.64): never an FP either
        proposal("v", 10, 10, 6, 20, 20, 8),     # same x/y as the annotation but misses slice 5 -> FP
        proposal("v", 10, 10, 5, 16, 20, 6),     # IoU 0.6 > 0.5 -> TP
        proposal("v", 10, 10, 5, 15, 20, 6),     # IoU exactly 0.5: not > theta, not < theta_FP
        proposal("v", 12, 10, 5, 22, 20, 6),     # IoU 0.67 -> TP
        proposal("v", 15, 10, 5, 25, 20, 6),     # IoU 1/3: between theta_FP and theta -> unused
        proposal("v", 17, 10, 5, 27, 20, 6),     # IoU 0.18 < 0.3 with everything -> FP
        proposal("v", 80, 80, 0, 90, 90, 20),    # far from every label -> FP
        proposal("w", 10, 10, 3, 20, 20, 8),     # another volume: the labels of v do not apply -> FP
    ])
    y = label_proposals(props, labels)
    assert y.tolist() == [TP, TP, UNUSED, UNUSED, FP, TP, UNUSED, TP, UNUSED, FP, FP, FP]
    # the uncertain lesion counts for nothing positive: as "gt" it would make a TP
    y_gt = label_proposals(props, labels.assign(label_kind=["gt", "mined_cross_slice", "gt"]))
    assert y_gt[2] == TP and y_gt[3] == TP


def test_each_epoch_has_one_tp_to_two_fps_and_never_samples_unused_proposals():
    y = np.array([TP] * 5 + [FP] * 40 + [UNUSED] * 7)
    e0, e1 = epoch_samples(y, 0, seed=3), epoch_samples(y, 1, seed=3)
    for e in (e0, e1):
        assert (y[e] == TP).sum() == 5 and (y[e] == FP).sum() == 10 and (y[e] != UNUSED).all()
        assert sorted(e[y[e] == TP]) == list(range(5))  # every TP once (the paper's epoch)
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e0, epoch_samples(y, 0, seed=3))
    # a fixed number of TP draws (the cpu preset): few TPs repeat evenly, FPs stay distinct
    e = epoch_samples(y, 0, seed=3, tp_per_epoch=12)
    assert (y[e] == TP).sum() == 12 and np.bincount(e[y[e] == TP]).min() >= 2
    assert (y[e] == FP).sum() == 24 and len(set(e[y[e] == FP])) == 24
    with pytest.raises(ValueError, match="TP"):
        epoch_samples(np.array([FP, FP]), 0)


# ------------------------------------------------------------------------------------------ Eq. 4
def test_eq4_final_score_is_the_mean_of_lens_and_fpr_and_score_column_is_selectable():
    props = pd.DataFrame([proposal("v", 0, 0, 0, 4, 4, 2, s) for s in (0.9, 0.4, 0.1)])
    s_fpr = np.array([0.1, 0.8, 0.3])
    assert eq4(0.9, 0.1) == pytest.approx(0.5)
    fused = with_fpr_scores(props, s_fpr, "fused")
    np.testing.assert_allclose(fused["score_fused"], [0.5, 0.6, 0.2])
    np.testing.assert_allclose(fused["score"], fused["score_fused"])
    np.testing.assert_allclose(fused["score_lens"], [0.9, 0.4, 0.1])
    # re-scoring a scored table keeps LENS's own score, not the previous fused one
    again = with_fpr_scores(fused, s_fpr, "fpr")
    np.testing.assert_allclose(again["score"], s_fpr)
    np.testing.assert_allclose(again["score_fused"], [0.5, 0.6, 0.2])
    np.testing.assert_allclose(with_fpr_scores(again, s_fpr, "lens")["score"], [0.9, 0.4, 0.1])
    with pytest.raises(ValueError, match="score"):
        with_fpr_scores(props, s_fpr, "max")


def test_roc_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 50).astype(bool), rng.integers(0, 5, 50).astype(float)  # with ties
    pairs = [(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]]
    assert roc_auc(y, s) == pytest.approx(np.mean(pairs))


# ------------------------------------------------------------------------------------------ learning
def synthetic_proposals(prep, dataset, seed, n_fp=3):
    """What LENS's TPs and hard FPs look like on a make_prep tree: jittered truth boxes (slices
    z - 1 .. z + 1), the same boxes displaced by 0.8 of their size (IoU ~0.1: a rim of lesion at the
    edge, so brightness alone does not tell them apart) and random background boxes."""
    rng = np.random.default_rng(seed)
    truth = pd.read_parquet(prep / dataset / "truth.parquet")
    vols = pd.read_parquet(prep / dataset / "volumes.parquet")
    rows = []
    for t in truth.itertuples():
        j = rng.uniform(-1, 1, 4)
        rows.append(proposal(t.volume_id, t.x1 + j[0], t.y1 + j[1], t.z - 1, t.x2 + j[2], t.y2 + j[3], t.z + 2, 0.6))
        dx, dy = [(0.8, 0), (-0.8, 0), (0, 0.8), (0, -0.8)][rng.integers(4)]
        w, h = t.x2 - t.x1, t.y2 - t.y1
        rows.append(proposal(t.volume_id, t.x1 + dx * w, t.y1 + dy * h, t.z - 1, t.x2 + dx * w, t.y2 + dy * h, t.z + 2,
                             0.5))
    for v in vols.itertuples():
        for _ in range(n_fp):
            s = rng.uniform(6, 14)
            x, y = rng.uniform(0, v.width - s, 2)
            z = int(rng.integers(0, v.n_slices - 2))
            rows.append(proposal(v.volume_id, x, y, z, x + s, y + s, z + 2, 0.4))
    props = pd.DataFrame(rows)
    props["patient_id"] = props["volume_id"]
    return props, truth


@pytest.fixture(scope="module")
def blob_prep(tmp_path_factory):
    root = tmp_path_factory.mktemp("fprprep")
    make_prep(root / "train", datasets=["deeplesion", "luna"], n_volumes=6, depth=10, size=48, lesions_per_volume=3,
              seed=5)
    make_prep(root / "test", datasets=["deeplesion"], n_volumes=3, depth=10, size=48, lesions_per_volume=3, seed=6)
    return root


def test_fpr_learns_to_tell_lesions_from_background_on_unseen_volumes(blob_prep, tmp_path, lens_main):
    props, _ = synthetic_proposals(blob_prep / "train", "deeplesion", 0)
    labels = pd.read_parquet(blob_prep / "train" / "deeplesion" / "lesions.parquet")
    props.to_parquet(tmp_path / "train.3d.parquet")
    labels.to_parquet(tmp_path / "labels.parquet")
    assert lens_main(["train-fpr", "--prep-dir", str(blob_prep / "train" / "deeplesion"),
                      "--proposals3d", str(tmp_path / "train.3d.parquet"), "--labels", str(tmp_path / "labels.parquet"),
                      "--out", str(tmp_path / "fpr.pt"), "--tp-per-epoch", "64", "--seed", "1",
                      "--no-progress"]) == 0
    model, meta = load_fpr(tmp_path / "fpr.pt")
    assert meta["stats"]["tp"] > 0 and meta["stats"]["fp"] > 0
    assert [h["samples"] for h in meta["history"]] == [192] * 6  # 64 TP + 128 FP in each of 6 epochs
    assert [h["lr"] for h in meta["history"]] == pytest.approx([2e-3] * 2 + [2e-4] * 2 + [2e-5] * 2)

    test_props, truth = synthetic_proposals(blob_prep / "test", "deeplesion", 1)
    test_props.to_parquet(tmp_path / "test.3d.parquet")
    assert lens_main(["score-fpr", "--model", str(tmp_path / "fpr.pt"), "--prep-dir",
                      str(blob_prep / "test" / "deeplesion"), "--proposals3d", str(tmp_path / "test.3d.parquet"),
                      "--out", str(tmp_path / "scored.parquet"), "--score", "fpr"]) == 0
    scored = pd.read_parquet(tmp_path / "scored.parquet")
    assert len(scored) == len(test_props)
    np.testing.assert_allclose(scored["score"], scored["score_fpr"])
    np.testing.assert_allclose(scored["score_fused"], (scored["score_lens"] + scored["score_fpr"]) / 2)
    is_lesion = label_proposals(test_props, truth.assign(label_kind="gt", kind="3d")) == TP
    assert is_lesion.sum() >= len(truth)
    assert roc_auc(is_lesion, scored["score_fpr"].to_numpy()) > 0.9
    assert meta["history"][-1]["loss"] < meta["history"][0]["loss"]
    # the same initial weights (seed 1) before training rank them the other way round: it was learned
    torch.manual_seed(1)
    s0 = fpr_scores(FprNet("cpu"), test_props, h5_volumes(blob_prep / "test" / "deeplesion" / "volumes.h5"))
    assert roc_auc(is_lesion, s0) < 0.6


def test_a_single_type_dataset_adds_tps_and_fps_and_its_excluded_findings_are_never_fps(blob_prep, tmp_path,
                                                                                          lens_main):
    props, _ = synthetic_proposals(blob_prep / "train", "deeplesion", 0)
    labels = pd.read_parquet(blob_prep / "train" / "deeplesion" / "lesions.parquet")
    xprops, _ = synthetic_proposals(blob_prep / "train", "luna", 2)
    xlabels = pd.read_parquet(blob_prep / "train" / "luna" / "lesions.parquet")
    xlabels.loc[0, "label_kind"] = "excluded"  # a finding LUNA's readers set aside: neither TP nor FP
    for name, df in (("p", props), ("l", labels), ("xp", xprops), ("xl", xlabels)):
        df.to_parquet(tmp_path / f"{name}.parquet")
    y, yx = label_proposals(props, labels), label_proposals(xprops, xlabels)
    # the jittered proposal on the excluded finding (first row of its lesion) is unused, not an FP
    on_excluded = np.flatnonzero((xprops["volume_id"] == xlabels.loc[0, "volume_id"]).to_numpy())[0]
    assert yx[on_excluded] == UNUSED and (yx == TP).sum() >= 10 and (yx == FP).sum() >= 10

    def train(*extra):
        assert lens_main(["train-fpr", "--prep-dir", str(blob_prep / "train" / "deeplesion"), "--proposals3d",
                          str(tmp_path / "p.parquet"), "--labels", str(tmp_path / "l.parquet"), "--out",
                          str(tmp_path / "fpr.pt"), "--epochs", "1", "--tp-per-epoch", "8", "--no-progress",
                          *extra]) == 0
        return load_fpr(tmp_path / "fpr.pt")[1]["stats"]

    alone = train()
    assert (alone["tp"], alone["fp"]) == ((y == TP).sum(), (y == FP).sum())
    both = train("--extra-source", str(blob_prep / "train" / "luna"), str(tmp_path / "xp.parquet"),
                 str(tmp_path / "xl.parquet"))
    assert (both["tp"], both["fp"]) == ((y == TP).sum() + (yx == TP).sum(), (y == FP).sum() + (yx == FP).sum())
    assert (both["main_tp"], both["main_fp"]) == (alone["tp"], alone["fp"])
    # its TPs alone (extra_fps off); held-out patients come from the main dataset only
    stats = train_fpr(FprTrainConfig.for_preset("cpu", epochs=2, tp_per_epoch=8, extra_fps=False, val_fraction=0.5),
                      blob_prep / "train" / "deeplesion", props, labels, tmp_path / "fpr2.pt", device="cpu",
                      extra_sources=[SampleSource(blob_prep / "train" / "luna", xprops, xlabels)])
    assert stats["tp"] == both["tp"] and stats["fp"] == (y == FP).sum()
    assert 0 < stats["val_tp"] + stats["val_fp"] < (y >= 0).sum()
    assert stats["train_tp"] == stats["tp"] - stats["val_tp"]
    history = load_fpr(tmp_path / "fpr2.pt")[1]["history"]
    assert all(0 <= h["val_auc"] <= 1 for h in history)
    assert stats["val_auc"] == history[-1]["val_auc"]  # the model's own held-out AUC: the last epoch's scores
    assert 0 <= stats["val_accuracy"] <= 1 and 0 <= stats["val_auc_lens"] <= 1 and 0 <= stats["val_auc_fused"] <= 1


def test_train_fpr_names_the_file_of_a_bad_table(blob_prep, tmp_path, lens_main):
    (tmp_path / "labels.parquet").write_bytes(b"garbage")
    props, _ = synthetic_proposals(blob_prep / "train", "deeplesion", 0)
    props.to_parquet(tmp_path / "p.parquet")
    rc = lens_main(["train-fpr", "--prep-dir", str(blob_prep / "train" / "deeplesion"), "--proposals3d",
                    str(tmp_path / "p.parquet"), "--labels", str(tmp_path / "labels.parquet"), "--out",
                    str(tmp_path / "fpr.pt")])
    assert rc == 1 and not (tmp_path / "fpr.pt").exists()
    with pytest.raises(ValueError, match="labels.parquet"):
        train_fpr(FprTrainConfig.for_preset("cpu"), blob_prep / "train" / "deeplesion", props,
                  tmp_path / "labels.parquet", tmp_path / "fpr.pt")


def test_training_and_scoring_steps_import_no_image_io_library():
    """FPR, proposal and training steps read only HDF5 / Parquet: a GPU node's Python without SimpleITK runs
    them (benchmarks/gpu_check.sh ran on one; the table schemas they use live in lens_core.preprocess.schema)."""
    import subprocess
    import sys

    code = ("import sys, lens_core.fpr.train, lens_core.fpr.score, lens_core.inference.command, "
            "lens_core.training.loop, lens_core.mining.schema; "
            "sys.exit('SimpleITK' in sys.modules or 'pydicom' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


@pytest.mark.parametrize("step, column, value, expected", [
    ("score-fpr", "score", np.nan, "score = nan, expected a finite number"),   # was: NaN final scores, exit 0
    ("train-fpr", "z2", -5.0, "inverted box"),                                # was: trained on anyway
    ("train-fpr", "z1", np.nan, "z1 = nan, expected a finite number"),        # was: an IndexError traceback
])
def test_fpr_steps_refuse_bad_proposal_values_naming_file_and_row(blob_prep, tmp_path, caplog, step, column, value,
                                                                   expected):
    from lens_core.cli import main

    props, _ = synthetic_proposals(blob_prep / "train", "deeplesion", 0)
    props.loc[3, column] = value
    props.to_parquet(tmp_path / "p.parquet")
    pd.read_parquet(blob_prep / "train" / "deeplesion" / "lesions.parquet").to_parquet(tmp_path / "l.parquet")
    prep = ["--prep-dir", str(blob_prep / "train" / "deeplesion"), "--proposals3d", str(tmp_path / "p.parquet")]
    if step == "score-fpr":
        save_fpr(tmp_path / "m.pt", FprNet("cpu"), {})  # any network: the table is refused before it is used
        argv = [step, "--model", str(tmp_path / "m.pt"), *prep, "--out", str(tmp_path / "out.parquet")]
    else:
        argv = [step, *prep, "--labels", str(tmp_path / "l.parquet"), "--out", str(tmp_path / "out.parquet")]
    assert main(argv) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "p.parquet (3D proposal table): row 3" in errors[0] and expected in errors[0], errors
    assert not (tmp_path / "out.parquet").exists()


def test_the_chance_loss_is_the_best_constant_predictions_focal_loss():
    """The FPR's loss curve is read against this line (issue 21): no constant score does better, and at a
    1:1 balance the best constant is 0.5, whose focal loss (gamma 2) is 0.25 ln 2."""
    from lens_core.fpr.train import chance_loss

    assert chance_loss(0.5) == pytest.approx(0.25 * np.log(2), abs=1e-6)
    share = 1 / 3  # the 1:2 TP:FP epochs
    for p in (0.1, 0.33, 0.5):
        logits = torch.full((3,), float(np.log(p / (1 - p))))
        constant = float(focal_loss(logits, torch.tensor([1.0, 0.0, 0.0])))
        assert chance_loss(share) <= constant + 1e-6


def test_train_fpr_killed_with_minus_9_resumes_to_the_weights_of_an_uninterrupted_run(blob_prep, tmp_path, lens_main):
    """Issue 24: the FPR trains in the one training loop (lens_core.training.engine): a checkpoint after every
    epoch, and `lens train-fpr --resume` after a kill -9 ends with the uninterrupted run's weights, bit for bit."""
    props, _ = synthetic_proposals(blob_prep / "train", "deeplesion", 0)
    props.to_parquet(tmp_path / "train.3d.parquet")
    pd.read_parquet(blob_prep / "train" / "deeplesion" / "lesions.parquet").to_parquet(tmp_path / "labels.parquet")

    def args(out, seed=1):
        return ["train-fpr", "--prep-dir", blob_prep / "train" / "deeplesion", "--proposals3d",
                tmp_path / "train.3d.parquet", "--labels", tmp_path / "labels.parquet", "--out", out,
                "--tp-per-epoch", "32", "--epochs", "3", "--seed", seed, "--threads", "1", "--no-progress"]

    assert lens_main([str(a) for a in args(tmp_path / "ref" / "fpr.pt")]) == 0
    run_killed(args(tmp_path / "run" / "fpr.pt"), epoch=2, batch=1)
    ckpt = tmp_path / "run" / "fpr.checkpoint.pt"
    assert ckpt.exists() and not (tmp_path / "run" / "fpr.pt").exists()
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2  # epochs 0 and 1 saved; epoch 2 died mid-way
    assert lens_main([str(a) for a in args(tmp_path / "run" / "fpr.pt")] + ["--resume"]) == 0
    assert not ckpt.exists() and not (tmp_path / "ref" / "fpr.checkpoint.pt").exists()
    (a, meta_a), (b, meta_b) = load_fpr(tmp_path / "ref" / "fpr.pt"), load_fpr(tmp_path / "run" / "fpr.pt")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert meta_a["history"] == meta_b["history"] and len(meta_a["history"]) == 3
    # a checkpoint of other settings (seed 2) is not continued: that run trains anew, to other weights
    run_killed(args(tmp_path / "other" / "fpr.pt"), epoch=1, batch=0)
    assert lens_main([str(a) for a in args(tmp_path / "other" / "fpr.pt", seed=2)] + ["--resume"]) == 0
    c = load_fpr(tmp_path / "other" / "fpr.pt")[0].state_dict()
    assert not all(torch.equal(sa[k], c[k]) for k in sa)
