"""The 3D false-positive reduction (FPR) network (paper Sec. IV-D, Fig. 2).

torchvision's ResNet-18 made 3D: its 3x3 convolutions become 1x3x3 in ResBlocks 1-3 and 3x3x3 in
ResBlock 4 ("better than converting all filters to 3x3x3"); the 7x7 stem becomes 1x7x7. Input: a
one-channel 3D patch ``[B, 1, D, H, W]`` centred on a 3D proposal, and the proposal's box in patch
voxels ``[B, 6]`` (x1, y1, z1, x2, y2, z2; docs/artifacts.md convention). Multi-scale ROI pooling:
the box region is pooled from the maps of ResBlocks 1-3 (ROIAlign on every slice the box spans,
averaged over those slices; blocks 1-3 never stride in z) and the whole patch from ResBlock 4
(global average pooling); the four vectors are concatenated and a small MLP gives one logit.
Loss: focal loss (torchvision.ops.sigmoid_focal_loss).

Presets (``PRESETS``), both with the same structure:

* ``paper``: torchvision widths 64/128/256/512, stem stride 2 + max-pool (total 4), patch
  16 x 64 x 64 voxels, 4 x 4 ROI bins; ImageNet weights inflated from a local torchvision
  ``resnet18`` state_dict when ``weights_path`` is given (never downloaded).
* ``cpu``: widths 16/32/64/128, stem stride 1 + max-pool (total 2, so that 4-20 px lesions of the
  built-in corpus still cover a few cells of block 3), patch 8 x 32 x 32 voxels, 2 x 2 ROI bins.

Patch sides are in voxels of the preprocessed grid; a box wider than ``patch / context`` makes the
patch cover ``context`` x its side in-plane, resampled to the patch size (lens_core/fpr/patches.py).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.ops import roi_align, sigmoid_focal_loss

from lens_core.model.weights import load_torchvision_weights
from lens_core.errors import InputError
from lens_core.io import atomic_path

__all__ = ["FprPreset", "PRESETS", "FprNet", "roi_pool_3d", "focal_loss", "save_fpr", "load_fpr"]

TORCHVISION_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class FprPreset:
    widths: tuple[int, int, int, int] = TORCHVISION_WIDTHS  # ResBlock 1-4 channels
    patch: tuple[int, int, int] = (16, 64, 64)  # D, H, W of the input patch (preprocessed voxels)
    stem_stride: int = 2  # in-plane stride of the 1x7x7 stem convolution (torchvision: 2)
    roi_size: int = 4  # k x k ROIAlign bins per slice for ResBlocks 1-3
    hidden: int = 256  # classifier MLP width
    context: float = 2.0  # the patch covers at least `context` x the box's in-plane side

    @classmethod
    def from_dict(cls, d: dict) -> "FprPreset":
        return cls(**{**d, "widths": tuple(d["widths"]), "patch": tuple(d["patch"])})

    def as_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths), "patch": list(self.patch)}


PRESETS = {
    "paper": FprPreset(),
    "cpu": FprPreset(widths=(16, 32, 64, 128), patch=(8, 32, 32), stem_stride=1, roi_size=2, hidden=128),
}


def get_preset(preset: str | FprPreset | dict) -> FprPreset:
    if isinstance(preset, FprPreset):
        return preset
    if isinstance(preset, dict):
        return FprPreset.from_dict(preset)
    if preset not in PRESETS:
        raise ValueError(f"unknown FPR preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def _inflate_conv(conv: nn.Conv2d, channels: dict, depth: int, z_stride: int, copy_weights: bool,
                  stride: int | None = None) -> nn.Conv3d:
    """Conv2d k x k -> Conv3d depth x k x k (in-plane ``stride`` if given, else the 2D one); with
    ``copy_weights`` the 2D kernel is repeated over depth and divided by it (I3D inflation [58]: a
    static volume gives the 2D response)."""
    s = conv.stride if stride is None else (stride, stride)
    out = nn.Conv3d(channels[conv.in_channels], channels[conv.out_channels], (depth, *conv.kernel_size),
                    stride=(z_stride, *s), padding=(depth // 2, *conv.padding), bias=conv.bias is not None)
    if copy_weights:
        w = conv.weight.detach()
        if out.in_channels != conv.in_channels:  # the RGB stem on a one-channel CT patch: sum over RGB
            w = w.sum(1, keepdim=True)
        with torch.no_grad():
            out.weight.copy_(w.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth)
    return out


def _inflate_bn(bn: nn.BatchNorm2d, channels: dict, copy_weights: bool) -> nn.BatchNorm3d:
    out = nn.BatchNorm3d(channels[bn.num_features])
    if copy_weights:
        out.load_state_dict(bn.state_dict())
    return out


def _resnet18_2d(weights_path: str | None) -> nn.Module:
    net = resnet18(weights=None)
    if weights_path:
        # the classifier (fc) is replaced by the FPR's own
        load_torchvision_weights(net, weights_path, "resnet18", needed=lambda k: not k.startswith("fc."))
    return net


class FprNet(nn.Module):
    """See the module doc. ``forward(patch [B, 1, D, H, W], boxes [B, 6]) -> logits [B]``."""

    def __init__(self, preset: str | FprPreset | dict = "cpu", weights_path: str | None = None):
        super().__init__()
        self.preset = p = get_preset(preset)
        pretrained = weights_path is not None
        if pretrained and p.widths != TORCHVISION_WIDTHS:
            raise ValueError(f"ImageNet inflation needs the torchvision widths {TORCHVISION_WIDTHS}, "
                             f"the preset has {p.widths}")
        net = _resnet18_2d(weights_path)
        ch = {3: 1, **dict(zip(TORCHVISION_WIDTHS, p.widths))}  # torchvision width -> this preset's
        stem = _inflate_conv(net.conv1, ch, 1, 1, pretrained, stride=p.stem_stride)
        self.stem = nn.Sequential(stem, _inflate_bn(net.bn1, ch, pretrained), nn.ReLU(inplace=True),
                                  nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))
        layers = []
        for i, layer2d in enumerate([net.layer1, net.layer2, net.layer3, net.layer4]):
            depth = 3 if i == 3 else 1  # Sec. IV-D: 1x3x3 in ResBlocks 1-3, 3x3x3 in ResBlock 4
            layer = copy.deepcopy(layer2d)  # torchvision's BasicBlock.forward is dimension-agnostic
            for block in layer:
                # blocks 1-3 keep every slice (their maps are ROI-pooled slice by slice); block 4
                # strides in z too, like in-plane
                zs = block.conv1.stride[0] if depth == 3 else 1
                block.conv1 = _inflate_conv(block.conv1, ch, depth, zs, pretrained)
                block.bn1 = _inflate_bn(block.bn1, ch, pretrained)
                block.conv2 = _inflate_conv(block.conv2, ch, depth, 1, pretrained)
                block.bn2 = _inflate_bn(block.bn2, ch, pretrained)
                if block.downsample is not None:
                    conv, bn = block.downsample
                    block.downsample = nn.Sequential(_inflate_conv(conv, ch, 1, zs, pretrained),
                                                     _inflate_bn(bn, ch, pretrained))
            layers.append(layer)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        k = p.roi_size
        n_feat = k * k * sum(p.widths[:3]) + p.widths[3]
        self.classifier = nn.Sequential(nn.Linear(n_feat, p.hidden), nn.ReLU(inplace=True), nn.Linear(p.hidden, 1))
        if not pretrained:
            for m in self.modules():
                if isinstance(m, nn.Conv3d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # ResNet's zero-init of each block's last BN would start every residual branch at zero; the
        # focal loss's usual prior (p = 0.01) is wrong for 1:2 sampling, so the output starts at 0.
        nn.init.normal_(self.classifier[-1].weight, std=0.01)
        nn.init.zeros_(self.classifier[-1].bias)

    @property
    def feature_dim(self) -> int:
        return self.classifier[0].in_features

    def features(self, patch: torch.Tensor, boxes: torch.Tensor) -> list[torch.Tensor]:
        """The four pooled vectors before concatenation: ``[B, C_l, k, k]`` for ResBlocks 1-3 (the
        box region) and ``[B, C_4]`` for ResBlock 4 (the whole patch)."""
        if patch.dim() != 5 or patch.shape[1] != 1:
            raise ValueError(f"FPR input must be [B, 1, D, H, W], got {tuple(patch.shape)}")
        if boxes.shape != (patch.shape[0], 6):
            raise ValueError(f"boxes must be [B, 6] for B = {patch.shape[0]}, got {tuple(boxes.shape)}")
        x = self.stem(patch)
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        pooled = [roi_pool_3d(m, boxes, patch.shape[2:], self.preset.roi_size) for m in maps[:3]]
        pooled.append(F.adaptive_avg_pool3d(maps[3], 1).flatten(1))
        return pooled

    def forward(self, patch: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([f.flatten(1) for f in self.features(patch, boxes)], 1))[:, 0]


def roi_pool_3d(feat: torch.Tensor, boxes: torch.Tensor, input_dhw, output_size: int) -> torch.Tensor:
    """Pool each 3D box from a map ``feat [B, C, d, h, w]`` -> ``[B, C, k, k]``.

    ``boxes [B, 6]`` are in input voxels (input size ``input_dhw``). Every map slice whose centre
    lies in the box's z-range (at least the slice holding the box centre) is ROIAligned, and those
    slices are averaged: a 3D ROI pooling for maps that keep the input's slices (ResBlocks 1-3).
    """
    b, c, d, h, w = feat.shape
    sz, sy, sx = d / input_dhw[0], h / input_dhw[1], w / input_dhw[2]
    if abs(sy - sx) > 1e-6:
        raise ValueError(f"anisotropic in-plane stride {sy} vs {sx}")
    boxes = boxes.float()
    z1, z2 = boxes[:, 2] * sz, boxes[:, 5] * sz
    centres = torch.arange(d, dtype=torch.float32, device=feat.device) + 0.5
    inside = (centres[None] >= z1[:, None]) & (centres[None] < z2[:, None])  # [B, d]
    mid = ((z1 + z2) / 2).floor().clamp(0, d - 1).long()
    inside[torch.arange(b, device=feat.device), mid] = True
    bi, zi = inside.nonzero(as_tuple=True)  # one ROI per (box, slice)
    rois = torch.cat([(bi * d + zi).float()[:, None], boxes[bi][:, [0, 1, 3, 4]]], 1)
    slices = feat.transpose(1, 2).reshape(b * d, c, h, w)  # [B*d, C, h, w]
    pooled = roi_align(slices.float(), rois, output_size, spatial_scale=sx, sampling_ratio=2, aligned=True)
    out = torch.zeros(b, c, output_size, output_size, dtype=pooled.dtype, device=feat.device)
    out.index_add_(0, bi, pooled)
    return out / inside.sum(1).clamp(min=1).to(out.dtype)[:, None, None, None]


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = -1.0, gamma: float = 2.0) -> torch.Tensor:
    """Sec. IV-D: focal loss, mean over the batch. alpha = -1 (no class weighting): the 1:2 TP:FP
    sampling already balances the classes."""
    return sigmoid_focal_loss(logits.float(), labels.float(), alpha=alpha, gamma=gamma, reduction="mean")


def save_fpr(path, model: FprNet, meta: dict) -> None:
    """``{"state_dict", "meta"}`` with plain types only (loadable with weights_only=True), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    meta = {**meta, "preset": model.preset.as_dict()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": meta}, tmp)


def load_fpr(path, device="cpu") -> tuple[FprNet, dict]:
    """Inverse of :func:`save_fpr`: the network in eval mode on ``device``, and its meta."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FPR model file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = blob["meta"]
        model = FprNet(meta["preset"])
        model.load_state_dict(blob["state_dict"])
    except Exception as e:  # noqa: BLE001 - whatever the file holds instead, name it
        raise InputError(f"{path}: not an FPR model file ({type(e).__name__}: {e})") from e
    return model.to(device).eval(), meta
