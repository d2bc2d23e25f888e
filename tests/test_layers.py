"""Layers: Numba kernels vs plain-NumPy loop references, float64 gradient checks,
float32 vs float64 agreement, and bad-input errors."""

import numpy as np
import pytest

from minircnn.gradcheck import gradcheck, relative_error
from minircnn.layers import (
    Conv2d,
    Dropout,
    Linear,
    MaxPool2d,
    ReLU,
    SmoothL1Loss,
    SoftmaxCrossEntropy,
)
from minircnn.layers.conv import DIRECT_MAX_CHANNELS, col2im, conv2d_forward, im2col
from minircnn.layers.pool import maxpool2d_forward, maxpool2x2_forward

TOL = 1e-6


# ---------------------------------------------------------------- plain references
def conv_reference(x, w, b, stride, pad, dilation=1):
    n_img, _, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    span_h, span_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1  # the taps' extent
    ho = (h + 2 * pad - span_h) // stride + 1
    wo = (wd + 2 * pad - span_w) // stride + 1
    y = np.zeros((n_img, f, ho, wo), dtype=np.float64)
    for n in range(n_img):
        for k in range(f):
            for i in range(ho):
                for j in range(wo):
                    rows = slice(i * stride, i * stride + span_h, dilation)
                    cols = slice(j * stride, j * stride + span_w, dilation)
                    y[n, k, i, j] = np.sum(xp[n, :, rows, cols] * w[k]) + b[k]
    return y


def conv_backward_reference(dy, x, w, stride, pad, dilation=1):
    _, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp = np.zeros_like(xp, dtype=np.float64)
    dw = np.zeros_like(w, dtype=np.float64)
    n_img, f, ho, wo = dy.shape
    span_h, span_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
    for n in range(n_img):
        for k in range(f):
            for i in range(ho):
                for j in range(wo):
                    sl = (n, slice(None), slice(i * stride, i * stride + span_h, dilation))
                    sl = sl + (slice(j * stride, j * stride + span_w, dilation),)
                    dw[k] += dy[n, k, i, j] * xp[sl]
                    dxp[sl] += dy[n, k, i, j] * w[k]
    h, wd = x.shape[2:]
    return dxp[:, :, pad : pad + h, pad : pad + wd], dw, dy.sum(axis=(0, 2, 3))


def maxpool_reference(x, k, s):
    n_img, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    y = np.zeros((n_img, c, ho, wo))
    dx_map = np.zeros((n_img, c, ho, wo), dtype=np.int64)
    for n in range(n_img):
        for ch in range(c):
            for i in range(ho):
                for j in range(wo):
                    win = x[n, ch, i * s : i * s + k, j * s : j * s + k]
                    a = int(np.argmax(win))
                    y[n, ch, i, j] = win.flat[a]
                    dx_map[n, ch, i, j] = (i * s + a // k) * w + (j * s + a % k)
    return y, dx_map


def distinct_values(rng, shape, gap=1e-3):
    """Random values with every pair at least `gap` apart (no ties for pooling / ReLU)."""
    size = int(np.prod(shape))
    vals = (np.arange(size) - size / 2) * gap * 2 + gap
    return rng.permutation(vals).reshape(shape)


def layer_gradcheck(layer, x, seed=0):
    """Gradient check of sum(layer(x) * G) for input and every parameter."""
    rng = np.random.default_rng(seed)
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)
    dx = layer.backward(g)
    grads = {k: v.copy() for k, v in layer.grads.items()}

    def f():
        return float(np.sum(layer.forward(x) * g))

    errors = {"x": gradcheck(f, x, dx)}
    for name, p in layer.params.items():
        errors[name] = gradcheck(f, p, grads[name])
    return errors


