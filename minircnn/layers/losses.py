"""The two losses of Fast R-CNN's multi-task objective (Girshick 2015, eq. 1-3).

``L(p, u, t^u, v) = L_cls(p, u) + lambda * [u >= 1] * L_loc(t^u, v)``

- ``L_cls = -log p_u``: softmax cross-entropy over K+1 classes (label 0 is background).
- ``L_loc = sum_i smooth_L1(t^u_i - v_i)`` over the 4 box coordinates of the true class u,
  with ``smooth_L1(x) = 0.5 x^2 if |x| < 1 else |x| - 0.5`` (eq. 3): less sensitive to
  outliers than the L2 loss of R-CNN and SPPnet.

The ``[u >= 1]`` indicator and "true class only" selection are both expressed as
per-element weights on SmoothL1Loss, so the loss itself stays a plain element-wise sum.
"""

from typing import NamedTuple

import numpy as np
from numba import njit

from minircnn.layers.base import Layer, check_float_array, require_forward


@njit(cache=True)
def softmax_cross_entropy_forward(logits, labels, weights, probs):
    """Weighted mean of -log softmax(logits)[label] over the batch.

    logits: [B, K+1]; labels: int64 [B]; weights: [B]; probs (output): [B, K+1].
    Returns the loss ``sum_b w_b * nll_b / B``. Uses the max-shift (log-sum-exp) so that
    large logits cannot overflow.
    """
    n, n_cls = logits.shape
    total = 0.0
    for b in range(n):
        m = logits[b, 0]
        for k in range(1, n_cls):
            if logits[b, k] > m:
                m = logits[b, k]
        s = 0.0
        for k in range(n_cls):
            e = np.exp(logits[b, k] - m)
            probs[b, k] = e
            s += e
        for k in range(n_cls):
            probs[b, k] /= s
        log_p = logits[b, labels[b]] - m - np.log(s)
        total -= weights[b] * log_p
    return total / n


@njit(cache=True)
def softmax_cross_entropy_backward(probs, labels, weights, dloss, dlogits):
    """d loss / d logits = (softmax - onehot(label)) * w_b * dloss / B."""
    n, n_cls = probs.shape
    for b in range(n):
        scale = weights[b] * dloss / n
        for k in range(n_cls):
            dlogits[b, k] = probs[b, k] * scale
        dlogits[b, labels[b]] -= scale


# The smooth-L1 kernels are serial: even the RPN's ~10^5 anchor rows take about a
# millisecond, and a parallel kernel would add seconds of compilation to a cold start.
@njit(cache=True)
def smooth_l1_forward(pred, target, weights, beta):
    """sum over all elements of w * smooth_L1(pred - target) / R, for [R, D] arrays.

    smooth_L1(d) = 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta (beta = 1 in the paper).
    """
    n = pred.shape[0]
    row_sums = np.zeros(n, dtype=pred.dtype)
    for r in range(n):
        s = 0.0
        for j in range(pred.shape[1]):
            a = abs(pred[r, j] - target[r, j])
            # q (a - q/2) / beta with q = min(a, beta) is 0.5 a^2 / beta below beta and
            # a - 0.5 beta above: the same function without a branch, which the CPU would
            # mispredict about half the time (measured: 4.1 -> 0.85 ms on 110000 x 4)
            q = min(a, beta)
            s += weights[r, j] * q * (a - 0.5 * q) / beta
        row_sums[r] = s
    return row_sums.sum() / n


