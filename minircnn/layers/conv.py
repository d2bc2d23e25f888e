"""2-D convolution as im2col + one matrix product for the whole batch.

For an input ``x [N, C, H, W]`` and weight ``[F, C, kH, kW]`` the output is
``y [N, F, H', W']`` with ``H' = 1 + (H + 2*pad - dilation*(kH - 1) - 1) // stride``
(likewise ``W'``). A dilation d spaces the kernel's taps d pixels apart (tap (i, j) reads
input pixel ``(h*stride - pad + i*d, w*stride - pad + j*d)``): a 3x3 kernel with d = 2
sees a 5x5 window for the arithmetic of a 3x3 one (Yu and Koltun, ICLR 2016).

im2col unrolls every receptive field into a column of ``cols [C*kH*kW, N*H'*W']`` (row
``(c*kH + i)*kW + j``, column ``n*H'*W' + h*W' + w``), so the convolution of the whole
batch is one product ``W2 @ cols`` with ``W2 = weight.reshape(F, C*kH*kW)``. One large
product keeps BLAS efficient even for a batch of many small maps (pre-training crops);
its ``[F, N, H'W']`` result is reordered to NCHW in the same pass that adds the bias. The
products run in BLAS (NumPy's matmul, on every core); the unrolling and its adjoint
(col2im) are the Numba kernels here, parallel over (image, channel) pairs, which never
write to the same place.

One exception: a 3x3, stride-1, undilated convolution of an input with few channels (the
RGB image) runs as a direct convolution instead. Its product sums over only C*9 = 27
values, a shape too skinny for BLAS to run well (measured on the default network's first conv:
1.8 ms as im2col + GEMM, 1.0 ms direct); the column matrix is then built only if
backward asks for it (never, when the layer is frozen).
"""

import numpy as np
from numba import njit, prange

from minircnn.layers.base import Layer, check_float_array, check_same_shape, require_forward


