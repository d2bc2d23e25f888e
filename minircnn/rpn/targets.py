"""Anchor targets for training the RPN (Faster R-CNN section 3.1.2), in named steps:

1. ``inside_image``: anchors crossing the image border are ignored in training (section
   3.3: they would add large, hard-to-correct error terms and training does not converge);
   at test time they are kept and their proposals clipped (``proposal.propose``).
2. ``label_anchors``: positive (1) for (i) the anchor(s) with the highest IoU with a
   ground-truth box, ties included, and (ii) every anchor with IoU >= 0.7 (the paper's;
   0.5 by default here, see ``AnchorTargetConfig``) with some ground truth; negative (0)
   for a non-positive anchor whose IoU is < 0.3 with every ground truth; the rest (-1) do
   not contribute. Rule (i) catches ground truth that no anchor overlaps by 0.7 (the
   paper's "rare cases"); a ground truth that overlaps no inside anchor at all gets none.
3. ``sample_anchors``: 256 anchors per image, up to half positive, filled with negatives
   (positives are far fewer; sampling all would bias towards negatives).
4. ``anchor_targets``: the above, plus regression targets of positives towards their
   matched ground truth and their weights (1 on positive rows: the ``p*_i`` of eq. 1).

Regression targets are *unnormalised* ``bbox_encode(anchor, gt)`` (no means/stds), as
py-faster-rcnn's RPN trains them (RPN_NORMALIZE_TARGETS off; the paper's lambda = 10 was
tuned with them); ``proposal.propose`` decodes the same way. Fast R-CNN's own head keeps
its normalised targets (``data/image.py``'s ``Preprocessing``).
"""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from minircnn.ops.boxes import bbox_encode, pair_iou

POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


@dataclass(frozen=True)
class AnchorTargetConfig:
    """Labelling and sampling (sections 3.1.2, 3.3); comments give the paper's.

    Every default is the paper's but ``positive_iou``, 0.5 instead of 0.7. With 0.7 a toy
    training image (trainval) has 16 positive anchors on average, far fewer than the 128
    that sampling allows, and the small objects get the fewest: 1.8 each for boxes of area
    under 32^2 pixels of the original image (the evaluation's ``SIZE_BUCKETS``), mostly from
    rule (i), against 13.9 for those over 64^2 (notebook 08 counts them). The RPN then
    learns too little of what a small object looks like: on val (seed 0), the best anchor
    of objects under 20 px (square root of the area, original pixels) had a median object
    probability of 0.10, against 0.91 for those over 48 px, and 28% of them had no
    proposal at IoU 0.5 among the 800 then kept at test. With 0.5, an image has 214
    positives (128 are sampled) and a small object 23: the median probability rose to 0.75
    and the share without a proposal fell to 13%; val mAP@0.5 (trained on train, seeds 0
    to 4) went from 0.813 to 0.836 (AP small 0.758 to 0.826). The README's Faster R-CNN
    section has the table, with the other rules tried.
    """

    positive_iou: float = 0.5  # positive if IoU >= this with some ground truth (paper: 0.7)
    negative_iou: float = 0.3  # negative if IoU < this with every ground truth
    batch_size: int = 256  # anchors sampled per image
    positive_fraction: float = 0.5  # "up to 1:1"
    allowed_border: float = 0.0  # px an anchor may cross the border by (py-faster-rcnn: 0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.negative_iou <= self.positive_iou <= 1.0:
            raise ValueError(
                "AnchorTargetConfig: need 0 <= negative_iou <= positive_iou <= 1, got "
                f"{self.negative_iou}, {self.positive_iou}"
            )
        if self.batch_size < 1 or not 0.0 <= self.positive_fraction <= 1.0:
            raise ValueError(
                "AnchorTargetConfig: batch_size must be >= 1 and positive_fraction in "
                f"[0, 1], got {self.batch_size}, {self.positive_fraction}"
            )


class AnchorTargets(NamedTuple):
    """Per-anchor training targets of one image, rows in ``grid_anchors`` order (M anchors).

    labels: int64 [M], 1 positive, 0 negative, -1 ignored (outside, between thresholds or
    not sampled); bbox_targets: float32 [M, 4], unnormalised deltas on positive rows, 0
    elsewhere; bbox_weights: float32 [M, 4], 1 on positive rows, 0 elsewhere.
    """

    labels: np.ndarray
    bbox_targets: np.ndarray
    bbox_weights: np.ndarray


def inside_image(
    anchors: np.ndarray, height: int, width: int, allowed_border: float = 0.0
) -> np.ndarray:
    """bool [M]: anchors ``[M, 4]`` lying within the ``height x width`` image, up to
    ``allowed_border`` px outside it (pixels 0 .. width - 1, 0-based inclusive)."""
    b = allowed_border
    return (
        (anchors[:, 0] >= -b)
        & (anchors[:, 1] >= -b)
        & (anchors[:, 2] <= width - 1 + b)
        & (anchors[:, 3] <= height - 1 + b)
    )