CONV_CASES = [
    # (N, C, H, W, F, k, stride, pad, dilation)
    (1, 3, 7, 5, 4, 3, 1, 1, 1),  # 3 channels, 3x3, stride 1: the direct kernel
    (2, 6, 7, 5, 4, 3, 1, 1, 1),  # the same with 6 channels: im2col + GEMM
    (3, 2, 9, 8, 3, 3, 2, 1, 1),
    (2, 4, 6, 6, 5, 1, 1, 0, 1),
    (1, 2, 11, 7, 2, 5, 2, 2, 1),
    (3, 1, 5, 9, 2, 2, 2, 0, 1),
    (2, 3, 8, 9, 4, 3, 1, 2, 2),  # dilated "same" conv (the RPN's): im2col, not direct
    (1, 2, 12, 10, 3, 3, 2, 1, 3),  # dilation 3 with stride 2: taps beyond the padding
    (2, 2, 6, 7, 2, 3, 1, 0, 2),  # no padding: output 2 x 3
    (1, 2, 2, 1, 3, 3, 1, 2, 2),  # a 2 x 1 map: some taps miss the input for every output
]


# ---------------------------------------------------------------- conv
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_loop_reference(case):
    n, c, h, w, f, k, s, p, d = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w))
    layer = Conv2d(c, f, k, stride=s, padding=p, dtype=np.float64, rng=rng, dilation=d)
    layer.params["bias"][:] = rng.standard_normal(f)
    y = layer.forward(x)
    y_ref = conv_reference(x, layer.params["weight"], layer.params["bias"], s, p, d)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    dx_ref, dw_ref, db_ref = conv_backward_reference(dy, x, layer.params["weight"], s, p, d)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["weight"], dw_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["bias"], db_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_gradcheck(case):
    n, c, h, w, f, k, s, p, d = case
    rng = np.random.default_rng(2)
    layer = Conv2d(c, f, k, stride=s, padding=p, dtype=np.float64, rng=rng, dilation=d)
    layer.params["bias"][:] = rng.standard_normal(f)
    errors = layer_gradcheck(layer, rng.standard_normal((n, c, h, w)))
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_direct_conv_matches_im2col_and_loop_reference(channels):
    # the few-channel 3x3 path (direct_conv3x3) against the loop reference, in both dtypes,
    # then backward, which builds the column matrix the direct forward skipped
    assert Conv2d(channels, 5, 3, padding=1).direct
    assert not Conv2d(DIRECT_MAX_CHANNELS + 1, 5, 3, padding=1).direct
    assert not Conv2d(channels, 5, 3, stride=2, padding=1).direct
    assert not Conv2d(channels, 5, 3, padding=2, dilation=2).direct
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, channels, 7, 10))
    for pad in (0, 1, 2):
        layer = Conv2d(channels, 5, 3, padding=pad, dtype=np.float64, rng=rng)
        layer.params["bias"][:] = rng.standard_normal(5)
        w, b = layer.params["weight"], layer.params["bias"]
        y = layer.forward(x)
        np.testing.assert_allclose(y, conv_reference(x, w, b, 1, pad), atol=1e-12)
        np.testing.assert_allclose(y, conv2d_forward(x, w, b, 1, pad)[0], atol=1e-12)
        dy = rng.standard_normal((2, 5, 5 + 2 * pad, 8 + 2 * pad))
        dx = layer.backward(dy)
        dx_ref, dw_ref, db_ref = conv_backward_reference(dy, x, w, 1, pad)
        np.testing.assert_allclose(dx, dx_ref, atol=1e-12)
        np.testing.assert_allclose(layer.grads["weight"], dw_ref, atol=1e-12)
        np.testing.assert_allclose(layer.grads["bias"], db_ref, atol=1e-12)
        l32 = Conv2d(channels, 5, 3, padding=pad)
        l32.params["weight"][:], l32.params["bias"][:] = w, b
        y32 = l32.forward(x.astype(np.float32))
        assert y32.dtype == np.float32
        np.testing.assert_allclose(y32, conv_reference(x, w, b, 1, pad), atol=1e-5)


