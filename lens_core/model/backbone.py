"""2.5D backbone (paper Sec. IV-A, after MULAN [25]): slices in groups of 3, shared 2D CNN per group,
3D feature fusion of the groups into the centre group by a 1x1 convolution, FPN, one output map.

Two presets behind one interface (input ``[B, S, H, W]`` with ``S`` a multiple of 3, output
``[B, out_channels, H / stride, W / stride]``):

* ``paper``: torchvision DenseNet-121 truncated after dense block 3 (strides 4, 8, 16).
* ``cpu``:   a 4-stage 16/32/64/128 CNN (strides 2, 4, 8, 16; output stride 2) that trains in
  minutes on 2 cores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import densenet121
from torchvision.ops import FeaturePyramidNetwork

from lens_core.model.weights import load_torchvision_weights

PRESETS = ("paper", "cpu")
GROUPS = 8  # GroupNorm's groups: 2-16 channels each at the cpu preset's widths


def norm_layer(norm: str, channels: int) -> nn.Module:
    """``batch``: BatchNorm, whose running statistics (inference) average every training batch; ``group``:
    GroupNorm, statistics of each image alone, the same in training and inference whatever a batch holds."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(GROUPS, channels)
    raise ValueError(f"unknown norm {norm!r}; choose batch or group")


class _CpuStages(nn.Module):
    """Four conv-norm-ReLU stages (each halves the resolution); returns every stage's map."""

    def __init__(self, widths=(16, 32, 64, 128), norm: str = "batch"):
        super().__init__()
        stages, c_in = [], 3
        for w in widths:
            stages.append(nn.Sequential(
                nn.Conv2d(c_in, w, 3, stride=2, padding=1, bias=False), norm_layer(norm, w), nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1, bias=False), norm_layer(norm, w), nn.ReLU(inplace=True),
            ))
            c_in = w
        self.stages = nn.ModuleList(stages)
        self.channels = list(widths)
        self.strides = [2, 4, 8, 16]

    def forward(self, x):
        out = []
        for s in self.stages:
            x = s(x)
            out.append(x)
        return out


MULAN_LAYERS = tuple(f"features.{m}." for m in ("conv0", "norm0", "denseblock1", "transition1", "denseblock2",
                                                "transition2", "denseblock3"))


class _DenseNetStages(nn.Module):
    """DenseNet-121 truncated after dense block 3 (MULAN); returns blocks 1-3 (strides 4, 8, 16)."""

    def __init__(self, weights_path: str | None = None):
        super().__init__()

        net = densenet121(weights=None)
        if weights_path:
            # MULAN's truncation uses dense blocks 1-3 only: the rest of the file may be anything
            load_torchvision_weights(net, weights_path, "densenet121", needed=lambda k: k.startswith(MULAN_LAYERS))
        f = net.features
        self.stem = nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0)
        self.block1 = f.denseblock1
        self.block2 = nn.Sequential(f.transition1, f.denseblock2)
        self.block3 = nn.Sequential(f.transition2, f.denseblock3)
        self.channels = [256, 512, 1024]
        self.strides = [4, 8, 16]

    def forward(self, x):
        c1 = self.block1(self.stem(x))
        c2 = self.block2(c1)
        c3 = self.block3(c2)
        return [c1, c2, c3]


class Backbone(nn.Module):
    """Slices -> groups of 3 -> shared 2D stages -> per-level 3D fusion -> FPN -> finest map.

    Args:
        stages: module mapping ``[N, 3, H, W]`` to a list of maps with ``.channels``/``.strides``.
        n_slices: input slices per image (a multiple of 3; 9 in the paper).
        fpn_from: index of the finest stage fed to the FPN (its stride is the output stride).
        out_channels: FPN width.
    """

    def __init__(self, stages: nn.Module, n_slices: int, fpn_from: int, out_channels: int):
        super().__init__()
        if n_slices % 3 or n_slices < 3:
            raise ValueError(f"slices must be a positive multiple of 3, got {n_slices}")
        self.stages = stages
        self.n_slices = n_slices
        self.groups = n_slices // 3
        self.fpn_from = fpn_from
        chans = stages.channels[fpn_from:]
        # 3D fusion (MULAN): the G groups' maps are concatenated along channels and fused into the
        # centre group's width by a 1x1 convolution, at every level that enters the FPN.
        self.fusion = nn.ModuleList(
            [nn.Conv2d(c * self.groups, c, 1) for c in chans] if self.groups > 1 else []
        )
        self.fpn = FeaturePyramidNetwork(chans, out_channels)
        self.out_channels = out_channels
        self.stride = stages.strides[fpn_from]

    def forward(self, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """``channels_last``: oneDNN's native layout, so no convolution reorders its input and output
        (~15 % faster on the CPU; other float rounding, ~1e-6: the fast kernels only)."""
        b, s, h, w = images.shape  # [B, S, H, W]
        if s != self.n_slices:
            raise ValueError(f"backbone expects {self.n_slices} slices, got {s}")
        x = images.reshape(b * self.groups, 3, h, w)  # each group of 3 slices is one RGB-like image
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.stages(x)[self.fpn_from:]
        fused = []
        for i, f in enumerate(feats):
            f = f.reshape(b, self.groups * f.shape[1], f.shape[2], f.shape[3])
            fused.append(self.fusion[i](f) if self.groups > 1 else f)
        return self._finest_fpn_level(fused)

    def _finest_fpn_level(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The FPN's finest output (top-down enriched), the only one LENS uses: torchvision's
        FeaturePyramidNetwork.forward step for step, without the coarser levels' 3x3 output convolutions,
        whose maps were computed and dropped."""
        fpn = self.fpn
        last = fpn.get_result_from_inner_blocks(feats[-1], -1)
        for idx in range(len(feats) - 2, -1, -1):
            lateral = fpn.get_result_from_inner_blocks(feats[idx], idx)
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
        return fpn.get_result_from_layer_blocks(last, 0)


# The FPN's width per preset (its output map's channels, which the AFPs and the head's ROIAlign read).
FPN_CHANNELS = {"paper": 256, "cpu": 64}


def build_backbone(preset: str, n_slices: int, weights_path: str | None = None, norm: str = "batch",
                   fpn_channels: int | None = None) -> Backbone:
    """The ``paper`` or ``cpu`` backbone (see module doc); ``norm``: the cpu preset's :func:`norm_layer`;
    ``fpn_channels``: the FPN's width (None: the preset's, ``FPN_CHANNELS``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown backbone preset {preset!r}; choose one of {PRESETS}")
    width = fpn_channels or FPN_CHANNELS[preset]
    if preset == "paper":
        if norm != "batch":
            raise ValueError(f"norm {norm!r}: the paper preset keeps DenseNet-121's BatchNorm")
        return Backbone(_DenseNetStages(weights_path), n_slices, fpn_from=0, out_channels=width)
    if preset == "cpu":
        if weights_path:
            raise ValueError("the cpu preset has no pretrained weights")
        # Output at stride 2 (all four stages enter the FPN): the small corpus's lesions are only
        # 4-20 px, and at stride 4 their boxes localised too coarsely (IoU >= 0.5 recall of a tiny
        # overfit run 0.6-0.9 at stride 4 vs 1.0 at stride 2, for ~35% more time per step).
        return Backbone(_CpuStages(norm=norm), n_slices, fpn_from=0, out_channels=width)
