"""Eq. 1-3 losses: ignored pixels and uncertain boxes add exactly zero loss and gradient."""
import torch

from lens_core.model.afp import AfpTargets, AnchorFreeProposalNetwork
from lens_core.model.head import MultiTaskHead
from lens_core.training.targets import batch_targets

STRIDE, GRID = 4, (16, 16)
LESION = torch.tensor([[8.0, 8.0, 32.0, 28.0]])
UNCERTAIN = torch.tensor([[36.0, 36.0, 60.0, 60.0]])


def targets():
    return batch_targets([LESION], [UNCERTAIN], GRID, STRIDE, r_c=0.2, r_i=0.5)


def eq1_reference(logits, t: AfpTargets):
    """Eq. 1 written out: -0.5 (sum_ctn (1-p)^2 log p + sum_{not ign} p^2 log(1-p)), over n."""
    p = torch.sigmoid(logits.double())
    ctn = t.center.bool()
    neg = ~ctn & ~t.ignore
    s = ((1 - p[ctn]) ** 2 * torch.log(p[ctn])).sum() + (p[neg] ** 2 * torch.log(1 - p[neg])).sum()
    return -0.5 * s / ctn.sum()


def test_centerness_loss_is_eq1_and_size_loss_is_eq2():
    g = torch.Generator().manual_seed(0)
    t = targets()
    logits = torch.randn(1, *GRID, generator=g)
    dist = torch.rand(1, 4, *GRID, generator=g) * 20
    center, size = AnchorFreeProposalNetwork.compute_loss(logits, dist, t)
    assert torch.allclose(center.double(), eq1_reference(logits, t), rtol=1e-5)
    ctn = t.center[0].bool()
    eq2 = (dist[0][:, ctn] - t.reg[0][:, ctn]).abs().sum() / ctn.sum()
    assert torch.allclose(size, eq2)


def test_ignored_pixels_and_uncertain_boxes_add_zero_loss_and_gradient():
    g = torch.Generator().manual_seed(1)
    t = targets()
    assert t.ignore[0].sum() > 0 and t.center[0].sum() > 0
    logits = torch.randn(1, *GRID, generator=g, requires_grad=True)
    dist = (torch.rand(1, 4, *GRID, generator=g) * 20).requires_grad_()
    center, size = AnchorFreeProposalNetwork.compute_loss(logits, dist, t)
    (center + size).backward()
    ign = t.ignore
    assert torch.count_nonzero(logits.grad[ign]) == 0
    assert torch.count_nonzero(logits.grad[~ign]) == (~ign).sum()  # every other pixel is supervised
    assert torch.count_nonzero(dist.grad.permute(0, 2, 3, 1)[~t.center.bool()]) == 0
    # any prediction inside the ignored regions leaves the loss bit-identical
    with torch.no_grad():
        wild = logits.detach().clone()
        wild[ign] = torch.randn(int(ign.sum()), generator=g) * 50
    center2, _ = AnchorFreeProposalNetwork.compute_loss(wild, dist.detach(), t)
    assert torch.equal(center.detach(), center2)


def test_an_uncertain_box_alone_adds_nothing_to_the_loss():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, *GRID, generator=g)
    dist = torch.rand(1, 4, *GRID, generator=g)
    with_lesion_only = batch_targets([LESION], [torch.zeros(0, 4)], GRID, STRIDE)
    with_uncertain = batch_targets([LESION], [UNCERTAIN], GRID, STRIDE)
    ign = with_uncertain.ignore & ~with_lesion_only.ignore
    logits_certain = logits.clone()
    logits_certain[ign] = -30.0  # a perfect negative there: zero loss if the region were negative
    a, _ = AnchorFreeProposalNetwork.compute_loss(logits_certain, dist, with_lesion_only)
    b, _ = AnchorFreeProposalNetwork.compute_loss(logits, dist, with_uncertain)
    assert torch.allclose(a, b, rtol=1e-6)


def test_head_never_uses_proposals_on_an_uncertain_box_as_negatives():
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    unc = torch.tensor([[50.0, 50.0, 70.0, 70.0]])
    props = torch.tensor([
        [10.0, 10.0, 30.0, 31.0],  # on the lesion -> positive
        [51.0, 50.0, 70.0, 69.0],  # on the uncertain box -> neither
        [52.0, 52.0, 75.0, 75.0],  # overlaps it (IoU ~0.5) -> neither
        [0.0, 60.0, 12.0, 80.0],   # background -> negative
    ])
    rois, labels, matched = MultiTaskHead.sample_rois(props, gt, unc, rois_per_image=64,
                                                      generator=torch.Generator().manual_seed(0))
    from torchvision.ops import box_iou

    assert (box_iou(rois[labels == 0], unc) < 0.3).all()
    assert len(rois) == 3  # 2 positives (proposal + the gt itself) and 1 negative
    assert labels.sum() == 2 and torch.equal(matched[labels == 1], gt.expand(2, 4))


def test_jittered_lesion_boxes_give_the_head_varied_positives_around_each_lesion():
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0], [40.0, 40.0, 52.0, 60.0]])
    jit = MultiTaskHead.jitter_boxes(gt, 50, generator=torch.Generator().manual_seed(0))
    assert jit.shape == (100, 4) and (jit[:, 2:] > jit[:, :2]).all()
    from torchvision.ops import box_iou

    iou = box_iou(jit, gt)
    assert (iou[:50, 0] >= 0.5).float().mean() > 0.6 and (iou[50:, 1] >= 0.5).float().mean() > 0.6
    assert (iou[:50, 0] < 0.95).float().mean() > 0.5  # not mere copies: regression targets vary
    rois, labels, _ = MultiTaskHead.sample_rois(torch.cat([jit, torch.tensor([[60.0, 0.0, 80.0, 20.0]])]), gt,
                                                torch.zeros(0, 4), rois_per_image=64,
                                                generator=torch.Generator().manual_seed(0))
    assert labels.sum() == 16  # the positive quota (25 % of 64) is filled