def test_direct_conv_backward_uses_the_latest_forward():
    # backward builds its column matrix from the input of the forward just before it,
    # whatever the shapes of earlier calls (the scratch buffers are reused across calls)
    rng = np.random.default_rng(13)
    layer = Conv2d(3, 4, 3, padding=1, dtype=np.float64, rng=rng)
    w, b = layer.params["weight"], layer.params["bias"]
    for shape in [(2, 3, 6, 7), (1, 3, 9, 5), (2, 3, 6, 7)]:
        x = rng.standard_normal(shape)
        np.testing.assert_allclose(layer.forward(x), conv_reference(x, w, b, 1, 1), atol=1e-12)
        dy = rng.standard_normal((shape[0], 4, shape[2], shape[3]))
        dx = layer.backward(dy)
        dx_ref, dw_ref, db_ref = conv_backward_reference(dy, x, w, 1, 1)
        np.testing.assert_allclose(dx, dx_ref, atol=1e-12)
        np.testing.assert_allclose(layer.grads["weight"], dw_ref, atol=1e-12)


def test_direct_conv_gradcheck():
    rng = np.random.default_rng(12)
    layer = Conv2d(3, 4, 3, padding=1, dtype=np.float64, rng=rng)
    assert layer.direct
    layer.params["bias"][:] = rng.standard_normal(4)
    errors = layer_gradcheck(layer, rng.standard_normal((2, 3, 6, 5)))
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("dilation, out_hw", [(1, (4, 3)), (2, (3, 2))])
def test_im2col_col2im_are_adjoint(dilation, out_hw):
    # <im2col(x), c> == <x, col2im(c)> for any x, c: col2im is exactly the transpose.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6))
    cols = np.empty((3 * 9, 2 * out_hw[0] * out_hw[1]))
    im2col(x, 3, 3, 2, 1, dilation, cols)
    c = rng.standard_normal(cols.shape)
    back = np.empty_like(x)
    col2im(c, 3, 3, 2, 1, dilation, back)
    assert np.isclose(np.sum(cols * c), np.sum(x * back), rtol=1e-12)


@pytest.mark.parametrize("channels", [3, 6])  # direct, im2col
def test_conv_float32_matches_float64(channels):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, channels, 10, 9))
    l64 = Conv2d(channels, 4, 3, padding=1, dtype=np.float64, rng=np.random.default_rng(0))
    l32 = Conv2d(channels, 4, 3, padding=1, dtype=np.float32, rng=np.random.default_rng(0))
    l32.params["weight"][:] = l64.params["weight"]
    y64 = l64.forward(x)
    y32 = l32.forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [3, 6])  # direct, im2col
def test_conv_non_contiguous_input(channels):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, channels, 8)).transpose(0, 2, 1, 3)  # [2, C, 6, 8]
    layer = Conv2d(channels, 2, 3, padding=1, dtype=np.float64)
    np.testing.assert_allclose(
        layer.forward(x), layer.forward(np.ascontiguousarray(x)), rtol=0, atol=0
    )


