"""Max pooling with the argmax kept from forward, so backward is a scatter through it.

Input ``x [N, C, H, W]``, output ``y [N, C, H', W']`` with ``H' = 1 + (H - k) // stride``
(floor mode, no padding). ``argmax [N, C, H', W']`` int64 holds the flat index ``h*W + w``
of the winning input inside its (n, c) plane; ties go to the first position in row-major
order. The same argmax idea powers RoI pooling (Fast R-CNN section 2.1).
"""

import numpy as np
from numba import njit, prange

from minircnn.layers.base import Layer, check_float_array, check_same_shape, require_forward
from minircnn.layers.conv import conv_output_size


@njit(parallel=True, cache=True)
def maxpool2d_forward(x, kernel, stride, y, argmax):
    """x: [N, C, H, W] -> y, argmax (outputs, preallocated [N, C, H', W'])."""
    n_img, n_ch, _, w_in = x.shape
    h_out, w_out = y.shape[2], y.shape[3]
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for oh in range(h_out):
            for ow in range(w_out):
                h0 = oh * stride
                w0 = ow * stride
                best = x[n, c, h0, w0]
                best_idx = h0 * w_in + w0
                for h in range(h0, h0 + kernel):
                    for w in range(w0, w0 + kernel):
                        v = x[n, c, h, w]
                        if v > best:
                            best = v
                            best_idx = h * w_in + w
                y[n, c, oh, ow] = best
                argmax[n, c, oh, ow] = best_idx


@njit(parallel=True, cache=True)
def maxpool2x2_forward(x, y, argmax):
    """``maxpool2d_forward`` for kernel 2, stride 2 (every pool of the backbones), unrolled:
    two input rows per output row and the four window values compared in row-major order,
    so ties go to the same position. 5-9x faster than the general loop nest here."""
    n_img, n_ch, _, w_in = x.shape
    h_out, w_out = y.shape[2], y.shape[3]
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for oh in range(h_out):
            top, bottom = x[n, c, 2 * oh], x[n, c, 2 * oh + 1]
            y_row, argmax_row = y[n, c, oh], argmax[n, c, oh]
            for ow in range(w_out):
                w = 2 * ow
                best, idx = top[w], 2 * oh * w_in + w
                if top[w + 1] > best:
                    best, idx = top[w + 1], 2 * oh * w_in + w + 1
                if bottom[w] > best:
                    best, idx = bottom[w], (2 * oh + 1) * w_in + w
                if bottom[w + 1] > best:
                    best, idx = bottom[w + 1], (2 * oh + 1) * w_in + w + 1
                y_row[ow] = best
                argmax_row[ow] = idx


@njit(parallel=True, cache=True)
def maxpool2d_backward(dy, argmax, dx):
    """Route dy [N, C, H', W'] to the argmax positions of dx [N, C, H, W] (overwritten).

    Overlapping windows (kernel > stride) may share a winner; their gradients add. Each
    (n, c) plane is written by one thread only, so there is no race.
    """
    n_img, n_ch = dx.shape[:2]
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        dx_plane = dx[n, c].reshape(-1)  # flat views: argmax holds flat indices
        dy_plane, argmax_plane = dy[n, c].reshape(-1), argmax[n, c].reshape(-1)
        dx_plane[:] = 0.0
        for k in range(dy_plane.size):
            dx_plane[argmax_plane[k]] += dy_plane[k]


class MaxPool2d(Layer):
    """Max pooling over ``kernel x kernel`` windows with the given stride (default = kernel)."""

    def __init__(self, kernel_size: int = 2, stride: int | None = None) -> None:
        super().__init__()
        stride = kernel_size if stride is None else stride
        if kernel_size < 1 or stride < 1:
            raise ValueError(
                f"MaxPool2d: kernel_size and stride must be >= 1, got {kernel_size}, {stride}"
            )
        self.kernel_size, self.stride = kernel_size, stride
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: [N, C, H, W] float32/float64 -> y: [N, C, H', W'] (argmax kept for backward)."""
        x = check_float_array(x, "MaxPool2d input", 4)
        n_img, n_ch, h_in, w_in = x.shape
        h_out = conv_output_size(h_in, self.kernel_size, self.stride, 0)
        w_out = conv_output_size(w_in, self.kernel_size, self.stride, 0)
        y = np.empty((n_img, n_ch, h_out, w_out), dtype=x.dtype)
        argmax = np.empty(y.shape, dtype=np.int64)
        if self.kernel_size == self.stride == 2:
            maxpool2x2_forward(x, y, argmax)
        else:
            maxpool2d_forward(x, self.kernel_size, self.stride, y, argmax)
        self._cache = (argmax, x.shape)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy: [N, C, H', W'] -> dx: [N, C, H, W]."""
        argmax, x_shape = require_forward(self._cache, "MaxPool2d")
        dy = check_same_shape(dy, argmax.shape, "MaxPool2d")
        dx = np.empty(x_shape, dtype=dy.dtype)
        maxpool2d_backward(dy, argmax, dx)
        return dx