@njit(cache=True)
def smooth_l1_backward(pred, target, weights, beta, dloss, dpred):
    """d loss / d pred = w * clip((pred - target) / beta, -1, 1) * dloss / R."""
    n = pred.shape[0]
    for r in range(n):
        for j in range(pred.shape[1]):
            d = (pred[r, j] - target[r, j]) / beta
            g = min(max(d, -1.0), 1.0)
            dpred[r, j] = weights[r, j] * g * dloss / n


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Probabilities from scores along ``axis`` (same shape; float64 in, float64 out,
    float32 in, float32 out), max-shifted so that large scores cannot overflow. What the
    log loss above is the negative log of; detection and the RPN use it on their scores."""
    z = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


class SoftmaxCrossEntropy(Layer):
    """Log loss over K+1 classes, mean over the batch, optional per-sample weights."""

    def __init__(self) -> None:
        super().__init__()
        self._cache = None

    def forward(
        self, logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
    ) -> float:
        """logits: [B, K+1] float; labels: int [B] in 0..K (0 = background);
        weights: [B] or None (all ones). Returns the scalar loss."""
        logits = check_float_array(logits, "SoftmaxCrossEntropy logits", 2)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        n, n_cls = logits.shape
        if labels.shape != (n,):
            raise ValueError(
                f"SoftmaxCrossEntropy labels: expected shape ({n},), got {labels.shape}"
            )
        if n and (labels.min() < 0 or labels.max() >= n_cls):
            raise ValueError(
                f"SoftmaxCrossEntropy labels: expected values in [0, {n_cls - 1}], got "
                f"[{labels.min()}, {labels.max()}]"
            )
        if weights is None:
            weights = np.ones(n, dtype=logits.dtype)
        weights = np.ascontiguousarray(weights, dtype=logits.dtype)
        if weights.shape != (n,):
            raise ValueError(
                f"SoftmaxCrossEntropy weights: expected shape ({n},), got {weights.shape}"
            )
        if n == 0:
            raise ValueError("SoftmaxCrossEntropy: empty batch")
        probs = np.empty_like(logits)
        loss = softmax_cross_entropy_forward(logits, labels, weights, probs)
        self._cache = (probs, labels, weights)
        return float(loss)

    def backward(self, dloss: float = 1.0) -> np.ndarray:
        """Returns d(dloss * loss)/d logits: [B, K+1]."""
        probs, labels, weights = require_forward(self._cache, "SoftmaxCrossEntropy")
        dlogits = np.empty_like(probs)
        softmax_cross_entropy_backward(probs, labels, weights, float(dloss), dlogits)
        return dlogits


class SmoothL1Loss(Layer):
    """Smooth L1 box-regression loss (eq. 3), summed over elements, divided by R rows.

    ``weights [R, D]`` select what counts: for Fast R-CNN, 1 on the 4 columns of a
    foreground RoI's true class and 0 elsewhere (the ``[u >= 1]`` of eq. 1).
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"SmoothL1Loss: beta must be > 0, got {beta}")
        self.beta = beta
        self._cache = None

    def forward(
        self, pred: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None
    ) -> float:
        """pred, target, weights: [R, D] float (weights None = all ones) -> scalar loss."""
        pred = check_float_array(pred, "SmoothL1Loss pred", 2)
        target = np.ascontiguousarray(target, dtype=pred.dtype)
        weights = np.ones_like(pred) if weights is None else weights
        weights = np.ascontiguousarray(weights, dtype=pred.dtype)
        for name, arr in (("target", target), ("weights", weights)):
            if arr.shape != pred.shape:
                raise ValueError(
                    f"SmoothL1Loss {name}: expected shape {pred.shape}, got {arr.shape}"
                )
        if pred.shape[0] == 0:
            raise ValueError("SmoothL1Loss: empty batch")
        self._cache = (pred, target, weights)
        return float(smooth_l1_forward(pred, target, weights, self.beta))

    def backward(self, dloss: float = 1.0) -> np.ndarray:
        """Returns d(dloss * loss)/d pred: [R, D]."""
        pred, target, weights = require_forward(self._cache, "SmoothL1Loss")
        dpred = np.empty_like(pred)
        smooth_l1_backward(pred, target, weights, self.beta, float(dloss), dpred)
        return dpred


class LossTuple(NamedTuple):
    """The multi-task loss and its two terms (eq. 1), for logs and plots."""

    total: float
    cls: float
    loc: float


class MultiTaskLoss:
    """``L = L_cls + lambda * [u >= 1] * L_loc`` (Fast R-CNN eq. 1), lambda = 1 in the paper.

    forward(cls_score [R, K+1], bbox_pred [R, 4(K+1)], labels [R], bbox_targets
    [R, 4(K+1)], bbox_weights [R, 4(K+1)]) -> LossTuple; backward() -> (dcls, dbbox).
    ``bbox_weights`` is 1 on the 4 columns of a foreground RoI's true class, else 0.
    """

    def __init__(self, loc_weight: float = 1.0) -> None:
        self.loc_weight = loc_weight
        self.cls_loss = SoftmaxCrossEntropy()
        self.loc_loss = SmoothL1Loss(beta=1.0)

    def forward(self, cls_score, bbox_pred, labels, bbox_targets, bbox_weights) -> LossTuple:
        cls = self.cls_loss.forward(cls_score, labels)
        loc = self.loc_loss.forward(bbox_pred, bbox_targets, bbox_weights)
        return LossTuple(cls + self.loc_weight * loc, cls, loc)

    def backward(self) -> tuple[np.ndarray, np.ndarray]:
        return self.cls_loss.backward(1.0), self.loc_loss.backward(self.loc_weight)
