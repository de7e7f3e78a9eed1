"""Slow, obviously-correct tracklet grouping (paper Sec. V-A), the oracle for the numba kernel."""

from collections import defaultdict


def reference_iou(a, b):
    """IoU of two (x1, y1, x2, y2) boxes, in float64 with the kernel's operation order."""
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw <= 0.0 or ih <= 0.0:
        return 0.0
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union


def reference_tracklets(volume_idx, z, boxes, iou_threshold=0.5):
    """Tracklet id per box (input order): connected components of 'same volume, slices z and z+1,
    IoU > theta', numbered by their first box in a stable (volume, z) order."""
    n = len(volume_idx)
    order = sorted(range(n), key=lambda i: (int(volume_idx[i]), int(z[i])))
    by_slice = defaultdict(list)
    for i in range(n):
        by_slice[(int(volume_idx[i]), int(z[i]))].append(i)
    neighbours = defaultdict(set)
    for i in range(n):
        for j in by_slice.get((int(volume_idx[i]), int(z[i]) + 1), []):
            if reference_iou(boxes[i], boxes[j]) > iou_threshold:
                neighbours[i].add(j)
                neighbours[j].add(i)
    ids = [-1] * n
    next_id = 0
    for start in order:  # the first unvisited box in sorted order opens a new tracklet
        if ids[start] != -1:
            continue
        stack = [start]
        ids[start] = next_id
        while stack:
            i = stack.pop()
            for j in neighbours[i]:
                if ids[j] == -1:
                    ids[j] = next_id
                    stack.append(j)
        next_id += 1
    return ids
