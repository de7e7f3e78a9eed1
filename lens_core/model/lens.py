"""Lesion Ensemble, LENS (paper Sec. IV-C, Fig. 2): shared 2.5D backbone, one AFP per dataset, and a
multi-task head whose per-dataset layers are the "dataset experts"."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from lens_core.errors import InputError
from lens_core.io import atomic_path
from lens_core.boxes import coder
from lens_core.model.afp import AFP_TRUNKS, AfpTargets, AnchorFreeProposalNetwork, shared_trunk
from lens_core.model.backbone import build_backbone
from lens_core.model.head import MultiTaskHead

__all__ = ["AfpTargets", "ImageTargets", "LENS", "total_loss"]

SCORES = ("head", "two_stage")
# "fast": the same functions computed in another order where that is cheaper on the CPU (channels_last
# convolutions, the separable ROIAlign in training, an AFP's distances at its proposing cells only; the training
# loop adds multi-tensor RAdam); "exact": the d879e6b arithmetic, bit for bit.
# Float rounding differs (~1e-7 relative), and training amplifies it: a named switch, measured on validation.
KERNELS = ("fast", "exact")


@dataclass
class ImageTargets:
    """One image's boxes ``[N, 4]`` (lesions counted as ground truth) and ``ignore [M, 4]`` (uncertain)."""

    boxes: torch.Tensor
    ignore: torch.Tensor

    def to(self, device) -> "ImageTargets":
        return ImageTargets(self.boxes.to(device), self.ignore.to(device))


def total_loss(losses: dict[str, torch.Tensor], lambda1: float = 0.1, lambda2: float = 10.0) -> torch.Tensor:
    """Eq. 3 for one batch: L_center + lambda1 L_size + L_class + lambda2 L_box."""
    return losses["center"] + lambda1 * losses["size"] + losses["class"] + lambda2 * losses["box"]


