"""LENS assembly (paper Sec. IV-A, IV-C): backbone presets, 3D fusion, per-dataset training."""
from pathlib import Path

import pytest
import torch

from lens_core.boxes import coder
from lens_core.model.backbone import build_backbone
from lens_core.model.lens import LENS, ImageTargets, load_lens, save_lens, total_loss
from lens_core.training.targets import batch_targets

H = W = 64


def batch_for(model, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, model.backbone.n_slices, H, W, generator=g)
    boxes = [torch.tensor([[10.0, 12.0, 30.0, 28.0]]), torch.tensor([[30.0, 30.0, 50.0, 44.0]])]
    ign = [torch.zeros(0, 4), torch.tensor([[2.0, 40.0, 14.0, 60.0]])]
    afp = batch_targets(boxes, ign, (H // model.stride, W // model.stride), model.stride)
    return images, afp, [ImageTargets(b, i) for b, i in zip(boxes, ign)]


def step(model, opt, dataset, seed):
    images, afp, targets = batch_for(model, seed)
    loss = total_loss(model.losses(images, dataset, afp, targets, generator=torch.Generator().manual_seed(seed)))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_batch_from_dataset_a_trains_only_a_and_the_shared_parts():
    torch.manual_seed(0)
    model = LENS(["a", "b"], preset="cpu", n_slices=3, fc_dim=64)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    step(model, opt, "b", seed=1)  # B's layers now have optimizer (momentum) state
    before = {n: snapshot(m) for n, m in {
        "afp_a": model.afps["a"], "afp_b": model.afps["b"], "cls_b": model.head.cls["b"], "box_b": model.head.box["b"],
        "cls_a": model.head.cls["a"], "backbone": model.backbone, "shared": model.head.shared}.items()}
    step(model, opt, "a", seed=2)
    after = {n: snapshot(m) for n, m in {
        "afp_a": model.afps["a"], "afp_b": model.afps["b"], "cls_b": model.head.cls["b"], "box_b": model.head.box["b"],
        "cls_a": model.head.cls["a"], "backbone": model.backbone, "shared": model.head.shared}.items()}
    for n in ["afp_b", "cls_b", "box_b"]:
        assert same(before[n], after[n]), f"{n} changed on a batch from dataset a"
    for n in ["afp_a", "cls_a", "backbone", "shared"]:
        assert not same(before[n], after[n]), f"{n} did not learn from a batch from dataset a"


@pytest.mark.parametrize("preset,slices", [("cpu", 3), ("cpu", 9), ("paper", 9)])
def test_backbone_presets_share_one_interface(preset, slices):
    torch.manual_seed(0)
    bb = build_backbone(preset, slices).eval()
    x = torch.randn(1, slices, H, W)
    with torch.no_grad():
        y = bb(x)
    assert y.shape == (1, bb.out_channels, H // bb.stride, W // bb.stride)
    assert bb.stride == (4 if preset == "paper" else 2)


def test_3d_fusion_lets_every_slice_group_reach_the_output():
    torch.manual_seed(0)
    bb = build_backbone("cpu", 9).eval()
    x = torch.randn(1, 9, H, W)
    with torch.no_grad():
        y = bb(x)
        for group in (0, 2):  # the groups above and below the centre group (slices 3-5)
            x2 = x.clone()
            x2[:, 3 * group:3 * group + 3] += 1.0
            assert not torch.allclose(bb(x2), y)


def test_the_default_cpu_preset_trains_its_3d_fusion_layers():
    """config.yaml's CPU preset has two groups of 3 slices, so the fusion convolutions run and learn."""
    import yaml

    from lens_core.training.config import TrainConfig
    from lens_core.training.loop import build_model

    train = yaml.safe_load((Path(__file__).resolve().parent.parent / "config.yaml").read_text())["train"]
    cfg = TrainConfig.from_config(train)
    assert cfg.preset == "cpu" and cfg.slices // 3 >= 2
    torch.manual_seed(0)
    model, meta = build_model(cfg)
    assert meta["n_slices"] == cfg.slices and len(model.backbone.fusion) > 0
    images, afp, targets = batch_for(model, 0)
    loss = total_loss(model.losses(images, cfg.datasets[0], afp, targets, generator=torch.Generator().manual_seed(0)))
    loss.backward()
    for conv in model.backbone.fusion:
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
        # every group's channels get gradient: none of the groups is ignored by the fusion
        per_group = conv.weight.grad.abs().reshape(conv.out_channels, model.backbone.groups, -1).sum(dim=(0, 2))
        assert (per_group > 0).all()


def test_paper_preset_loads_imagenet_weights_from_a_local_file_only(tmp_path):
    from torchvision.models import densenet121

    ref = densenet121(weights=None)
    path = tmp_path / "densenet121.pth"
    torch.save(ref.state_dict(), path)
    bb = build_backbone("paper", 3, str(path))
    assert torch.equal(bb.stages.block1.denselayer1.conv1.weight, ref.features.denseblock1.denselayer1.conv1.weight)
    torch.save({"something": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        build_backbone("paper", 3, str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_backbone("paper", 3, str(tmp_path / "missing.pth"))


def test_box_deltas_round_trip():
    ref = torch.tensor([[10.0, 10.0, 30.0, 40.0], [0.0, 5.0, 8.0, 9.0]])
    gt = torch.tensor([[12.0, 8.0, 33.0, 41.0], [1.0, 4.0, 6.0, 12.0]])
    assert torch.allclose(coder.decode(ref, coder.encode(ref, gt)), gt, atol=1e-5)


def test_model_file_round_trips_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = LENS(["a", "b"], preset="cpu", n_slices=3, fc_dim=32).eval()
    meta = {"datasets": ["a", "b"], "preset": "cpu", "n_slices": 3, "fc_dim": 32, "rois_per_image": 64}
    save_lens(tmp_path / "lens.pt", model, meta)
    loaded, meta2 = load_lens(tmp_path / "lens.pt")
    assert meta2 == meta
    x = torch.randn(1, 3, H, W)
    a, b = model.detect(x)[0], loaded.detect(x)[0]
    assert torch.equal(a["scores"], b["scores"]) and a["scores"].shape[1] == 2
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.pt"):
        load_lens(tmp_path / "junk.pt")


def test_an_experts_score_is_its_classifier_by_default_and_tempered_by_its_own_afp_with_two_stage():
    """The paper (Sec. IV-B) scores a proposal by its expert's classifier; two_stage (an ablation row)
    takes the geometric mean with the expert's own AFP centerness at the proposing pixel."""
    torch.manual_seed(0)
    model = LENS(["a", "b"], "cpu", 3, fc_dim=32, rois_per_image=8, score="two_stage").eval()
    x = torch.randn(1, 3, H, W)
    head_only = LENS(["a", "b"], "cpu", 3, fc_dim=32, rois_per_image=8).eval()
    assert head_only.score == "head"
    head_only.load_state_dict(model.state_dict())
    # the head score is the expert classifier's probability of each pooled RoI, whatever its AFP says
    feat = head_only.backbone(x)
    rois = head_only.detect(x)[0]["rois"]
    cls = [torch.sigmoid(head_only.head.dataset_layers(head_only.head.shared_features(feat, [rois]), d)[0].float())
           for d in ("a", "b")]
    assert torch.allclose(head_only.detect(x)[0]["scores"], torch.stack(cls, 1), atol=1e-6)
    with pytest.raises(ValueError, match="score must be one of"):
        LENS(["a"], "cpu", 3, fc_dim=32, score="centerness")
    for afp in model.afps.values():  # a flat, certain centerness map: the AFP agrees everywhere
        torch.nn.init.zeros_(afp.center[-1].weight)
        torch.nn.init.constant_(afp.center[-1].bias, 30.0)
    head_only.load_state_dict(model.state_dict())
    a, h = model.detect(x)[0], head_only.detect(x)[0]
    assert torch.equal(a["rois"], h["rois"]) and len(a["rois"])
    assert torch.allclose(a["scores"] ** 2, h["scores"], rtol=1e-5, atol=1e-7)  # sqrt(p_head * 1)
    torch.nn.init.constant_(model.afps["b"].center[-1].bias, -30.0)  # expert b's AFP sees nothing
    s = model.detect(x)[0]["scores"]
    assert torch.allclose(s[:, 0], a["scores"][:, 0]) and (s[:, 1] < 1e-5).all()


# ------------------------------------------------------------------ fast kernels (issue 22): the same functions
def test_separable_roi_align_is_torchvisions_roi_align_forward_and_backward():
    """Training's ROIAlign as matrix products against torchvision's (aligned, adaptive sampling): RoIs
    inside, across the border and outside the map, thinner than a cell and spanning it."""
    from torchvision.ops import roi_align

    from lens_core.model.roi_align import roi_align_separable

    g = torch.Generator().manual_seed(0)
    feat = torch.randn(3, 16, 20, 26, generator=g, requires_grad=True)
    rois = []
    for n in (30, 0, 25):
        xy = torch.rand(n, 2, generator=g) * 70 - 10
        wh = torch.rand(n, 2, generator=g) ** 2 * 45 + 0.2
        rois.append(torch.cat([xy, xy + wh], 1))
    rois[2][0] = torch.tensor([-30.0, -30.0, -5.0, -4.0])  # wholly outside: zeros
    ref = roi_align(feat, rois, 7, spatial_scale=0.5, sampling_ratio=0, aligned=True)
    out = roi_align_separable(feat, rois, 7, 0.5)
    assert out.shape == ref.shape == (55, 16, 7, 7)
    assert torch.allclose(out, ref, atol=1e-5) and (ref.abs() > 0.1).any()
    up = torch.randn(ref.shape, generator=g)
    (g_ref,) = torch.autograd.grad(ref, feat, up)
    (g_out,) = torch.autograd.grad(out, feat, up)
    assert torch.allclose(g_out, g_ref, atol=1e-5) and (g_ref.abs() > 0.1).any()


def test_an_afps_distances_at_its_cells_are_its_size_branch_there():
    from lens_core.model.afp import AnchorFreeProposalNetwork

    torch.manual_seed(0)
    afp = AnchorFreeProposalNetwork(8, 2, 6).eval()
    feat = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        _, maps = afp(feat)
        image = torch.tensor([0, 0, 1, 1, 1, 0])
        cells = torch.tensor([0, 10, 98, 50, 11 * 4, 11 * 8 + 3])  # corners and borders: the zero padding
        at = afp.distances_at(feat, image, cells)
    expected = maps.flatten(2)[image, :, cells]  # [K, 4]
    assert torch.allclose(at, expected, rtol=1e-5)


def test_exact_kernels_compute_what_the_fast_ones_approximate():
    """kernels="exact" is the d879e6b arithmetic (a default run's tables equal bit for bit, see README
    "Speed"); "fast" computes the same detections up to float rounding, on a map large enough that an AFP's
    distances are taken at its cells only."""
    from torchvision.ops import box_iou

    torch.manual_seed(0)
    fast = LENS(["a", "b"], "cpu", 6, fc_dim=32).eval()
    exact = LENS(["a", "b"], "cpu", 6, fc_dim=32, kernels="exact").eval()
    exact.load_state_dict(fast.state_dict())
    x = torch.randn(2, 6, 144, 160)
    assert fast.afp_pre_nms * 8 < (144 // fast.stride) * (160 // fast.stride)  # the sparse path runs
    a, b = fast.detect(x), exact.detect(x)
    for da, db in zip(a, b):
        assert da["rois"].shape == db["rois"].shape and len(da["rois"])
        # the same RoIs; two with scores equal to rounding may swap places in NMS's order
        match = box_iou(da["rois"], db["rois"]).argmax(1)
        assert torch.allclose(da["rois"], db["rois"][match], atol=1e-3)
        assert torch.allclose(da["scores"], db["scores"][match], atol=1e-4)
        assert torch.allclose(da["boxes"], db["boxes"][:, match], atol=1e-2)
    with pytest.raises(ValueError, match="kernels must be one of"):
        LENS(["a"], "cpu", 3, kernels="quick")


# ------------------------------------------------------------------ afp_trunk: shared (issue 22's cheaper model)
def test_a_shared_afp_trunk_is_one_3x3_layer_per_branch_trained_by_every_dataset_with_its_own_output_layers():
    torch.manual_seed(0)
    model = LENS(["a", "b"], preset="cpu", n_slices=3, fc_dim=64, afp_trunk="shared")
    per = LENS(["a", "b"], preset="cpu", n_slices=3, fc_dim=64)
    a, b = model.afps["a"], model.afps["b"]
    assert a.center[0] is b.center[0] and a.size[0] is b.size[0] and a.center[2] is not b.center[2]
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(model.afps) < n_params(per.afps)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    step(model, opt, "b", seed=1)
    trunk, out_a, out_b = snapshot(a.center[0]), snapshot(a.center[2]), snapshot(b.center[2])
    size_a, size_b = snapshot(a.size[2]), snapshot(b.size[2])
    step(model, opt, "a", seed=2)
    assert not same(trunk, snapshot(a.center[0])), "the shared trunk did not learn from dataset a"
    assert not same(out_a, snapshot(a.center[2])) and not same(size_a, snapshot(a.size[2]))
    assert same(out_b, snapshot(b.center[2])) and same(size_b, snapshot(b.size[2])), "b's own layers changed"
    with pytest.raises(ValueError, match="afp_trunk must be one of"):
        LENS(["a"], "cpu", 3, afp_trunk="one")


@pytest.mark.parametrize("hw", [(64, 64), (144, 160)])  # training-sized crops, and the sparse size path
def test_a_shared_trunk_computed_once_gives_every_afp_its_own_forward(hw):
    """The trunk's maps are computed once for all AFPs: the same proposals as each AFP's own forward."""
    torch.manual_seed(0)
    model = LENS(["a", "b", "c"], "cpu", 6, fc_dim=32, afp_trunk="shared").eval()
    x = torch.randn(2, 6, *hw)
    with torch.no_grad():
        feat = model.backbone(x, channels_last=True)
        once = model._pooled_proposals(feat, hw)
        model.afp_trunk = "per_dataset"  # the same modules, each AFP run on its own
        each = model._pooled_proposals(feat, hw)
    for u, v in zip(once[:2], each[:2]):
        assert all(torch.allclose(p, q, atol=1e-4) and len(p) for p, q in zip(u, v))
    assert torch.allclose(once[2], each[2], atol=1e-6)


def test_a_shared_trunk_model_file_loads_shared(tmp_path):
    torch.manual_seed(0)
    model = LENS(["a", "b"], preset="cpu", n_slices=3, fc_dim=32, afp_trunk="shared").eval()
    meta = {"datasets": ["a", "b"], "preset": "cpu", "n_slices": 3, "fc_dim": 32, "rois_per_image": 64,
            "afp_trunk": "shared"}
    save_lens(tmp_path / "lens.pt", model, meta)
    loaded, _ = load_lens(tmp_path / "lens.pt")
    assert loaded.afp_trunk == "shared" and loaded.afps["a"].center[0] is loaded.afps["b"].center[0]
    x = torch.randn(1, 3, H, W)
    assert torch.equal(model.detect(x)[0]["scores"], loaded.detect(x)[0]["scores"])


# ------------------------------------------------------------------ the model's size: fpn_channels, proposal counts
def test_the_model_size_keys_shape_the_network_and_bound_the_boxes_the_head_scores(tmp_path):
    """fpn_channels narrows the map the AFPs and the head read; pool_top_n bounds the RoIs per slice (the head's
    cost at inference); proposals_per_afp bounds each AFP's share; a model file rebuilds the same model."""
    torch.manual_seed(0)
    args = {"fpn_channels": 16, "afp_pre_nms": 40, "proposals_per_afp": 20, "pool_top_n": 12}
    model = LENS(["a", "b"], "cpu", 3, fc_dim=32, **args).eval()
    wide = LENS(["a", "b"], "cpu", 3, fc_dim=32).eval()
    assert model.backbone.out_channels == 16 and wide.backbone.out_channels == 64
    assert model.head.shared[1].in_features == 16 * 7 * 7
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feat = model.backbone(x)
        assert feat.shape[1] == 16
        per_afp = model.afps["a"].proposals(model.afps["a"].centerness(feat), None, (96, 96), pre_nms_top_n=40,
                                            post_nms_top_n=20, feat=feat)
    assert all(len(boxes) <= 20 for boxes, _, _ in per_afp)
    out, out_wide = model.detect(x), wide.detect(x)
    assert all(len(o["rois"]) == 12 for o in out), "random weights propose more than 12 distinct boxes"
    assert all(len(o["rois"]) > 12 for o in out_wide)
    meta = {"datasets": ["a", "b"], "preset": "cpu", "n_slices": 3, "fc_dim": 32, "rois_per_image": 64, **args}
    save_lens(tmp_path / "lens.pt", model, meta)
    loaded, _ = load_lens(tmp_path / "lens.pt")
    assert (loaded.backbone.out_channels, loaded.afp_pre_nms, loaded.proposals_per_afp, loaded.pool_top_n) == \
        (16, 40, 20, 12)
    assert torch.equal(model.detect(x)[0]["scores"], loaded.detect(x)[0]["scores"])