def conv_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    """``1 + (size + 2*pad - span) // stride`` with ``span = dilation*(kernel - 1) + 1``,
    the kernel's extent; raises if the kernel does not fit."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ValueError(
            f"kernel {kernel} (dilation {dilation}) with stride {stride} and padding {pad} "
            f"does not fit input size {size}"
        )
    return out


@njit(inline="always")
def _valid_range(pad_minus_offset, stride, size_in, size_out):
    """Output positions o in [lo, hi) whose input index o*stride - pad + offset is inside
    [0, size_in); positions outside read zero padding."""
    lo = 0
    if pad_minus_offset > 0:
        lo = (pad_minus_offset + stride - 1) // stride
    hi = (size_in - 1 + pad_minus_offset) // stride + 1
    if hi > size_out:
        hi = size_out
    if hi < 0:  # a tap beyond the input for every output (a dilated kernel on a tiny map)
        hi = 0
    if lo > hi:
        lo = hi
    return lo, hi


@njit(parallel=True, cache=True)
def im2col(x, kh, kw, stride, pad, dilation, cols):
    """Unroll receptive fields. x: [N, C, H, W]; cols (output): [C*kh*kw, N*H'*W']; tap
    (i, j) is read at offset (i*dilation, j*dilation)."""
    n_img, n_ch, h_in, w_in = x.shape
    h_out = (h_in + 2 * pad - dilation * (kh - 1) - 1) // stride + 1
    w_out = (w_in + 2 * pad - dilation * (kw - 1) - 1) // stride + 1
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for i in range(kh):
            di = pad - i * dilation  # input row = oh*stride - di
            oh_lo, oh_hi = _valid_range(di, stride, h_in, h_out)
            for j in range(kw):
                dj = pad - j * dilation
                row = (c * kh + i) * kw + j
                ow_lo, ow_hi = _valid_range(dj, stride, w_in, w_out)
                dst = cols[row, n * h_out * w_out : (n + 1) * h_out * w_out]  # image n's part
                dst[: oh_lo * w_out] = 0.0
                dst[oh_hi * w_out :] = 0.0
                for oh in range(oh_lo, oh_hi):
                    base = oh * w_out
                    src = x[n, c, oh * stride - di]
                    dst[base : base + ow_lo] = 0.0
                    dst[base + ow_hi : base + w_out] = 0.0
                    if stride == 1:  # contiguous run: a plain (vectorised) copy
                        dst[base + ow_lo : base + ow_hi] = src[ow_lo - dj : ow_hi - dj]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            dst[base + ow] = src[ow * stride - dj]


@njit(parallel=True, cache=True)
def col2im(dcols, kh, kw, stride, pad, dilation, dx):
    """Adjoint of im2col: sum dcols [C*kh*kw, N*H'*W'] back into dx [N, C, H, W]
    (overwritten).

    Each (n, c) plane only receives from its own kh*kw rows, so the parallel loop is
    race-free and the sum order is fixed (deterministic).
    """
    n_img, n_ch, h_in, w_in = dx.shape
    h_out = (h_in + 2 * pad - dilation * (kh - 1) - 1) // stride + 1
    w_out = (w_in + 2 * pad - dilation * (kw - 1) - 1) // stride + 1
    for nc in prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        dx[n, c] = 0.0
        for i in range(kh):
            di = pad - i * dilation
            oh_lo, oh_hi = _valid_range(di, stride, h_in, h_out)
            for j in range(kw):
                dj = pad - j * dilation
                row = (c * kh + i) * kw + j
                ow_lo, ow_hi = _valid_range(dj, stride, w_in, w_out)
                for oh in range(oh_lo, oh_hi):
                    dst = dx[n, c, oh * stride - di]
                    src = dcols[row, (n * h_out + oh) * w_out : (n * h_out + oh + 1) * w_out]
                    if stride == 1:  # contiguous runs: a plain (vectorised) add
                        dst[ow_lo - dj : ow_hi - dj] += src[ow_lo:ow_hi]
                    else:
                        for ow in range(ow_lo, ow_hi):
                            dst[ow * stride - dj] += src[ow]


# Largest C_in that runs the direct 3x3 kernel: im2col + GEMM wins once C*9 is large
DIRECT_MAX_CHANNELS = 4


@njit(parallel=True, cache=True, fastmath={"contract"})
def direct_conv3x3(xp, weight, bias, y):
    """3x3, stride-1 convolution of a zero-padded input, without im2col.

    xp: [N, C, H'+2, W'+2] (the input with its zero padding); weight [F, C, 3, 3];
    bias [F]; y (output): [N, F, H', W']. Parallel over output rows; each row of y
    accumulates one input channel per pass, its nine taps unrolled so that the loop over
    w vectorises.
    ``contract`` only lets a*b + c become one fused multiply-add (one rounding instead of
    two): no reassociation, so the sum order is fixed.
    """
    n_img, n_ch = xp.shape[:2]
    n_filt, h_out, w_out = y.shape[1:]
    for nh in prange(n_img * h_out):
        n = nh // h_out
        h = nh % h_out
        for f in range(n_filt):
            out = y[n, f, h]
            out[:] = bias[f]
            for c in range(n_ch):
                r0, r1, r2 = xp[n, c, h], xp[n, c, h + 1], xp[n, c, h + 2]
                k = weight[f, c]
                k00, k01, k02 = k[0, 0], k[0, 1], k[0, 2]
                k10, k11, k12 = k[1, 0], k[1, 1], k[1, 2]
                k20, k21, k22 = k[2, 0], k[2, 1], k[2, 2]
                for w in range(w_out):
                    out[w] += (
                        k00 * r0[w] + k01 * r0[w + 1] + k02 * r0[w + 2]
                        + k10 * r1[w] + k11 * r1[w + 1] + k12 * r1[w + 2]
                        + k20 * r2[w] + k21 * r2[w + 1] + k22 * r2[w + 2]
                    )  # fmt: skip


def uses_direct_conv(n_ch: int, kh: int, kw: int, stride: int, dilation: int = 1) -> bool:
    """Whether ``Conv2d`` runs ``direct_conv3x3`` for this shape (see the module doc)."""
    return kh == kw == 3 and stride == dilation == 1 and n_ch <= DIRECT_MAX_CHANNELS


def conv2d_forward_direct(x, weight, bias, pad, padded=None):
    """Convolution forward by ``direct_conv3x3``: x [N, C, H, W], weight [F, C, 3, 3],
    bias [F], stride 1. Returns ``y [N, F, H', W']`` and the scratch ``padded
    [N, C, H+2*pad, W+2*pad]``, which a later call with the same ``pad`` may reuse (only
    its interior is rewritten)."""
    if weight.shape[2:] != (3, 3):
        raise ValueError(f"conv2d_forward_direct: needs a 3x3 kernel, got {weight.shape}")
    n_img, n_ch, h_in, w_in = x.shape
    shape = (n_img, n_ch, h_in + 2 * pad, w_in + 2 * pad)
    if padded is None or padded.shape != shape or padded.dtype != x.dtype:
        padded = np.zeros(shape, dtype=x.dtype)  # the border stays zero between calls
    padded[:, :, pad : pad + h_in, pad : pad + w_in] = x
    h_out = conv_output_size(h_in, 3, 1, pad)
    w_out = conv_output_size(w_in, 3, 1, pad)
    y = np.empty((n_img, weight.shape[0], h_out, w_out), dtype=x.dtype)
    direct_conv3x3(padded, weight, bias, y)
    return y, padded


def unroll(x, kh, kw, stride, pad, cols=None, dilation=1):
    """``im2col`` of x [N, C, H, W] into ``cols [C*kh*kw, N*H'*W']``, reusing ``cols``
    (from an earlier call) when its shape and dtype fit; returns the column matrix."""
    n_img, n_ch, h_in, w_in = x.shape
    h_out = conv_output_size(h_in, kh, stride, pad, dilation)
    w_out = conv_output_size(w_in, kw, stride, pad, dilation)
    cols_shape = (n_ch * kh * kw, n_img * h_out * w_out)
    if cols is None or cols.shape != cols_shape or cols.dtype != x.dtype:
        cols = np.empty(cols_shape, dtype=x.dtype)
    im2col(x, kh, kw, stride, pad, dilation, cols)
    return cols


def conv2d_forward(x, weight, bias, stride, pad, cols=None, products=None, dilation=1):
    """Convolution forward.

    x: [N, C, H, W]; weight: [F, C, kH, kW]; bias: [F]; all the same float dtype;
    ``dilation``: the taps' spacing. Returns ``y [N, F, H', W']``, ``cols [C*kH*kW,
    N*H'*W']`` (kept for backward) and the scratch ``products [F, N*H'*W']``. ``cols`` and
    ``products`` from the previous call may be passed in to be reused: large fresh arrays
    cost page faults (measured: the first conv's forward 6.8 ms with a fresh product
    array, 2.2 ms reusing it).
    """
    n_img, _, h_in, w_in = x.shape
    n_filt, n_ch, kh, kw = weight.shape
    h_out = conv_output_size(h_in, kh, stride, pad, dilation)
    w_out = conv_output_size(w_in, kw, stride, pad, dilation)
    cols = unroll(x, kh, kw, stride, pad, cols, dilation)
    w2 = weight.reshape(n_filt, n_ch * kh * kw)  # [F, C*kH*kW], a view
    products_shape = (n_filt, cols.shape[1])
    if products is None or products.shape != products_shape or products.dtype != x.dtype:
        products = np.empty(products_shape, dtype=x.dtype)
    np.matmul(w2, cols, out=products)  # [F, Ckk] @ [Ckk, N*H'W'] -> [F, N*H'W']
    y = np.empty((n_img, n_filt, h_out * w_out), dtype=x.dtype)
    # [F, N, H'W'] -> [N, F, H'W'], fused with the bias add
    np.add(products.reshape(n_filt, n_img, -1).transpose(1, 0, 2), bias[None, :, None], out=y)
    return y.reshape(n_img, n_filt, h_out, w_out), cols, products


def conv2d_backward(dy, cols, x_shape, weight, stride, pad, need_dx=True, dcols=None, dilation=1):
    """Convolution backward.

    dy: [N, F, H', W']; cols: from forward, whose ``stride``, ``pad`` and ``dilation`` these
    must be. Returns ``(dx [N, C, H, W] or None, dweight, dbias)``. ``need_dx=False``
    skips the input gradient (the first layer of a network); ``dcols`` (shaped like cols)
    may be passed in to be reused as scratch.
    """
    n_img = dy.shape[0]
    n_filt, n_ch, kh, kw = weight.shape
    # [N, F, H'W'] -> [F, N*H'W'], the column order of cols (a copy unless N == 1)
    dy2 = dy.reshape(n_img, n_filt, -1).transpose(1, 0, 2).reshape(n_filt, -1)
    w2 = weight.reshape(n_filt, n_ch * kh * kw)
    dw2 = dy2 @ cols.T  # [F, N*H'W'] @ [N*H'W', Ckk]; BLAS reads .T in place
    dbias = dy2.sum(axis=1)
    dx = None
    if need_dx:
        if dcols is None or dcols.shape != cols.shape or dcols.dtype != cols.dtype:
            dcols = np.empty_like(cols)
        np.matmul(w2.T, dy2, out=dcols)  # [Ckk, F] @ [F, N*H'W']
        dx = np.empty(x_shape, dtype=dy.dtype)
        col2im(dcols, kh, kw, stride, pad, dilation, dx)
    return dx, dw2.reshape(weight.shape), dbias


class Conv2d(Layer):
    """Convolution layer, weight ``[F, C, kH, kW]`` (He-initialised), bias ``[F]`` (zero).

    ``need_input_grad=False`` makes backward skip dx (useful for the layer that sees the
    image). ``dilation``: the spacing of the kernel's taps (module doc).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        dtype=np.float32,
        rng: np.random.Generator | None = None,
        weight_std: float | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if min(in_channels, out_channels, kh, kw, stride, dilation) < 1 or padding < 0:
            raise ValueError(
                "Conv2d: channels, kernel size, stride and dilation must be >= 1 and padding "
                f">= 0, got in={in_channels} out={out_channels} kernel={(kh, kw)} "
                f"stride={stride} padding={padding} dilation={dilation}"
            )
        rng = rng if rng is not None else np.random.default_rng(0)
        std = weight_std if weight_std is not None else np.sqrt(2.0 / (in_channels * kh * kw))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.dilation = dilation
        self.dtype = np.dtype(dtype)
        self.params["weight"] = (
            std * rng.standard_normal((out_channels, in_channels, kh, kw))
        ).astype(self.dtype)
        self.params["bias"] = np.zeros(out_channels, dtype=self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.need_input_grad = True
        self.direct = uses_direct_conv(in_channels, kh, kw, stride, dilation)
        self._cache = None
        self._cols = self._dcols = self._products = self._padded = None  # reused scratch

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: [N, C, H, W] of the layer's dtype -> y: [N, F, H', W']."""
        x = check_float_array(x, "Conv2d input", 4, self.dtype)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv2d input: expected {self.in_channels} channels, got shape {x.shape}"
            )
        weight, bias = self.params["weight"], self.params["bias"]
        if self.direct:  # im2col waits for backward (the module doc says why)
            y, self._padded = conv2d_forward_direct(x, weight, bias, self.padding, self._padded)
            cols = None
        else:
            y, cols, self._products = conv2d_forward(
                x,
                weight,
                bias,
                self.stride,
                self.padding,
                self._cols,
                self._products,
                self.dilation,
            )
            self._cols = cols
        # the direct path keeps its input for backward's im2col (like ReLU and Linear)
        self._cache = (cols, x if cols is None else None, x.shape, y.shape)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        """dy: [N, F, H', W'] -> dx: [N, C, H, W] (None if need_input_grad is False)."""
        cols, x, x_shape, y_shape = require_forward(self._cache, "Conv2d")
        dy = check_same_shape(dy, y_shape, "Conv2d")
        if cols is None:  # the direct forward built none
            cols = self._cols = unroll(x, *self.kernel_size, self.stride, self.padding, self._cols)
            self._cache = (cols, None, x_shape, y_shape)
        if self.need_input_grad and (self._dcols is None or self._dcols.shape != cols.shape):
            self._dcols = np.empty_like(cols)
        dx, dw, db = conv2d_backward(
            dy,
            cols,
            x_shape,
            self.params["weight"],
            self.stride,
            self.padding,
            need_dx=self.need_input_grad,
            dcols=self._dcols,
            dilation=self.dilation,
        )
        self.grads["weight"], self.grads["bias"] = dw, db
        return dx
