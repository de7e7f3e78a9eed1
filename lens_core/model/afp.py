"""Anchor-free proposal network, AFP (paper Sec. IV-B, Eq. 1-2): one per dataset."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms, sigmoid_focal_loss


@dataclass
class AfpTargets:
    """Per-pixel AFP targets on the feature grid (built by ``lens_core.training.targets``).

    center: ``[B, H, W]`` float, 1 in the centre regions B_ctn, else 0.
    ignore: ``[B, H, W]`` bool, B_ign - B_ctn of lesions plus B_ign of uncertain boxes.
    reg:    ``[B, 4, H, W]`` float, distances (left, top, right, bottom) in input pixels from each
            cell centre to the borders of its lesion box; defined only where ``center == 1``.
    """

    center: torch.Tensor
    ignore: torch.Tensor
    reg: torch.Tensor

    def to(self, device) -> "AfpTargets":
        return AfpTargets(self.center.to(device), self.ignore.to(device), self.reg.to(device))


def _branch(c_in: int, hidden: int, c_out: int, first: nn.Conv2d | None = None) -> nn.Sequential:
    # "Both branches include two convolutional layers and a ReLU layer" (Sec. IV-B). ``first``: a 3x3 layer
    # shared with other AFPs (AFP_TRUNKS "shared"); the 1x1 output layer is always the AFP's own.
    first = first if first is not None else nn.Conv2d(c_in, hidden, 3, padding=1)
    return nn.Sequential(first, nn.ReLU(inplace=True), nn.Conv2d(hidden, c_out, 1))


# "per_dataset": each AFP is its own network (the paper's). "shared": the AFPs share their two branches' 3x3
# layers and keep their own 1x1 output layers, as the experts share the head's FC layers and keep their own
# output layers: on the CPU the AFPs' 3x3 layers on every cell were ~40 % of a slice's inference (issue 22).
AFP_TRUNKS = ("per_dataset", "shared")


def shared_trunk(c_in: int, hidden: int) -> tuple[nn.Conv2d, nn.Conv2d]:
    """The centerness and size branches' 3x3 layers, to be passed to every AFP (``trunk=``)."""
    return nn.Conv2d(c_in, hidden, 3, padding=1), nn.Conv2d(c_in, hidden, 3, padding=1)


