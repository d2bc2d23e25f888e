"""The RPN's network head and its loss (Faster R-CNN section 3.1, figure 3, eq. 1).

    features [N, C, H, W] -> 3x3 conv (C -> D, padding d) -> ReLU   ("intermediate layer")
        -> 1x1 conv -> scores [N, 2A, H, W]    (cls layer: 2k scores, object vs not)
        -> 1x1 conv -> deltas [N, 4A, H, W]    (reg layer: 4k box deltas)

A 3x3 conv followed by 1x1 convs *is* the paper's n x n sliding window (n = 3) followed by
two fully connected layers shared across positions. Channel ``a*k + j`` belongs to anchor a
(``anchors.py``'s layout). ``RPNConfig`` spaces the window's taps d = 2 cells apart (the
paper's are adjacent, d = 1), so it spans 5 x 5 cells for the arithmetic of 3 x 3.

Objectness is the paper's two-class softmax (2k outputs) rather than one logistic logit
per anchor: it is the form the paper describes, and it trains with minircnn's existing
``SoftmaxCrossEntropy`` (labels 0 = not object, 1 = object, minircnn's "0 is background")
instead of a new sigmoid loss. The two are equivalent up to parametrisation (the logit is
``s1 - s0``); the softmax costs k extra filters.
"""

from typing import NamedTuple

import numpy as np

from minircnn.layers import Conv2d, ReLU, SmoothL1Loss, SoftmaxCrossEntropy
from minircnn.model import _Network
from minircnn.rpn.anchors import anchor_rows_to_map, map_to_anchor_rows


