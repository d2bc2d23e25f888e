"""RoI pooling: hand-worked cases, a plain-Python reference, gradients, bad input."""

import math
from pathlib import Path

import numpy as np
import pytest

from minircnn.gradcheck import gradcheck
from minircnn.layers import RoIPool
from minircnn.layers.roi_pool import BACKWARD_CHANNEL_BLOCK, roi_pool, roi_pool_backward

F4 = np.array(
    [[1, 8, 3, 4], [5, 2, 7, 16], [9, 14, 11, 12], [13, 10, 15, 6]],
    dtype=np.float64,
)[None, None]


def pool(features, rois, p, scale=1.0):
    return roi_pool(features, np.array(rois, dtype=np.float64), p, scale)


def test_whole_map_2x2():
    out, arg = pool(F4, [[0, 0, 0, 3, 3]], 2)
    # bins: rows [0,2),[2,4) x cols [0,2),[2,4); maxima 8, 16, 14, 15
    np.testing.assert_array_equal(out[0, 0], [[8, 16], [14, 15]])
    np.testing.assert_array_equal(arg[0, 0], [[1, 7], [9, 14]])  # flat h*4 + w


def test_roi_crossing_the_border():
    out, arg = pool(F4, [[0, 2, 2, 5, 5]], 2)
    # size 4 from (2, 2): bin (0,0) = rows 2-3, cols 2-3; the rest starts at 4 -> empty
    np.testing.assert_array_equal(out[0, 0], [[15, 0], [0, 0]])
    np.testing.assert_array_equal(arg[0, 0], [[14, -1], [-1, -1]])


def test_roi_smaller_than_a_bin():
    out, arg = pool(F4, [[0, 1, 1, 1, 1]], 2)
    # size 1, bin size 0.5: both bins are [0, 1) + 1 -> every bin is cell (1, 1) = 2
    np.testing.assert_array_equal(out[0, 0], np.full((2, 2), 2.0))
    np.testing.assert_array_equal(arg[0, 0], np.full((2, 2), 5))


def test_roi_fully_outside():
    out, arg = pool(F4, [[0, 10, 10, 12, 12]], 2)
    np.testing.assert_array_equal(out, 0)
    np.testing.assert_array_equal(arg, -1)


def test_rounding_at_scale_1_16_is_half_away_from_zero():
    fmap = np.random.default_rng(0).permutation(36).astype(np.float64).reshape(1, 1, 6, 6)
    # 8/16 = 0.5 -> 1, 24/16 = 1.5 -> 2, 40/16 = 2.5 -> 3, 56/16 = 3.5 -> 4
    # (banker's rounding would give 0, 2, 2, 4): window rows 2..4, cols 1..3
    out, arg = pool(fmap, [[0, 8, 24, 40, 56]], 1, 1 / 16)
    assert out[0, 0, 0, 0] == fmap[0, 0, 2:5, 1:4].max()
    h, w = divmod(int(arg[0, 0, 0, 0]), 6)
    assert 2 <= h <= 4 and 1 <= w <= 3


def test_two_rois_sharing_an_argmax_add_gradients():
    rois = np.array([[0, 0, 0, 3, 3], [0, 2, 0, 3, 1]], dtype=np.float64)
    out, arg = roi_pool(F4, rois, 1, 1.0)
    np.testing.assert_array_equal(out.ravel(), [16, 16])
    grad = roi_pool_backward(np.array([1.5, 2.0]).reshape(2, 1, 1, 1), arg, rois, F4.shape)
    expected = np.zeros_like(F4)
    expected[0, 0, 1, 3] = 3.5
    np.testing.assert_array_equal(grad, expected)


# ---------------------------------------------------------------- reference
def roi_pool_reference(features, rois, ph, pw, scale):
    """Caffe ROIPoolingLayer forward, written as plain loops in the features' precision."""
    ftype = features.dtype.type
    n_rois, (_, n_ch, height, width) = len(rois), features.shape
    out = np.zeros((n_rois, n_ch, ph, pw), dtype=features.dtype)
    arg = -np.ones((n_rois, n_ch, ph, pw), dtype=np.int64)

    def c_round(v):
        return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))

    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        sx, sy = c_round(ftype(x1) * ftype(scale)), c_round(ftype(y1) * ftype(scale))
        ex, ey = c_round(ftype(x2) * ftype(scale)), c_round(ftype(y2) * ftype(scale))
        bin_h = ftype(max(ey - sy + 1, 1)) / ftype(ph)
        bin_w = ftype(max(ex - sx + 1, 1)) / ftype(pw)
        for c in range(n_ch):
            for i in range(ph):
                h0 = min(max(int(math.floor(ftype(i) * bin_h)) + sy, 0), height)
                h1 = min(max(int(math.ceil(ftype(i + 1) * bin_h)) + sy, 0), height)
                for j in range(pw):
                    w0 = min(max(int(math.floor(ftype(j) * bin_w)) + sx, 0), width)
                    w1 = min(max(int(math.ceil(ftype(j + 1) * bin_w)) + sx, 0), width)
                    best, best_idx = -np.inf, -1
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            if features[int(b), c, h, w] > best:
                                best, best_idx = features[int(b), c, h, w], h * width + w
                    if best_idx >= 0:
                        out[r, c, i, j], arg[r, c, i, j] = best, best_idx
    return out, arg