def test_conv_bad_input():
    layer = Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="4-D"):
        layer.forward(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="3 channels"):
        layer.forward(np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="float32"):
        layer.forward(np.zeros((1, 3, 8, 8), np.float64))
    with pytest.raises(ValueError, match="does not fit"):
        layer.forward(np.zeros((1, 3, 2, 2), np.float32))
    layer.forward(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="upstream gradient"):
        layer.backward(np.zeros((1, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="dilation 3"):  # spans 7 x 7 > 5 x 5
        Conv2d(3, 4, 3, dilation=3).forward(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="dilation=0"):
        Conv2d(3, 4, 3, dilation=0)


# ---------------------------------------------------------------- max pool
@pytest.mark.parametrize("shape,k,s", [((1, 2, 6, 7), 2, 2), ((3, 3, 7, 9), 3, 2)])
def test_maxpool_matches_reference_and_gradcheck(shape, k, s):
    rng = np.random.default_rng(6)
    x = distinct_values(rng, shape)
    layer = MaxPool2d(k, s)
    y = layer.forward(x)
    y_ref, arg_ref = maxpool_reference(x, k, s)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(layer._cache[0], arg_ref)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    dx_ref = np.zeros(x.shape)
    for idx in np.ndindex(*y.shape):
        a = arg_ref[idx]
        dx_ref[idx[0], idx[1], a // shape[3], a % shape[3]] += dy[idx]
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-15, atol=0)
    assert layer_gradcheck(layer, x)["x"] < TOL


def test_maxpool_2x2_fast_path_breaks_ties_like_the_general_kernel():
    # values in {0, 1}: most windows hold ties, which both kernels give to the first
    # position in row-major order (the reference's np.argmax does the same)
    x = np.random.default_rng(9).integers(0, 2, (2, 3, 7, 9)).astype(np.float32)
    y_ref, arg_ref = maxpool_reference(x, 2, 2)
    y, arg = np.empty(y_ref.shape, np.float32), np.empty(y_ref.shape, np.int64)
    maxpool2x2_forward(x, y, arg)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(arg, arg_ref)
    maxpool2d_forward(x, 2, 2, y, arg)
    np.testing.assert_array_equal(arg, arg_ref)


def test_maxpool_float32_and_errors():
    rng = np.random.default_rng(7)
    x = distinct_values(rng, (2, 2, 4, 4))
    np.testing.assert_allclose(
        MaxPool2d(2).forward(x.astype(np.float32)), MaxPool2d(2).forward(x), rtol=1e-6
    )
    with pytest.raises(ValueError, match="4-D"):
        MaxPool2d(2).forward(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="float32 or float64"):
        MaxPool2d(2).forward(np.zeros((1, 1, 4, 4), dtype=np.int32))


# ---------------------------------------------------------------- linear, relu, dropout
@pytest.mark.parametrize("batch", [1, 3])
def test_linear_reference_and_gradcheck(batch):
    rng = np.random.default_rng(8)
    layer = Linear(7, 5, dtype=np.float64, rng=rng)
    layer.params["bias"][:] = rng.standard_normal(5)
    x = rng.standard_normal((batch, 7))
    y = layer.forward(x)
    w, b = layer.params["weight"], layer.params["bias"]
    ref = np.array(
        [[sum(w[o, i] * x[r, i] for i in range(7)) + b[o] for o in range(5)] for r in range(batch)]
    )
    np.testing.assert_allclose(y, ref, rtol=1e-12)
    assert max(layer_gradcheck(layer, x).values()) < TOL


def test_linear_errors_and_float32():
    layer = Linear(4, 2)
    with pytest.raises(ValueError, match="4 features"):
        layer.forward(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        layer.forward(np.zeros((3,), np.float32))
    l64 = Linear(4, 2, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((3, 4))
    np.testing.assert_allclose(layer.forward(x.astype(np.float32)), l64.forward(x), rtol=1e-5)


def test_relu_reference_gradcheck_and_no_inplace():
    rng = np.random.default_rng(9)
    x = distinct_values(rng, (3, 4, 5))
    layer = ReLU()
    np.testing.assert_array_equal(layer.forward(x), np.where(x > 0, x, 0.0))
    dy = rng.standard_normal(x.shape)
    dy_copy = dy.copy()
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, 0.0))
    np.testing.assert_array_equal(dy, dy_copy)  # upstream gradient untouched
    assert layer_gradcheck(layer, x)["x"] < TOL


def test_dropout_train_eval_and_gradcheck():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((50, 40))
    layer = Dropout(0.5, rng=np.random.default_rng(0))
    y = layer.forward(x)
    dropped = y == 0
    assert 0.4 < dropped.mean() < 0.6
    np.testing.assert_allclose(y[~dropped], 2 * x[~dropped])
    layer.eval()
    np.testing.assert_array_equal(layer.forward(x), x)
    layer.train()

    class FixedMaskDropout(Dropout):  # same mask every call, so f(x) is a fixed function
        def forward(self, x):
            self.rng = np.random.default_rng(1)
            return super().forward(x)

    assert layer_gradcheck(FixedMaskDropout(0.3), x[:5, :6].copy())["x"] < TOL
    with pytest.raises(ValueError, match="p must be"):
        Dropout(1.0)


# ---------------------------------------------------------------- losses
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy(weighted):
    rng = np.random.default_rng(11)
    logits = 3 * rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, 6)
    weights = rng.random(6) if weighted else None
    loss_layer = SoftmaxCrossEntropy()
    loss = loss_layer.forward(logits, labels, weights)
    w = np.ones(6) if weights is None else weights
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.isclose(loss, -np.sum(w * np.log(p[np.arange(6), labels])) / 6, rtol=1e-12)
    dlogits = loss_layer.backward()
    err = gradcheck(lambda: loss_layer.forward(logits, labels, weights), logits, dlogits)
    assert err < TOL


def test_softmax_cross_entropy_is_stable_and_float32():
    logits = np.array([[1000.0, 0.0, -1000.0]])
    loss = SoftmaxCrossEntropy().forward(logits, np.array([1]))
    assert np.isfinite(loss) and np.isclose(loss, 1000.0)
    x = np.random.default_rng(0).standard_normal((5, 3))
    lab = np.array([0, 1, 2, 1, 0])
    a = SoftmaxCrossEntropy().forward(x.astype(np.float32), lab)
    b = SoftmaxCrossEntropy().forward(x, lab)
    assert np.isclose(a, b, rtol=1e-5)
    with pytest.raises(ValueError, match=r"values in \[0, 2\]"):
        SoftmaxCrossEntropy().forward(x, np.array([0, 1, 3, 1, 0]))


def test_smooth_l1():
    rng = np.random.default_rng(12)
    pred = rng.standard_normal((5, 8)) * 2
    target = rng.standard_normal((5, 8))
    weights = (rng.random((5, 8)) > 0.5).astype(float)
    loss_layer = SmoothL1Loss()
    loss = loss_layer.forward(pred, target, weights)
    d = np.abs(pred - target)
    ref = np.sum(weights * np.where(d < 1, 0.5 * d**2, d - 0.5)) / 5
    assert np.isclose(loss, ref, rtol=1e-12)
    # keep differences away from the |d| = 1 kink where the second derivative jumps
    assert np.all(np.abs(d - 1) > 1e-4)
    dpred = loss_layer.backward()
    assert gradcheck(lambda: loss_layer.forward(pred, target, weights), pred, dpred) < TOL
    assert np.all(dpred[weights == 0] == 0)
    with pytest.raises(ValueError, match="target: expected shape"):
        loss_layer.forward(pred, target[:, :4], None)


def test_smooth_l1_other_beta_and_the_kink():
    # beta != 1 (the 1/beta must be there) in float32, with |d| exactly at beta (every value
    # here is exact in float32) and on both sides of it
    beta = 0.125
    d = np.array([[0.0, 0.0625, beta, -beta, 0.25, -3.0]])
    pred = (d + 0.5).astype(np.float32)
    target = np.full_like(pred, 0.5)
    a = np.abs(pred.astype(np.float64) - target)
    ref = np.sum(np.where(a < beta, 0.5 * a**2 / beta, a - 0.5 * beta))
    loss_layer = SmoothL1Loss(beta=beta)
    assert np.isclose(loss_layer.forward(pred, target, None), ref, rtol=1e-6)
    grad = loss_layer.backward()
    np.testing.assert_allclose(grad, np.clip((pred - target) / beta, -1, 1), rtol=1e-6)


def test_relative_error_definition():
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert np.isclose(relative_error(np.array([1.0]), np.array([1.1])), 0.1 / 1.1)


def test_relu_propagates_nan():
    assert np.isnan(ReLU().forward(np.array([np.nan, -1.0, 2.0]))[0])
