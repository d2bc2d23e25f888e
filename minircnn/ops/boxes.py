"""Box operations, one implementation each, used everywhere in minircnn.

Convention (README, "Conventions"): a box is ``(x1, y1, x2, y2)`` in 0-based *inclusive* pixel
coordinates, so its width is ``x2 - x1 + 1`` and its height ``y2 - y1 + 1``, as in the
original Fast R-CNN code and the PASCAL VOC devkit.

Box regression (R-CNN appendix C; Fast R-CNN section 2.3): for a proposal P with centre
``(px, py)`` and size ``(pw, ph)`` and its ground truth G,

    tx = (gx - px) / pw,   ty = (gy - py) / ph,   tw = log(gw / pw),   th = log(gh / ph)

Scale-invariant translation of the centre, log-space change of the size. Fast R-CNN trains
on targets normalised to zero mean and unit variance; the fixed ``TARGET_STDS`` below are
the values the later py-faster-rcnn code used.
"""

import numpy as np
from numba import njit, prange

TARGET_MEANS = (0.0, 0.0, 0.0, 0.0)
TARGET_STDS = (0.1, 0.1, 0.2, 0.2)
# exp() of a size delta is clamped here so that a wild prediction cannot overflow:
# a box may grow at most 1000/16 ~ 62x in one step.
MAX_LOG_SCALE = float(np.log(1000.0 / 16.0))


@njit(cache=True, inline="always")
def pair_iou(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2):
    """IoU of two boxes given by their coordinates (+1 convention); 0 if they do not
    overlap. Branch-free, so that loops calling it vectorise (NMS): where the boxes
    overlap, union >= intersection > 0; where they do not, the intersection is 0 and the
    floor on the union only keeps an empty box's 0 / 0 from giving NaN."""
    iw = max(min(ax2, bx2) - max(ax1, bx1) + 1.0, 0.0)
    ih = max(min(ay2, by2) - max(ay1, by1) + 1.0, 0.0)
    inter = iw * ih
    union = (ax2 - ax1 + 1.0) * (ay2 - ay1 + 1.0) + (bx2 - bx1 + 1.0) * (by2 - by1 + 1.0) - inter
    return inter / max(union, 1e-300)


@njit(parallel=True, cache=True)
def _iou_matrix(a, b, out):
    for i in prange(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = pair_iou(
                a[i, 0], a[i, 1], a[i, 2], a[i, 3], b[j, 0], b[j, 1], b[j, 2], b[j, 3]
            )


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas ``(x2 - x1 + 1) * (y2 - y1 + 1)`` of boxes ``[..., 4]`` -> ``[...]``."""
    boxes = np.asarray(boxes)
    return (boxes[..., 2] - boxes[..., 0] + 1) * (boxes[..., 3] - boxes[..., 1] + 1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union: a ``[A, 4]``, b ``[B, 4]`` -> float64 ``[A, B]``."""
    a = _as_boxes(a, "box_iou a")
    b = _as_boxes(b, "box_iou b")
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float64)
    _iou_matrix(a, b, out)
    return out


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clip boxes ``[R, 4k]`` to an image: x into ``[0, width-1]``, y into ``[0, height-1]``.

    Returns a new array of the same shape and dtype (class-specific boxes, 4 columns per
    class, are clipped alike).
    """
    out = np.array(boxes, copy=True)
    out[:, 0::4] = np.clip(out[:, 0::4], 0, width - 1)
    out[:, 1::4] = np.clip(out[:, 1::4], 0, height - 1)
    out[:, 2::4] = np.clip(out[:, 2::4], 0, width - 1)
    out[:, 3::4] = np.clip(out[:, 3::4], 0, height - 1)
    return out


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror boxes ``[R, 4]`` for a horizontally flipped image of the given width:
    ``x1' = width - 1 - x2``, ``x2' = width - 1 - x1``."""
    out = np.array(boxes, copy=True)
    out[:, 0] = width - 1 - boxes[:, 2]
    out[:, 2] = width - 1 - boxes[:, 0]
    return out


def bbox_encode(proposals: np.ndarray, gt: np.ndarray, means=None, stds=None) -> np.ndarray:
    """Regression targets ``(tx, ty, tw, th)`` taking ``proposals [R, 4]`` to ``gt [R, 4]``.

    Unnormalised by default; pass ``means=TARGET_MEANS, stds=TARGET_STDS`` for the
    normalised targets the network is trained on. Returns float32 ``[R, 4]``.
    """
    px, py, pw, ph = _centres_sizes(np.asarray(proposals, dtype=np.float64))
    gx, gy, gw, gh = _centres_sizes(np.asarray(gt, dtype=np.float64))
    deltas = np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], axis=1)
    if means is not None:
        deltas -= np.asarray(means)
    if stds is not None:
        deltas /= np.asarray(stds)
    return deltas.astype(np.float32)


def bbox_decode(boxes: np.ndarray, deltas: np.ndarray, means=None, stds=None) -> np.ndarray:
    """Apply ``deltas [R, 4k]`` (k classes, 4 columns each) to ``boxes [R, 4]``.

    The inverse of ``bbox_encode`` with the same ``means``/``stds``. ``dw, dh`` are clamped
    at ``log(1000/16)`` before ``exp``. Returns float32 ``[R, 4k]`` (not clipped).
    """
    deltas = np.asarray(deltas, dtype=np.float64)
    n_cols = deltas.shape[1]
    if stds is not None:
        deltas = deltas * np.tile(np.asarray(stds), n_cols // 4)
    if means is not None:
        deltas = deltas + np.tile(np.asarray(means), n_cols // 4)
    px, py, pw, ph = (v[:, None] for v in _centres_sizes(np.asarray(boxes, dtype=np.float64)))
    cx = px + deltas[:, 0::4] * pw
    cy = py + deltas[:, 1::4] * ph
    w = pw * np.exp(np.minimum(deltas[:, 2::4], MAX_LOG_SCALE))
    h = ph * np.exp(np.minimum(deltas[:, 3::4], MAX_LOG_SCALE))
    out = np.empty(deltas.shape, dtype=np.float32)
    # x2 = x1 + w - 1 keeps the +1 convention, so decode(encode(p, g)) == g exactly.
    out[:, 0::4] = cx - 0.5 * w
    out[:, 1::4] = cy - 0.5 * h
    out[:, 2::4] = cx + 0.5 * w - 1.0
    out[:, 3::4] = cy + 0.5 * h - 1.0
    return out


def _centres_sizes(boxes):
    w = boxes[:, 2] - boxes[:, 0] + 1.0
    h = boxes[:, 3] - boxes[:, 1] + 1.0
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def _as_boxes(boxes, name: str) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}: expected boxes of shape [N, 4], got {boxes.shape}")
    return np.ascontiguousarray(boxes)