def random_rois(rng, n, n_img, height, width, scale):
    """RoIs in image pixels, some crossing the border, some tiny."""
    x1 = rng.uniform(-10, width / scale, n)
    y1 = rng.uniform(-10, height / scale, n)
    x2 = x1 + rng.uniform(0, width / scale, n)
    y2 = y1 + rng.uniform(0, height / scale, n)
    return np.stack([rng.integers(0, n_img, n), x1, y1, x2, y2], axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ph,pw,scale", [(7, 7, 1 / 16), (3, 2, 1 / 8), (2, 2, 1.0)])
@pytest.mark.parametrize("channels", [3, BACKWARD_CHANNEL_BLOCK + 5])  # a partial last block
def test_matches_loop_reference(dtype, ph, pw, scale, channels):
    rng = np.random.default_rng(1)
    features = rng.standard_normal((2, channels, 9, 11)).astype(dtype)
    rois = random_rois(rng, 25, 2, 9, 11, scale)
    out, arg = roi_pool(features, rois, (ph, pw), scale)
    ref_out, ref_arg = roi_pool_reference(features, rois, ph, pw, scale)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(arg, ref_arg)
    # backward vs a plain scatter through the reference argmax
    g = rng.standard_normal(out.shape).astype(dtype)
    grad = roi_pool_backward(g, arg, rois, features.shape)
    ref = np.zeros(features.shape, dtype=np.float64)
    for r, c, i, j in np.ndindex(*g.shape):
        if ref_arg[r, c, i, j] >= 0:
            h, w = divmod(int(ref_arg[r, c, i, j]), features.shape[3])
            ref[int(rois[r, 0]), c, h, w] += g[r, c, i, j]
    np.testing.assert_allclose(grad, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_gradcheck_float64():
    rng = np.random.default_rng(2)
    size = 2 * 3 * 8 * 10
    features = (rng.permutation(size) * 1e-2).reshape(2, 3, 8, 10)  # no ties
    rois = random_rois(rng, 12, 2, 8, 10, 0.5)
    layer = RoIPool(3, 0.5)
    y = layer.forward(features, rois)
    g = rng.standard_normal(y.shape)
    analytic = layer.backward(g)
    err = gradcheck(lambda: float(np.sum(layer.forward(features, rois) * g)), features, analytic)
    assert err < 1e-6


def test_eval_mode_pools_the_same_without_an_argmax():
    """Detection's forward (eval mode) gives the same outputs as training's, keeps no
    argmax, and refuses a backward pass; ``train()`` brings the argmax back."""
    rng = np.random.default_rng(4)
    features = rng.standard_normal((2, 5, 12, 14)).astype(np.float32)
    rois = random_rois(rng, 40, 2, 12, 14, 1.0)
    out, arg = roi_pool(features, rois, 3, 1.0)
    out_eval, no_arg = roi_pool(features, rois, 3, 1.0, with_argmax=False)
    assert no_arg is None
    np.testing.assert_array_equal(out_eval, out)
    layer = RoIPool(3, 1.0).eval()
    np.testing.assert_array_equal(layer.forward(features, rois), out)
    with pytest.raises(RuntimeError, match="eval mode"):
        layer.backward(np.ones_like(out))
    layer.train().forward(features, rois)
    np.testing.assert_array_equal(
        layer.backward(np.ones_like(out)),
        roi_pool_backward(np.ones_like(out), arg, rois, features.shape),
    )


def test_backward_is_deterministic():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((2, 4, 12, 12)).astype(np.float32)
    rois = random_rois(rng, 300, 2, 12, 12, 1.0)
    out, arg = roi_pool(features, rois, 3, 1.0)
    g = rng.standard_normal(out.shape).astype(np.float32)
    first = roi_pool_backward(g, arg, rois, features.shape)
    for _ in range(3):
        np.testing.assert_array_equal(roi_pool_backward(g, arg, rois, features.shape), first)


TORCHVISION = Path(__file__).parent / "fixtures" / "torchvision_roi_pool.npz"


@pytest.mark.parametrize("case", ["vgg", "default", "odd"])
def test_matches_torchvision_reference_arrays(case):
    # arrays written by torchvision (tests/fixtures/make_torchvision_roi_pool.py), so the
    # cross-check runs without torch: forward bit for bit, backward to float rounding
    # (several bins and RoIs add into one cell, in another order than torchvision's)
    with np.load(TORCHVISION) as z:
        ref = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith(case + "/")}
    output_size = tuple(int(v) for v in ref["output_size"])
    scale = float(ref["spatial_scale"])
    out, argmax = roi_pool(ref["features"], ref["rois"], output_size, scale)
    np.testing.assert_array_equal(out, ref["out"])
    grad = roi_pool_backward(ref["grad_out"], argmax, ref["rois"], ref["features"].shape)
    np.testing.assert_allclose(grad, ref["grad_features"], rtol=1e-5, atol=1e-5)
    assert (argmax == -1).any() or case == "vgg"  # empty bins are among the cases


@pytest.mark.parametrize(
    "rois,scale,match",
    [
        (np.zeros((3, 4)), 1.0, r"shape \[R, 5\]"),
        (np.array([[2, 0, 0, 1, 1]]), 1.0, "batch indices"),
        (np.array([[0.5, 0, 0, 1, 1]]), 1.0, "batch indices"),
        (np.array([[0, np.nan, 0, 1, 1]]), 1.0, "NaN or infinite"),
        (np.array([[0, 0, 0, np.inf, 1]]), 1.0, "NaN or infinite"),
        (np.array([[0, 3, 0, 1, 1]]), 1.0, "x2 < x1"),
        (np.array([[0, 0, 0, 1, 1]]), 0.0, "spatial_scale"),
    ],
)
def test_bad_input(rois, scale, match):
    with pytest.raises(ValueError, match=match):
        roi_pool(np.zeros((2, 1, 4, 4)), rois, 2, scale)
