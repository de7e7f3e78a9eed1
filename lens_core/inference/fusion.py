"""Proposal fusion (paper Sec. IV-C, Table II row (c)): the union of the dataset experts' boxes, NMS."""
from __future__ import annotations

import torch
from torchvision.ops import nms


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
    n = scores.shape[0]
    if n == 0 or not fuse:
        return boxes.new_zeros(0, 4), scores.new_zeros(0), scores.new_zeros(0, scores.shape[1]), torch.zeros(0, dtype=torch.int64)
    cand_boxes = torch.cat([boxes[k] for k in fuse])  # [F*N, 4]
    cand_fused = torch.cat([scores[:, k] for k in fuse])
    src = torch.arange(n).repeat(len(fuse))
    expert = torch.tensor(fuse).repeat_interleave(n)
    ok = cand_fused >= min_score
    ok &= (cand_boxes[:, 2] > cand_boxes[:, 0]) & (cand_boxes[:, 3] > cand_boxes[:, 1])
    cand_boxes, cand_fused, src, expert = cand_boxes[ok], cand_fused[ok], src[ok], expert[ok]
    keep = nms(cand_boxes, cand_fused, nms_thresh)  # sorted by decreasing score
    if max_boxes is not None:
        keep = keep[:max_boxes]
    return cand_boxes[keep], cand_fused[keep], scores[src[keep]], expert[keep]
