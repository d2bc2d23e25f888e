"""From RPN outputs to region proposals (Faster R-CNN sections 3.1, 3.3).

For one image: keep the ``pre_nms_top_n`` anchors of highest objectness, decode their
deltas with the one ``bbox_decode`` (unnormalised, like the targets of ``targets.py``),
clip to the image with the one ``clip_boxes`` (section 3.3: cross-boundary proposals are
clipped at test time), drop boxes narrower or shorter than ``min_size`` (scaled to the
input), NMS at IoU 0.7 with the one ``nms`` (section 3.3: cuts ~20000 boxes to ~2000 per
image without harming accuracy), keep ``post_nms_top_n``. Everything is array
operations over all anchors at once; the only loop is over images.

Proposals are constants for what follows: training Fast R-CNN on them ignores the
derivative with respect to their coordinates (section 3.2, "approximate joint training").
"""

from dataclasses import dataclass

import numpy as np

from minircnn.ops.boxes import bbox_decode, clip_boxes
from minircnn.ops.nms import nms
from minircnn.rpn.anchors import map_to_anchor_rows


@dataclass(frozen=True)
class RPNProposalConfig:
    """Proposal selection, in training (to train Fast R-CNN) and in testing.

    The paper (section 3.3, py-faster-rcnn): 12000 before / 2000 after NMS in training,
    6000 / 300 at test, NMS IoU 0.7, min size 16 px of the original image. A toy image
    has ~55k anchors (48 x 64 cells x 18) but only a few objects on 12x fewer pixels than
    a 600 x 1000 image. Training here keeps 6000 before and 800 after NMS, the test's
    list when that was chosen, so that Fast R-CNN's head learns on the kind of proposals
    it scores (val mAP@0.5, 5 seeds, with ``SamplerConfig.jittered_per_gt``: 0.793
    against 0.778 with 2000 / 500, four seeds of five higher, for about 5% more training
    time; an earlier comparison, with 300 test proposals and without the jittered copies,
    had measured 6000 before NMS worse than 2000: 0.599 against 0.629).

    Test keeps the paper's 6000 before NMS: on val, 1000 lost small objects (one model,
    trained on train: mAP@0.5 0.530 with 1000, 0.642 with 6000), as the anchors inside large
    objects outrank them and fill the top 1000. For the same reason it kept 800 after NMS,
    not the paper's 300, while the RPN scored small objects low: their proposals ranked
    below the large objects' many partial ones, and Fast R-CNN's head re-scores every
    proposal anyway. Val mAP@0.5 of models trained on train for 800 iterations (with 2000 /
    500 in training), 3 seeds: without ``SamplerConfig.jittered_per_gt``, 0.684 with 300
    and 0.761 with 1000; with it, 0.753 with 500, 0.778 with 700, 0.790 with 800 and 0.794
    with 1000. Since rule (ii) of the anchor labels takes IoU 0.5 (``AnchorTargetConfig``),
    small objects score higher and 500 do as well as 800 (the defaults' models, seeds 0 to
    4: 0.830 with 300, 0.837 with 500, 0.836 with 800, 0.837 with 1000), for a head that
    scores 300 fewer RoIs per image: the test keeps 500.
    """

    train_pre_nms_top_n: int = 6000  # paper 12000
    train_post_nms_top_n: int = 800  # paper 2000
    test_pre_nms_top_n: int = 6000  # paper 6000
    test_post_nms_top_n: int = 500  # paper 300
    nms_iou: float = 0.7  # paper 0.7
    # px of the original image (times the image's scale); paper 16 at shorter side 600.
    # Toy objects are >= ~16 px once rescaled: a 4 px box is never one.
    min_size: float = 4.0

    def __post_init__(self) -> None:
        counts = (
            self.train_pre_nms_top_n,
            self.train_post_nms_top_n,
            self.test_pre_nms_top_n,
            self.test_post_nms_top_n,
        )
        if min(counts) < 1 or not 0.0 <= self.nms_iou <= 1.0 or self.min_size < 0:
            raise ValueError(
                "RPNProposalConfig: top-N counts must be >= 1, nms_iou in [0, 1] and "
                f"min_size >= 0, got {counts}, {self.nms_iou}, {self.min_size}"
            )

    def top_n(self, training: bool) -> tuple[int, int]:
        """(pre_nms_top_n, post_nms_top_n) for training or testing."""
        if training:
            return self.train_pre_nms_top_n, self.train_post_nms_top_n
        return self.test_pre_nms_top_n, self.test_post_nms_top_n


