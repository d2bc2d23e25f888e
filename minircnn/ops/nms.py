"""Greedy non-maximum suppression (Fast R-CNN section 3: applied per class at test time).

Boxes are visited by descending score (ties: lower index first); each kept box suppresses
every later box whose IoU with it exceeds the threshold. IoU uses the one ``pair_iou`` of
``minircnn.ops.boxes`` (+1 convention).
"""

import numpy as np
from numba import njit

from minircnn.ops.boxes import pair_iou

# Kept boxes compared with a visited box per block: a block is one loop without an exit,
# which the compiler turns into SIMD code (``pair_iou`` is branch-free for it); the exit
# test comes between blocks
NMS_BLOCK = 32


@njit(cache=True)
def _greedy_nms(sorted_boxes, iou_threshold, max_keep):
    """sorted_boxes: float64 [B, 4] in visiting order -> bool [B], True where kept.

    Each box is compared with the boxes kept so far (not with every later box): a box
    survives iff no kept, higher-ranked box overlaps it above the threshold, which is the
    greedy rule. The cost is boxes visited x kept boxes compared, and the loop stops after
    ``max_keep`` kept boxes (the RPN keeps 800 of 6000 in training, 500 at test). Which kept
    box suppresses a box does not matter, only whether one does, so the latest kept are
    compared first: boxes of similar score are mostly near-copies (an RPN's neighbouring
    anchors), so a box's suppressor is usually among them. The kept boxes' coordinates are
    held one array each, so that a block of ``NMS_BLOCK`` comparisons runs as SIMD code.
    Measured on an RPN's 6000 boxes (725 kept): 6.7 ms first to last, 1.8 ms latest first.
    """
    n = sorted_boxes.shape[0]
    keep = np.zeros(n, dtype=np.bool_)
    cap = min(n, max_keep)
    kx1, ky1, kx2, ky2 = np.empty(cap), np.empty(cap), np.empty(cap), np.empty(cap)
    kept = 0
    for i in range(n):
        if kept == max_keep:
            break
        x1, y1 = sorted_boxes[i, 0], sorted_boxes[i, 1]
        x2, y2 = sorted_boxes[i, 2], sorted_boxes[i, 3]
        suppressed = False
        for k1 in range(kept, 0, -NMS_BLOCK):  # the latest kept first: see above
            hits = 0
            for k in range(max(k1 - NMS_BLOCK, 0), k1):
                iou = pair_iou(kx1[k], ky1[k], kx2[k], ky2[k], x1, y1, x2, y2)
                hits += 1 if iou > iou_threshold else 0
            if hits > 0:
                suppressed = True
                break
        if not suppressed:
            keep[i] = True
            kx1[kept], ky1[kept], kx2[kept], ky2[kept] = x1, y1, x2, y2
            kept += 1
    return keep


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None
) -> np.ndarray:
    """Indices (int64) of the boxes kept, by descending score.

    boxes: ``[B, 4]``; scores: ``[B]`` finite. A box is dropped when its IoU with a kept,
    higher-ranked box is ``> iou_threshold``. ``max_keep``: return only the first that
    many, and stop there (the RPN keeps 500 to 800 of thousands: greedy NMS costs boxes
    visited x boxes kept).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"nms: expected boxes of shape [B, 4], got {boxes.shape}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"nms: expected scores of shape ({boxes.shape[0]},), got {scores.shape}")
    if not np.all(np.isfinite(scores)) or not np.all(np.isfinite(boxes)):
        raise ValueError("nms: boxes and scores must be finite")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"nms: iou_threshold must be in [0, 1], got {iou_threshold}")
    order = np.argsort(-scores, kind="stable")  # stable: equal scores keep index order
    if max_keep is not None and max_keep < 0:
        raise ValueError(f"nms: max_keep must be >= 0, got {max_keep}")
    limit = len(order) if max_keep is None else int(max_keep)
    keep = _greedy_nms(np.ascontiguousarray(boxes[order]), float(iou_threshold), limit)
    return order[keep].astype(np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Per-class NMS: boxes of different ``labels [B]`` never suppress each other.

    Shifts each class's boxes by ``label * (max coordinate + 2)`` so that classes cannot
    overlap, then runs one ``nms``. Returns int64 indices by descending score.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.shape != (boxes.shape[0],):
        raise ValueError(
            f"batched_nms: expected labels of shape ({boxes.shape[0]},), got {labels.shape}"
        )
    if boxes.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    span = boxes.max() - min(boxes.min(), 0.0) + 2.0
    shifted = boxes + (labels.astype(np.float64) * span)[:, None]
    return nms(shifted, scores, iou_threshold)