class RPNHead(_Network):
    """forward(features [N, C, H, W]) -> (scores [N, 2A, H, W], deltas [N, 4A, H, W]);
    backward(dscores, ddeltas) -> dfeatures [N, C, H, W]. Parameters are named like
    py-faster-rcnn's layers: ``rpn_conv``, ``rpn_cls_score``, ``rpn_bbox_pred``.

    ``mid_channels`` D defaults to C (the paper: 256-d for ZF, 512-d for VGG16, i.e. the
    backbone's width; ``RPNConfig`` sets 32, half of ours); ``window`` is the paper's n
    (n = 3). On the toy val split n = 5 (a 42 px view instead of 34) gave mAP@0.5 0.648
    against 0.629, at three times the head's cost in training (72 ms per iteration against
    23), and n = 7 gave 0.630: n = 3 stays the default. With alternating training
    (``train.alternating``) n = 5 helps more: val mAP@0.5 0.768 against 0.646, for 285 s of
    fine-tuning on trainval instead of 238. ``dilation`` d spaces the window's taps d cells
    apart (``Conv2d``'s dilation): the same 42 px view as n = 5 for the cost of n = 3 when
    d = 2, ``RPNConfig``'s default. Every layer starts from N(0, 0.01^2) weights and zero
    biases (section 3.1.3, "new layers").
    """

    kind = "rpn_head"

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        mid_channels: int | None = None,
        dtype=np.float32,
        rng: np.random.Generator | None = None,
        weight_std: float = 0.01,
        window: int = 3,
        dilation: int = 1,
    ) -> None:
        rng = rng if rng is not None else np.random.default_rng(0)
        mid = mid_channels or in_channels
        if window < 1 or window % 2 == 0:
            raise ValueError(f"RPNHead: window must be an odd size >= 1, got {window}")
        self.num_anchors = num_anchors
        self.conv = Conv2d(  # the n x n sliding window; "same" padding keeps the map's size
            in_channels,
            mid,
            window,
            padding=dilation * (window // 2),
            dtype=dtype,
            rng=rng,
            weight_std=weight_std,
            dilation=dilation,
        )
        self.relu = ReLU()
        self.cls_score = Conv2d(
            mid, 2 * num_anchors, 1, dtype=dtype, rng=rng, weight_std=weight_std
        )
        self.bbox_pred = Conv2d(
            mid, 4 * num_anchors, 1, dtype=dtype, rng=rng, weight_std=weight_std
        )

    def forward(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """features [N, C, H, W] (the head's dtype) -> (scores [N, 2A, H, W],
        deltas [N, 4A, H, W]); channel ``a*k + j`` is anchor a's j-th value."""
        x = self.relu.forward(self.conv.forward(features))  # [N, D, H, W]
        return self.cls_score.forward(x), self.bbox_pred.forward(x)

    def backward(self, dscores: np.ndarray, ddeltas: np.ndarray) -> np.ndarray:
        """Gradients of the two outputs -> gradient of the features [N, C, H, W] (for the
        backbone); overwrites every layer's ``grads``. The two siblings share the
        intermediate layer, so their input gradients add."""
        dx = self.cls_score.backward(dscores) + self.bbox_pred.backward(ddeltas)
        return self.conv.backward(self.relu.backward(dx))

    def named_layers(self):
        """[(name, Conv2d)] in forward order; ``params()``/``grads()`` key by these names."""
        return [
            ("rpn_conv", self.conv),
            ("rpn_cls_score", self.cls_score),
            ("rpn_bbox_pred", self.bbox_pred),
        ]

    def trainable_names(self):
        """Every layer trains (all three are new layers, section 3.1.3)."""
        return [name for name, _ in self.named_layers()]

    def _mode_layers(self):
        return []  # convs and ReLUs only: the same in training and eval


class RPNLossTuple(NamedTuple):
    """The RPN loss (eq. 1) and its terms: ``total = cls + reg_weight * reg``."""

    total: float
    cls: float
    reg: float


class RPNLoss:
    """Faster R-CNN eq. 1 over a batch of N images of M = H*W*A anchors each:

        L = 1/N_cls * sum_i L_cls(p_i, p*_i) + lambda * 1/N_reg * sum_i p*_i L_reg(t_i, t*_i)

    - L_cls: two-class log loss over the *sampled* anchors (label 0 or 1); ignored anchors
      (-1) get no loss and no gradient. N_cls = the number sampled (256 per image in the
      paper's mini-batch).
    - L_reg: smooth L1 (Fast R-CNN eq. 3) summed over the 4 deltas of positive anchors
      (``bbox_weights``), N_reg = the number of anchor *locations* N*H*W (~2400 per image
      in the paper), lambda = 10: the two terms then weigh about equally (section 3.1.2).

    py-faster-rcnn instead divides L_reg by N_cls with lambda = 1; the paper finds the
    result insensitive to lambda over a wide range (section 4.1, table 9). Both terms reuse
    ``minircnn.layers.losses``: SoftmaxCrossEntropy on the sampled rows, SmoothL1Loss with
    weights on all rows, its 1/rows mean rescaled to 1/N_reg.
    """

    def __init__(self, reg_weight: float = 10.0) -> None:
        self.reg_weight = reg_weight
        self.cls_loss = SoftmaxCrossEntropy()
        self.reg_loss = SmoothL1Loss(beta=1.0)
        self._cache = None

    def forward(
        self,
        scores: np.ndarray,
        deltas: np.ndarray,
        labels: np.ndarray,
        bbox_targets: np.ndarray,
        bbox_weights: np.ndarray,
    ) -> RPNLossTuple:
        """scores [N, 2A, H, W], deltas [N, 4A, H, W] (the head's outputs); labels int
        [N, M] in {1, 0, -1}; bbox_targets, bbox_weights [N, M, 4] (``AnchorTargets`` of
        each image, stacked), M = H*W*A in ``grid_anchors`` order."""
        n, two_a, h, w = scores.shape
        if deltas.shape != (n, 2 * two_a, h, w) or two_a % 2:
            raise ValueError(
                f"RPNLoss: scores {scores.shape} and deltas {deltas.shape} are not "
                "[N, 2A, H, W] and [N, 4A, H, W]"
            )
        m = h * w * (two_a // 2)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.shape != (n * m,):
            raise ValueError(f"RPNLoss: expected labels [{n}, {m}], got {np.shape(labels)}")
        score_rows = map_to_anchor_rows(scores, 2).reshape(n * m, 2)
        sampled = np.flatnonzero(labels >= 0)
        cls = 0.0
        if len(sampled):  # N_cls = len(sampled): the loss kernel's mean
            cls = self.cls_loss.forward(score_rows[sampled], labels[sampled])
        delta_rows = map_to_anchor_rows(deltas, 4).reshape(n * m, 4)
        targets = np.reshape(bbox_targets, (n * m, 4))
        weights = np.reshape(bbox_weights, (n * m, 4))
        # SmoothL1Loss divides by its n*m rows; rescale to 1 / N_reg, N_reg = n*h*w
        to_n_reg = (n * m) / (n * h * w)
        reg = self.reg_loss.forward(delta_rows, targets, weights) * to_n_reg
        self._cache = (scores.shape, scores.dtype, sampled, to_n_reg)
        return RPNLossTuple(cls + self.reg_weight * reg, cls, reg)

    def backward(self) -> tuple[np.ndarray, np.ndarray]:
        """-> (dscores [N, 2A, H, W], ddeltas [N, 4A, H, W]) of the total loss."""
        if self._cache is None:
            raise RuntimeError("RPNLoss.backward called before forward")
        (n, two_a, h, w), dtype, sampled, to_n_reg = self._cache
        dscore_rows = np.zeros((n * h * w * (two_a // 2), 2), dtype=dtype)
        if len(sampled):  # ignored anchors keep a zero gradient
            dscore_rows[sampled] = self.cls_loss.backward(1.0)
        ddelta_rows = self.reg_loss.backward(self.reg_weight * to_n_reg)
        return (
            anchor_rows_to_map(dscore_rows.reshape(n, -1, 2), h, w),
            anchor_rows_to_map(ddelta_rows.reshape(n, -1, 4), h, w),
        )
