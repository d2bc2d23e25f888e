"""Fully connected layer, ReLU and (inverted) dropout.

Linear: ``y = x @ W.T + b`` with ``x [B, in]``, ``W [out, in]``, ``b [out]``. Its work is
two or three matrix products, which NumPy hands to BLAS on every core; a Numba loop could
only be slower (Numba's own ``np.dot`` calls the same BLAS). ReLU and dropout are
element-wise Numba kernels.
"""

import numpy as np
from numba import njit, prange

from minircnn.layers.base import Layer, check_float_array, check_same_shape, require_forward


def linear_forward(x, weight, bias):
    """x: [B, in], weight: [out, in], bias: [out] -> y: [B, out]."""
    y = x @ weight.T  # [B, in] @ [in, out]; BLAS reads the transpose in place
    y += bias
    return y


def linear_backward(dy, x, weight):
    """dy: [B, out] -> (dx [B, in], dweight [out, in], dbias [out])."""
    return dy @ weight, dy.T @ x, dy.sum(axis=0)


@njit(parallel=True, cache=True)
def relu_forward(x, y):
    """y = max(x, 0), element-wise over flat arrays of equal size; NaN stays NaN (so a
    diverging network shows in the loss instead of being silently zeroed)."""
    for i in prange(x.size):
        v = x[i]
        y[i] = 0.0 if v <= 0 else v


@njit(parallel=True, cache=True)
def relu_backward(dy, x, dx):
    """dx = dy where x > 0 else 0 (the subgradient 0 is taken at x == 0)."""
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > 0 else 0.0


@njit(parallel=True, cache=True)
def mask_multiply(a, mask, out):
    """out = a * mask, element-wise over flat arrays (dropout forward and backward)."""
    for i in prange(a.size):
        out[i] = a[i] * mask[i]


class Linear(Layer):
    """Fully connected layer. Weights ~ N(0, weight_std^2) (He's std by default), bias 0."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        dtype=np.float32,
        rng: np.random.Generator | None = None,
        weight_std: float | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Linear: sizes must be >= 1, got {in_features}, {out_features}")
        rng = rng if rng is not None else np.random.default_rng(0)
        std = weight_std if weight_std is not None else np.sqrt(2.0 / in_features)
        self.in_features, self.out_features = in_features, out_features
        self.dtype = np.dtype(dtype)
        self.params["weight"] = (std * rng.standard_normal((out_features, in_features))).astype(
            self.dtype
        )
        self.params["bias"] = np.zeros(out_features, dtype=self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._x = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: [B, in] of the layer's dtype -> y: [B, out]."""
        x = check_float_array(x, "Linear input", 2, self.dtype)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"Linear input: expected {self.in_features} features, got shape {x.shape}"
            )
        self._x = x
        return linear_forward(x, self.params["weight"], self.params["bias"])

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy: [B, out] -> dx: [B, in]."""
        x = require_forward(self._x, "Linear")
        dy = check_same_shape(dy, (x.shape[0], self.out_features), "Linear")
        dx, self.grads["weight"], self.grads["bias"] = linear_backward(dy, x, self.params["weight"])
        return dx


class ReLU(Layer):
    """max(x, 0) for any shape; keeps its input for backward."""

    def __init__(self) -> None:
        super().__init__()
        self._x = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_float_array(x, "ReLU input", None)
        y = np.empty_like(x)
        relu_forward(x.reshape(-1), y.reshape(-1))
        self._x = x
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = require_forward(self._x, "ReLU")
        dy = check_same_shape(dy, x.shape, "ReLU")
        dx = np.empty_like(dy)
        relu_backward(dy.reshape(-1), x.reshape(-1), dx.reshape(-1))
        return dx


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``p`` and scale the
    survivors by ``1/(1-p)`` so that eval mode is the identity (as Caffe's dropout layer,
    used by fc6/fc7 of the paper's networks). Masks come from ``rng`` (seedable)."""

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._mask = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = check_float_array(x, "Dropout input", None)
        if not self.training or self.p == 0.0:
            self._mask = None
            return x.copy()
        keep = self.rng.random(x.shape) >= self.p
        self._mask = keep.astype(x.dtype) / x.dtype.type(1.0 - self.p)
        y = np.empty_like(x)
        mask_multiply(x.reshape(-1), self._mask.reshape(-1), y.reshape(-1))
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._mask is None:
            return np.array(dy, copy=True)
        dy = check_same_shape(dy, self._mask.shape, "Dropout")
        dx = np.empty_like(dy)
        mask_multiply(dy.reshape(-1), self._mask.reshape(-1), dx.reshape(-1))
        return dx