@njit(cache=True)
def _label_inside(anchors, inside, gt_boxes, negative_iou, positive_iou, labels, matched):
    """``label_anchors``'s rules, for G >= 1 ground truths. anchors float64 [M, 4],
    inside bool [M], gt_boxes float64 [G, 4]; labels and matched (int64 [M], output) are
    written where ``inside``.

    The IoUs are ``box_iou``'s (one ``pair_iou``, in float64), taken in two passes over
    the anchors instead of kept as an [M, G] matrix: on a toy image (69,120 anchors,
    45,024 inside) the matrix and its NumPy reductions took 5.5 ms, these passes 1.7 ms.
    Serial: the second pass needs every ground truth's maximum from the first.
    """
    n_gt = gt_boxes.shape[0]
    gt_max = np.zeros(n_gt)  # rule (i): each ground truth's highest IoU over the anchors
    max_iou = np.zeros(anchors.shape[0])
    for i in range(anchors.shape[0]):
        if not inside[i]:
            continue
        a = anchors[i]
        best, arg = -1.0, 0
        for j in range(n_gt):
            g = gt_boxes[j]
            iou = pair_iou(a[0], a[1], a[2], a[3], g[0], g[1], g[2], g[3])
            if iou > best:  # the first ground truth on ties, as argmax
                best, arg = iou, j
            gt_max[j] = max(gt_max[j], iou)
        max_iou[i], matched[i] = best, arg
    for i in range(anchors.shape[0]):
        if not inside[i]:
            continue
        label = NEGATIVE if max_iou[i] < negative_iou else IGNORED
        if max_iou[i] >= positive_iou:  # rule (ii)
            label = POSITIVE
        else:  # rule (i), ties included; a ground truth no anchor overlaps has no best
            a = anchors[i]
            for j in range(n_gt):
                g = gt_boxes[j]
                iou = pair_iou(a[0], a[1], a[2], a[3], g[0], g[1], g[2], g[3])
                if gt_max[j] > 0 and iou == gt_max[j]:
                    label = POSITIVE  # positives override negatives
                    break
        labels[i] = label


def label_anchors(
    anchors: np.ndarray,
    gt_boxes: np.ndarray,
    inside: np.ndarray,
    config: AnchorTargetConfig = AnchorTargetConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Label anchors ``[M, 4]`` against ground truth ``[G, 4]`` (section 3.1.2).

    ``inside`` bool [M]: the anchors that may be labelled (the rest stay -1). Returns
    (labels int64 [M] in {1, 0, -1}, matched int64 [M]: the index of each anchor's
    highest-IoU ground truth, -1 where there is none). A positive from rule (i) regresses
    towards its own highest-IoU ground truth, as py-faster-rcnn does.
    """
    labels = np.full(len(anchors), IGNORED, dtype=np.int64)
    matched = np.full(len(anchors), -1, dtype=np.int64)
    inside = np.asarray(inside, dtype=np.bool_)
    if len(gt_boxes) == 0:  # nothing to find: every inside anchor is background
        labels[inside] = NEGATIVE
        return labels, matched
    # float64, as box_iou computes: the same IoUs, so the same ties for rule (i)
    gt = np.ascontiguousarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    anchors = np.ascontiguousarray(anchors, dtype=np.float64)
    _label_inside(anchors, inside, gt, config.negative_iou, config.positive_iou, labels, matched)
    return labels, matched


def sample_anchors(
    labels: np.ndarray, config: AnchorTargetConfig, rng: np.random.Generator
) -> np.ndarray:
    """Keep at most ``batch_size`` labelled anchors (section 3.1.3): up to
    ``positive_fraction * batch_size`` random positives, then random negatives for the
    rest. labels int64 [M] -> a new int64 [M], the anchors not drawn set to -1."""
    out = labels.copy()
    pos = np.flatnonzero(labels == POSITIVE)
    neg = np.flatnonzero(labels == NEGATIVE)
    n_pos = min(len(pos), int(config.positive_fraction * config.batch_size))
    n_neg = min(len(neg), config.batch_size - n_pos)
    out[pos] = IGNORED
    out[neg] = IGNORED
    out[rng.choice(pos, n_pos, replace=False)] = POSITIVE
    out[rng.choice(neg, n_neg, replace=False)] = NEGATIVE
    return out


def anchor_targets(
    anchors: np.ndarray,
    gt_boxes: np.ndarray,
    height: int,
    width: int,
    rng: np.random.Generator,
    config: AnchorTargetConfig = AnchorTargetConfig(),
) -> AnchorTargets:
    """The RPN's training targets for one image.

    anchors: float32 ``[M, 4]`` from ``grid_anchors`` (input-image pixels); gt_boxes:
    ``[G, 4]`` in the same pixels (the scaled image); ``height x width``: the scaled
    image's size before any batch padding, so anchors over the padding are ignored too.
    """
    anchors = np.asarray(anchors, dtype=np.float32)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
    inside = inside_image(anchors, height, width, config.allowed_border)
    labels, matched = label_anchors(anchors, gt_boxes, inside, config)
    labels = sample_anchors(labels, config, rng)
    pos = np.flatnonzero(labels == POSITIVE)
    bbox_targets = np.zeros((len(anchors), 4), dtype=np.float32)
    bbox_weights = np.zeros((len(anchors), 4), dtype=np.float32)
    if len(pos):
        bbox_targets[pos] = bbox_encode(anchors[pos], gt_boxes[matched[pos]])
        bbox_weights[pos] = 1.0
    return AnchorTargets(labels, bbox_targets, bbox_weights)


def batch_anchor_targets(
    anchors: np.ndarray,
    gt_boxes: list[np.ndarray],
    image_sizes,
    rng: np.random.Generator,
    config: AnchorTargetConfig = AnchorTargetConfig(),
) -> AnchorTargets:
    """``anchor_targets`` of each image of a batch, stacked for ``RPNLoss``: labels
    ``[N, M]``, bbox_targets and bbox_weights ``[N, M, 4]``. gt_boxes: N arrays ``[G, 4]``
    in input pixels; image_sizes: N (height, width) of the inputs before padding."""
    per_image = [
        anchor_targets(anchors, gt, h, w, rng, config)
        for gt, (h, w) in zip(gt_boxes, image_sizes, strict=True)
    ]
    return AnchorTargets(*(np.stack(arrays) for arrays in zip(*per_image, strict=True)))