def objectness(score_rows: np.ndarray) -> np.ndarray:
    """Object probability: the softmax over the 2 scores (not object, object) of each
    anchor. score_rows [..., 2] -> float32 [...].

    With two classes the softmax's second output is ``1 / (1 + exp(s0 - s1))`` (divide
    its numerator and denominator by ``exp(s1)``): one exp per anchor instead of two and
    a normalisation, over ~55k anchors per image. The exponent is capped so that it
    cannot overflow (the probability is then 0 to float32 precision anyway).
    """
    rows = np.asarray(score_rows, dtype=np.float32)
    margin = np.minimum(rows[..., 0] - rows[..., 1], np.float32(80.0))
    return (1.0 / (1.0 + np.exp(margin))).astype(np.float32)


def propose(
    anchors: np.ndarray,
    scores: np.ndarray,
    deltas: np.ndarray,
    height: int,
    width: int,
    scale: float = 1.0,
    config: RPNProposalConfig = RPNProposalConfig(),
    training: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Proposals of one image.

    anchors: ``[M, 4]`` (``grid_anchors``); scores: objectness ``[M]`` (``objectness``);
    deltas: ``[M, 4]`` unnormalised, same rows; ``height x width``: the input image's
    size (before batch padding); ``scale``: the input's scale over the original image
    (``min_size * scale`` is the smallest width and height kept).

    Returns (boxes float32 ``[P, 4]`` in input pixels, scores float32 ``[P]``), by
    descending score, ``P <= post_nms_top_n``.
    """
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if np.shape(anchors) != (len(scores), 4) or np.shape(deltas) != (len(scores), 4):
        raise ValueError(
            f"propose: expected anchors and deltas [{len(scores)}, 4], got "
            f"{np.shape(anchors)} and {np.shape(deltas)}"
        )
    pre_n, post_n = config.top_n(training)
    # pre-NMS top-N by objectness, found in linear time (argpartition); only these are
    # decoded, as torchvision's RPN does (py-faster-rcnn decodes all ~55k first)
    top = np.arange(len(scores))
    if pre_n < len(scores):
        top = np.argpartition(-scores, pre_n - 1)[:pre_n]
    top = top[np.argsort(-scores[top], kind="stable")]  # by descending score
    boxes = clip_boxes(bbox_decode(anchors[top], deltas[top]), height, width)
    widths = boxes[:, 2] - boxes[:, 0] + 1
    heights = boxes[:, 3] - boxes[:, 1] + 1
    min_size = config.min_size * scale
    keep = np.flatnonzero((widths >= min_size) & (heights >= min_size))
    boxes, scores = boxes[keep], scores[top[keep]]
    if len(keep):  # NMS stops once post_n boxes are kept: indices by descending score
        keep = nms(boxes, scores, config.nms_iou, max_keep=post_n)
        boxes, scores = boxes[keep], scores[keep]
    return boxes, scores


def propose_batch(
    scores: np.ndarray,
    deltas: np.ndarray,
    anchors: np.ndarray,
    image_sizes,
    scales=None,
    config: RPNProposalConfig = RPNProposalConfig(),
    training: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Proposals of a batch, straight from ``RPNHead``'s outputs, as RoIs for Fast R-CNN.

    scores ``[N, 2A, H, W]``, deltas ``[N, 4A, H, W]``; anchors ``[H*W*A, 4]`` of that
    map; image_sizes: N ``(height, width)`` of the inputs before padding; scales: N
    input-over-original factors (None: all 1). Returns (rois float32 ``[R, 5]``: batch
    index, x1, y1, x2, y2 in input pixels, as ``RoIPool`` takes them; scores float32
    ``[R]``), image by image, each by descending score.
    """
    score_rows = map_to_anchor_rows(scores, 2)  # [N, M, 2]
    delta_rows = map_to_anchor_rows(deltas, 4)  # [N, M, 4]
    scales = [1.0] * len(score_rows) if scales is None else scales
    if not len(image_sizes) == len(scales) == len(score_rows):
        raise ValueError(
            f"propose_batch: {len(score_rows)} images, {len(image_sizes)} sizes, "
            f"{len(scales)} scales"
        )
    rois, kept_scores = [], []
    for i, ((h, w), s) in enumerate(zip(image_sizes, scales, strict=True)):
        boxes, sc = propose(
            anchors, objectness(score_rows[i]), delta_rows[i], h, w, s, config, training
        )
        rois.append(np.column_stack([np.full(len(boxes), i, dtype=np.float32), boxes]))
        kept_scores.append(sc)
    return (
        np.concatenate(rois).astype(np.float32).reshape(-1, 5),
        np.concatenate(kept_scores).astype(np.float32),
    )