class AnchorFreeProposalNetwork(nn.Module):
    """Centerness + box-size branches on one feature map of stride ``stride``."""

    def __init__(self, in_channels: int, stride: int, hidden: int | None = None,
                 trunk: tuple[nn.Conv2d, nn.Conv2d] | None = None):
        super().__init__()
        hidden = hidden or in_channels
        self.stride = stride
        trunk = trunk or (None, None)
        self.center = _branch(in_channels, hidden, 1, trunk[0])
        self.size = _branch(in_channels, hidden, 4, trunk[1])
        # Rare-positive prior so the focal loss starts near its equilibrium (RetinaNet init).
        nn.init.constant_(self.center[-1].bias, -math.log(99.0))

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feat [B, C, H, W]`` -> centerness logits ``[B, H, W]``, distances ``[B, 4, H, W]`` (px)."""
        return self.center(feat)[:, 0], self._distances(self.size(feat))

    def from_trunk(self, hidden_center: torch.Tensor, hidden_size: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward` from the branches' hidden maps (after the 3x3 layers and ReLU), computed once for
        every AFP of a shared trunk; ``hidden_size`` None: no distances."""
        logits = self.center[2](hidden_center)[:, 0]
        return logits, None if hidden_size is None else self._distances(self.size[2](hidden_size))

    def _distances(self, raw: torch.Tensor) -> torch.Tensor:
        # exp keeps distances positive; scaled by the stride so the raw output is O(1).
        return torch.exp(raw.float().clamp(max=8.0)) * self.stride

    def centerness(self, feat: torch.Tensor) -> torch.Tensor:
        """The centerness logits ``[B, H, W]`` alone (inference: the size branch is needed only where a
        box is proposed, :meth:`distances_at`)."""
        return self.center(feat)[:, 0]

    def distances_at(self, feat: torch.Tensor, image: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The size branch of :meth:`forward` evaluated at some cells only: ``[K, 4]`` distances (px) at the
        flat cells ``cells [K]`` (``y * W + x``) of the images ``image [K]``.

        At inference an AFP proposes boxes at its ``pre_nms_top_n`` best cells, a few percent of the map:
        its first 3x3 convolution there is one matrix product over the cells' 3x3 neighbourhoods, instead
        of a convolution over every cell (half of the AFPs' work). Same weights and sums, in another order
        (float rounding, ~1e-7 relative)."""
        conv, _, head = self.size
        h, w = feat.shape[-2:]
        y, x = (cells // w)[:, None, None], (cells % w)[:, None, None]  # [K, 1, 1]
        d = torch.arange(-1, 2, device=feat.device)
        yy, xx = y + d[:, None], x + d[None, :]  # [K, 3, 3]
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)  # outside: the convolution's zero padding
        nhwc = feat.permute(0, 2, 3, 1)  # a view of channels_last features
        patches = nhwc[image[:, None, None], yy.clamp(0, h - 1), xx.clamp(0, w - 1)] * inside[..., None]
        patches = patches.permute(0, 3, 1, 2).reshape(len(cells), -1)  # [K, C * 9], the weights' order
        hidden = F.relu(F.linear(patches, conv.weight.flatten(1), conv.bias))
        return self._distances(F.linear(hidden, head.weight.flatten(1), head.bias))

    @staticmethod
    def compute_loss(logits: torch.Tensor, dist: torch.Tensor, t: AfpTargets) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 1 (centerness focal loss) and Eq. 2 (size L1) for one batch.

        Eq. 1 is sigmoid_focal_loss with gamma = 2 and alpha = 0.5 (alpha_t = 0.5 for both terms).
        Ignored pixels are removed by selection, so they add exactly zero loss and gradient.
        Both losses are divided by the number n of centre pixels in the batch (Eq. 2 uses n; for
        Eq. 1 it keeps the scale independent of the image size, as in CenterNet [50]).
        """
        valid = ~t.ignore
        focal = sigmoid_focal_loss(logits.float()[valid], t.center[valid], alpha=0.5, gamma=2.0, reduction="sum")
        pos = t.center > 0
        n = pos.sum().clamp(min=1).to(focal.dtype)
        pred = dist.permute(0, 2, 3, 1)[pos]  # [n, 4]
        true = t.reg.permute(0, 2, 3, 1)[pos]
        size = (pred - true).abs().sum() / n
        return focal / n, size

    def proposals(
        self,
        logits: torch.Tensor,
        dist: torch.Tensor | None,
        image_hw: tuple[int, int],
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.7,
        post_nms_top_n: int = 300,
        feat: torch.Tensor | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Inference (Sec. IV-B): a box per pixel scored by its centerness, then NMS.

        ``dist``: the distance maps ``[B, 4, H, W]`` of :meth:`forward`; or None, and the distances of the
        ``pre_nms_top_n`` best cells alone are computed from the features ``feat`` (:meth:`distances_at`).
        Returns per image ``(boxes [N, 4] (x1, y1, x2, y2) px, scores [N], cells [N])``; ``cells``
        are the flat indices (``y * W + x`` on the feature grid) of the pixels that proposed the boxes.
        """
        b, h, w = logits.shape
        s = self.stride
        ys, xs = torch.meshgrid(
            (torch.arange(h, device=logits.device) + 0.5) * s,
            (torch.arange(w, device=logits.device) + 0.5) * s,
            indexing="ij",
        )
        scores, cells = torch.sigmoid(logits.float()).reshape(b, -1).topk(min(pre_nms_top_n, h * w), dim=1)
        if dist is not None:
            d_top = dist.reshape(b, 4, -1).gather(2, cells[:, None].expand(-1, 4, -1)).transpose(1, 2)
        else:  # the size branch at the top cells only
            image = torch.arange(b, device=logits.device).repeat_interleave(cells.shape[1])
            d_top = self.distances_at(feat, image, cells.reshape(-1)).reshape(b, -1, 4)
        out = []
        for i in range(b):
            score, idx, d = scores[i], cells[i], d_top[i]
            cx, cy = xs.reshape(-1)[idx], ys.reshape(-1)[idx]
            boxes = torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], dim=1)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image_hw[1])
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image_hw[0])
            ok = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
            boxes, score, idx = boxes[ok], score[ok], idx[ok]
            keep = nms(boxes, score, nms_thresh)[:post_nms_top_n]  # (batched_nms of one class: the same, slower)
            out.append((boxes[keep], score[keep], idx[keep]))
        return out