class LENS(nn.Module):
    """Args:
        datasets: dataset names, one AFP and one expert each (order = score column order).
        preset: backbone preset (``paper`` | ``cpu``); n_slices: input slices per image.
        fc_dim: width of the two shared FC layers; rois_per_image: head RoIs sampled in training.
        afp_pre_nms / proposals_per_afp: an AFP's best pixels entering its NMS, and its boxes kept.
        pool_nms / pool_top_n: NMS IoU and count after pooling the AFPs' proposals.
        gt_jitter: jittered copies of each lesion box added to the head's training RoIs
            (:meth:`MultiTaskHead.jitter_boxes`).
        score: an expert's lesion probability at inference: ``"head"`` (its classifier alone, the
            paper's Sec. IV-B) or ``"two_stage"`` (geometric mean of its classifier and its own AFP's centerness at the
            pixel that proposed the box, as two-stage detectors with a probabilistic first stage do,
            e.g. CenterNet2: the AFP is trained on every pixel of every image, the head on a few RoIs).
        kernels: ``KERNELS`` (a setting of the run, not of the weights: not saved with them).
        norm: the cpu preset's normalisation layers (:func:`~lens_core.model.backbone.norm_layer`).
        afp_trunk: ``AFP_TRUNKS``: each AFP its own network, or their 3x3 layers shared (``lens_core.model.afp``).
        fpn_channels: the FPN's width (None: the preset's, ``lens_core.model.backbone.FPN_CHANNELS``).
    """

    def __init__(
        self,
        datasets: list[str],
        preset: str = "cpu",
        n_slices: int = 3,
        weights_path: str | None = None,
        fc_dim: int | None = None,
        rois_per_image: int = 64,
        afp_pre_nms: int = 300,
        proposals_per_afp: int = 100,
        pool_nms: float = 0.7,
        pool_top_n: int = 200,
        gt_jitter: int = 8,
        score: str = "head",
        kernels: str = "fast",
        norm: str = "batch",
        afp_trunk: str = "per_dataset",
        fpn_channels: int | None = None,
    ):
        super().__init__()
        if not datasets or len(set(datasets)) != len(datasets):
            raise ValueError(f"datasets must be a non-empty list of distinct names, got {datasets}")
        self.datasets = list(datasets)
        self.backbone = build_backbone(preset, n_slices, weights_path, norm, fpn_channels)
        self.norm = norm
        c, s = self.backbone.out_channels, self.backbone.stride
        # cpu preset: half-width AFP branches. All D AFPs run on every step's stride-2 map to pool
        # proposals, and at full width they took ~45% of a training step.
        afp_hidden = c if preset == "paper" else c // 2
        if afp_trunk not in AFP_TRUNKS:
            raise ValueError(f"afp_trunk must be one of {AFP_TRUNKS}, got {afp_trunk!r}")
        self.afp_trunk = afp_trunk
        trunk = shared_trunk(c, afp_hidden) if afp_trunk == "shared" else None
        self.afps = nn.ModuleDict({d: AnchorFreeProposalNetwork(c, s, afp_hidden, trunk) for d in datasets})
        fc_dim = fc_dim or (1024 if preset == "paper" else 256)
        self.head = MultiTaskHead(c, s, datasets, fc_dim=fc_dim)
        self.rois_per_image = rois_per_image
        self.afp_pre_nms = afp_pre_nms
        self.proposals_per_afp = proposals_per_afp
        self.pool_nms = pool_nms
        self.pool_top_n = pool_top_n
        self.gt_jitter = gt_jitter
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.score = score
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
        self.kernels = kernels

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def _trunk(self, feat: torch.Tensor, size: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A shared AFP trunk's hidden maps (centerness, size; size None unless ``size``), computed once for all."""
        first = self.afps[self.datasets[0]]
        return F.relu(first.center[0](feat)), F.relu(first.size[0](feat)) if size else None

    def _pooled_proposals(self, feat: torch.Tensor, image_hw, known: dict | None = None,
                          hidden: tuple | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Proposals of all AFPs pooled, then NMS (Sec. IV-C). Never carries gradients.

        ``known`` maps a dataset to its AFP's outputs ``(logits, dist)`` when they were already
        computed (training), so that AFP is not run twice; ``hidden``, a shared trunk's maps likewise.
        Returns per image the pooled boxes ``[N, 4]`` and the flat feature-grid cells that proposed
        them ``[N]``, and every AFP's centerness probability map ``[B, D, h * w]``.
        """
        per_afp, probs = [], []
        known = known or {}
        # on a large map (inference on whole slices) an AFP's distances are computed only at the cells it
        # proposes from (AnchorFreeProposalNetwork.distances_at); on a training crop those are half the map
        sparse = self.kernels == "fast" and self.afp_pre_nms * 8 < feat.shape[-2] * feat.shape[-1]
        shared = self.afp_trunk == "shared"
        with torch.no_grad():
            if shared and hidden is None:
                hidden = self._trunk(feat, size=not sparse)
            for d in self.datasets:
                if d in known:
                    logits, dist = (t.detach() for t in known[d])
                elif shared:
                    logits, dist = self.afps[d].from_trunk(hidden[0], None if sparse else hidden[1])
                elif sparse:
                    logits, dist = self.afps[d].centerness(feat), None
                else:
                    logits, dist = self.afps[d](feat)
                probs.append(torch.sigmoid(logits.float()).flatten(1))
                per_afp.append(self.afps[d].proposals(logits, dist, image_hw, pre_nms_top_n=self.afp_pre_nms,
                                                      post_nms_top_n=self.proposals_per_afp, feat=feat))
        pooled, cells = [], []
        for i in range(feat.shape[0]):
            b = torch.cat([p[i][0] for p in per_afp])
            s = torch.cat([p[i][1] for p in per_afp])
            c = torch.cat([p[i][2] for p in per_afp])
            keep = nms(b, s, self.pool_nms)[: self.pool_top_n]
            pooled.append(b[keep].detach())
            cells.append(c[keep])
        return pooled, cells, torch.stack(probs, 1)

    def losses(
        self,
        images: torch.Tensor,
        dataset: str,
        afp_targets: AfpTargets,
        targets: list[ImageTargets],
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training losses of Eq. 3 for a batch drawn from one ``dataset``.

        Only ``dataset``'s AFP and expert layers enter the graph, so the other datasets' layers get
        no gradient at all (grad stays None, optimizers skip them); backbone and shared FCs always do.
        """
        if dataset not in self.afps:
            raise KeyError(f"dataset {dataset!r} is not one of the model's datasets {self.datasets}")
        feat = self.backbone(images, channels_last=self.kernels == "fast")
        hidden = None
        if self.afp_trunk == "shared":  # the trunk once, with its gradient through this dataset's AFP alone
            hidden = self._trunk(feat)
            logits, dist = self.afps[dataset].from_trunk(*hidden)
            hidden = tuple(h.detach() for h in hidden)
        else:
            logits, dist = self.afps[dataset](feat)
        l_center, l_size = AnchorFreeProposalNetwork.compute_loss(logits, dist, afp_targets)
        proposals, _, _ = self._pooled_proposals(feat, images.shape[-2:], known={dataset: (logits, dist)},
                                                 hidden=hidden)
        rois, labels, matched = [], [], []
        for p, t in zip(proposals, targets):
            p = torch.cat([p, MultiTaskHead.jitter_boxes(t.boxes, self.gt_jitter, generator=generator).to(p)])
            r, l, m = MultiTaskHead.sample_rois(p, t.boxes, t.ignore, self.rois_per_image, generator=generator)
            rois.append(r)
            labels.append(l)
            matched.append(m)
        x = self.head.shared_features(feat, rois, separable=self.kernels == "fast")
        cls, deltas = self.head.dataset_layers(x, dataset)
        l_class, l_box = MultiTaskHead.compute_loss(cls, deltas, torch.cat(rois), torch.cat(labels), torch.cat(matched))
        return {"center": l_center, "size": l_size, "class": l_class, "box": l_box}

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Every expert's view of the pooled proposals, per image:

        ``rois [N, 4]``; ``boxes [D, N, 4]`` (each expert's regressed boxes); ``scores [N, D]``
        (each expert's lesion probability, see ``score``), D = ``len(self.datasets)`` in that order.
        """
        feat = self.backbone(images, channels_last=self.kernels == "fast")
        proposals, cells, afp_probs = self._pooled_proposals(feat, images.shape[-2:])
        x = self.head.shared_features(feat, proposals)
        out, start = [], 0
        h, w = images.shape[-2:]
        for i, p in enumerate(proposals):
            xi = x[start:start + len(p)]
            start += len(p)
            boxes, scores = [], []
            for k, d in enumerate(self.datasets):
                logit, delta = self.head.dataset_layers(xi, d)
                b = coder.decode(p.float(), delta.float())
                b[:, 0::2] = b[:, 0::2].clamp(0, w)
                b[:, 1::2] = b[:, 1::2].clamp(0, h)
                boxes.append(b)
                prob = torch.sigmoid(logit.float())
                if self.score == "two_stage":
                    prob = torch.sqrt(prob * afp_probs[i, k, cells[i]])
                scores.append(prob)
            out.append({
                "rois": p.float(),
                "boxes": torch.stack(boxes) if boxes else p.new_zeros(0, 0, 4),
                "scores": torch.stack(scores, 1),
            })
        return out


MODEL_ARGS = ("datasets", "preset", "n_slices", "fc_dim", "rois_per_image")
# Constructor arguments added later, with the value every model saved before them was built with.
LATER_ARGS = {"norm": "batch", "afp_trunk": "per_dataset", "fpn_channels": None, "afp_pre_nms": 300,
              "proposals_per_afp": 100, "pool_top_n": 200}


def save_lens(path, model: LENS, meta: dict) -> None:
    """Weights-only file: ``{"state_dict": ..., "meta": {...}}`` (plain types; torch.load(weights_only=True)).

    ``meta`` must hold the constructor arguments in ``MODEL_ARGS``; written atomically."""
    missing = [k for k in MODEL_ARGS if k not in meta]
    if missing:
        raise ValueError(f"model meta lacks {missing}")
    with atomic_path(path) as tmp:
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": meta}, tmp)


def load_lens(path, device="cpu") -> tuple[LENS, dict]:
    """Inverse of :func:`save_lens`: the model in eval mode on ``device`` and its meta."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = blob["meta"]
        model = LENS(**{k: meta[k] for k in MODEL_ARGS}, **{k: meta.get(k, v) for k, v in LATER_ARGS.items()})
        model.load_state_dict(blob["state_dict"])
    except Exception as e:  # noqa: BLE001 - whatever the file holds instead, name it
        raise InputError(f"{path}: not a LENS model file ({type(e).__name__}: {e})") from e
    return model.to(device).eval(), meta
