"""Proposal fusion (paper Sec. IV-C, Table II row (c)): the union of the dataset experts' boxes, NMS."""
from __future__ import annotations

import torch
from torchvision.ops import box_iou, nms


def fuse_experts(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    fuse: list[int],
    nms_thresh: float = 0.5,
    min_score: float = 0.0,
    max_boxes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fuse one image's expert outputs.

    Args:
        boxes: ``[D, N, 4]`` every expert's regressed box for each of the N pooled proposals.
        scores: ``[N, D]`` every expert's lesion probability for each proposal.
        fuse: indices of the experts whose proposals are united (all of them in the paper's LENS).
    Returns:
        ``boxes [K, 4]``, ``fused [K]`` (the score of the expert whose box survived NMS), ``scores
        [K, D]`` (every expert's score of that proposal, so single-type experts stay readable for
        mining) and ``expert [K]`` (which expert's box it is), sorted by fused score.
    """
    if scores.shape[0] == 0 or not fuse:
        return boxes.new_zeros(0, 4), scores.new_zeros(0), scores.new_zeros(0, scores.shape[1]), torch.zeros(0, dtype=torch.int64)
    cand_boxes, cand_fused, src, expert = _candidates(boxes, scores, fuse)
    keep = _union_nms(cand_boxes, cand_fused, nms_thresh, min_score, max_boxes)
    return cand_boxes[keep], cand_fused[keep], scores[src[keep]], expert[keep]


def _candidates(boxes: torch.Tensor, scores: torch.Tensor, fuse: list[int]):
    """The ``fuse`` experts' boxes of every proposal, their own scores, the proposal (RoI) and the expert."""
    n = scores.shape[0]
    return (torch.cat([boxes[k] for k in fuse]), torch.cat([scores[:, k] for k in fuse]),
            torch.arange(n).repeat(len(fuse)), torch.tensor(fuse).repeat_interleave(n))


def _union_nms(cand_boxes, cand_fused, nms_thresh, min_score, max_boxes) -> torch.Tensor:
    """Indices of the candidates kept: score >= ``min_score``, non-empty box, NMS, the top ``max_boxes``
    (sorted by decreasing score)."""
    ok = (cand_fused >= min_score) & (cand_boxes[:, 2] > cand_boxes[:, 0]) & (cand_boxes[:, 3] > cand_boxes[:, 1])
    idx = torch.nonzero(ok).flatten()
    keep = idx[nms(cand_boxes[idx], cand_fused[idx], nms_thresh)]
    return keep if max_boxes is None else keep[:max_boxes]


def fuse_models(
    outputs: list[tuple[torch.Tensor, torch.Tensor]],
    fuse: list[list[int]],
    nms_thresh: float = 0.5,
    min_score: float = 0.0,
    max_boxes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`fuse_experts` across separately trained models of one image (Table V "separate models").

    Args:
        outputs: per model its ``(boxes [D_m, N_m, 4], scores [N_m, D_m])`` (its own pooled proposals).
        fuse: per model the indices of its experts whose boxes are united.
    Returns:
        As :func:`fuse_experts` with the models' experts side by side (``scores [K, sum D_m]``,
        ``expert`` indexing them). The model of a kept box gives its experts' scores of that RoI; another
        model never saw it, so it gives its highest score of its boxes that overlap it above ``nms_thresh``
        (the boxes the fusion merged into it), 0 when it has none.
    """
    offsets = [0]
    for _, s in outputs:
        offsets.append(offsets[-1] + s.shape[1])
    cand = []  # per candidate: box, fused score, RoI, global expert index, model
    for m, ((boxes, scores), f) in enumerate(zip(outputs, fuse)):
        if scores.shape[0] == 0 or not f:
            continue
        b, fused, src, expert = _candidates(boxes, scores, f)
        cand.append((b, fused, src, expert + offsets[m], torch.full((len(src),), m)))
    if not cand:
        return torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, offsets[-1]), torch.zeros(0, dtype=torch.int64)
    cand_boxes, cand_fused, src, expert, model = (torch.cat(c) for c in zip(*cand))
    keep = _union_nms(cand_boxes, cand_fused, nms_thresh, min_score, max_boxes)
    kept = cand_boxes[keep]
    out = kept.new_zeros(len(keep), offsets[-1])
    for m, (boxes, scores) in enumerate(outputs):
        d, n = scores.shape[1], scores.shape[0]
        if n == 0:
            continue
        iou = box_iou(kept, boxes.reshape(-1, 4)).reshape(len(keep), d, n)
        overlap = torch.where(iou > nms_thresh, scores.T.to(iou)[None], iou.new_zeros(())).amax(-1)
        own = model[keep] == m
        overlap[own] = scores[src[keep][own]].to(overlap)
        out[:, offsets[m]:offsets[m + 1]] = overlap
    return kept, cand_fused[keep], out, expert[keep]
