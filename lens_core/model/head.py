"""Multi-task detection head of LENS (paper Sec. IV-C): ROIAlign, two shared FC layers, then one
classification (lesion vs non-lesion) and one box-regression layer per dataset ("dataset experts")."""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, roi_align

from lens_core.boxes import coder
from lens_core.model.roi_align import roi_align_separable


class MultiTaskHead(nn.Module):
    def __init__(self, in_channels: int, stride: int, datasets: list[str], fc_dim: int = 1024, roi_size: int = 7):
        super().__init__()
        self.stride = stride
        self.roi_size = roi_size
        self.shared = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * roi_size * roi_size, fc_dim), nn.ReLU(inplace=True),
            nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True),
        )
        self.cls = nn.ModuleDict({d: nn.Linear(fc_dim, 1) for d in datasets})
        self.box = nn.ModuleDict({d: nn.Linear(fc_dim, 4) for d in datasets})
        for d in datasets:
            nn.init.normal_(self.cls[d].weight, std=0.01)
            nn.init.constant_(self.cls[d].bias, 0.0)
            nn.init.normal_(self.box[d].weight, std=0.001)
            nn.init.constant_(self.box[d].bias, 0.0)

    def shared_features(self, feat: torch.Tensor, rois: list[torch.Tensor], separable: bool = False) -> torch.Tensor:
        """``feat [B, C, h, w]``, per-image rois ``[Ni, 4]`` (input px) -> ``[sum Ni, fc_dim]``.
        ``separable``: ROIAlign as matrix products where a gradient flows (lens_core.model.roi_align)."""
        # float32 boxes even under autocast: bfloat16 would round coordinates by up to ~0.5 px.
        # Adaptive sampling (Detectron2's default): as many bilinear samples per bin as the bin spans
        # feature cells. Lesion RoIs span only a few cells, so a fixed 2x2 per bin mostly resampled the
        # same cells, and ROIAlign's backward on the CPU was ~25 % of a training step.
        # Training (a gradient to the features) takes the separable form of the same function: torchvision's
        # CPU backward was ~20 % of a step (lens_core.model.roi_align)
        separable = separable and feat.requires_grad
        align = roi_align_separable if separable else partial(roi_align, sampling_ratio=0, aligned=True)
        pooled = align(feat.float(), [r.float() for r in rois], self.roi_size, spatial_scale=1.0 / self.stride)
        return self.shared(pooled)

    def dataset_layers(self, x: torch.Tensor, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One dataset expert's own layers on the shared features: class logits ``[N]`` and box deltas ``[N, 4]``
        (the expert is these layers plus its dataset's AFP)."""
        return self.cls[dataset](x)[:, 0], self.box[dataset](x)

    @staticmethod
    def jitter_boxes(gt: torch.Tensor, n: int, scale: float = 0.15, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` randomly shifted / rescaled copies of every box in ``gt [G, 4]`` -> ``[G * n, 4]``.

        Extra head RoIs around each lesion: early in training an AFP proposes few boxes with IoU >= 0.5,
        so without them the head sees one positive (the gt itself) per lesion against dozens of negatives.
        Centre shifts and log-size changes are ``scale`` times the box size (std); most copies keep
        IoU >= 0.5 (positives with varied regression targets), the rest are near-miss negatives.
        """
        if n <= 0 or not gt.numel():
            return gt.new_zeros(0, 4)
        g = gt.repeat_interleave(n, dim=0).float()
        wh = (g[:, 2:] - g[:, :2]).clamp(min=1.0)
        c = (g[:, 2:] + g[:, :2]) / 2
        noise = torch.randn(len(g), 4, generator=generator).to(g.device) * scale
        c = c + noise[:, :2] * wh
        wh = wh * torch.exp(noise[:, 2:])
        return torch.cat([c - wh / 2, c + wh / 2], dim=1).to(gt.dtype)

    @staticmethod
    def sample_rois(
        proposals: torch.Tensor,
        gt: torch.Tensor,
        ignore: torch.Tensor,
        rois_per_image: int,
        positive_fraction: float = 0.25,
        fg_iou: float = 0.5,
        ignore_iou: float = 0.3,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Choose training RoIs for one image (Faster R-CNN sampling).

        ``proposals [P, 4]`` plus the ground truth itself; IoU >= ``fg_iou`` with a lesion ->
        positive (its matched box), otherwise negative -- except proposals overlapping an uncertain /
        ignored box (IoU >= ``ignore_iou``), which are never negatives (Sec. V-C: ignored in the loss).
        Returns ``rois [R, 4]``, ``labels [R]`` (1/0) and ``matched [R, 4]`` (gt boxes, only for labels 1).
        """
        cand = torch.cat([proposals, gt]) if gt.numel() else proposals
        if gt.numel():
            iou, idx = box_iou(cand, gt).max(dim=1)
        else:
            iou = cand.new_zeros(len(cand))
            idx = torch.zeros(len(cand), dtype=torch.int64, device=cand.device)
        fg = iou >= fg_iou
        bg = ~fg
        if ignore.numel():
            bg &= box_iou(cand, ignore).max(dim=1).values < ignore_iou
        fg_idx, bg_idx = fg.nonzero()[:, 0], bg.nonzero()[:, 0]
        n_fg = min(int(rois_per_image * positive_fraction), len(fg_idx))
        n_bg = min(rois_per_image - n_fg, len(bg_idx))
        fg_idx = fg_idx[torch.randperm(len(fg_idx), generator=generator)[:n_fg].to(fg_idx.device)]
        bg_idx = bg_idx[torch.randperm(len(bg_idx), generator=generator)[:n_bg].to(bg_idx.device)]
        keep = torch.cat([fg_idx, bg_idx])
        labels = torch.cat([torch.ones(n_fg), torch.zeros(n_bg)]).to(cand.device)
        matched = gt[idx[keep]] if gt.numel() else cand[keep]
        return cand[keep], labels, matched

    @staticmethod
    def compute_loss(logits, deltas, rois, labels, matched) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 3's L_class (cross-entropy, here binary) and L_box (smooth L1 [28] on positives),
        both averaged over the sampled RoIs (torchvision's fastrcnn_loss convention)."""
        n = max(1, labels.numel())
        cls = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="sum") / n
        pos = labels > 0
        if pos.any():
            target = coder.encode(rois[pos].float(), matched[pos].float())
            box = F.smooth_l1_loss(deltas[pos].float(), target, beta=1.0 / 9, reduction="sum") / n
        else:
            box = deltas.sum() * 0.0
        return cls, box
