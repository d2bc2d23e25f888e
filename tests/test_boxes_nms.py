"""Box operations and NMS: hand-worked cases and hypothesis properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minircnn.ops.boxes import (
    MAX_LOG_SCALE,
    TARGET_MEANS,
    TARGET_STDS,
    bbox_decode,
    bbox_encode,
    box_area,
    box_iou,
    clip_boxes,
    flip_boxes,
)
from minircnn.ops.nms import batched_nms, nms


def test_area_and_iou_by_hand():
    a = np.array([[0, 0, 9, 9]])  # 10 x 10 = 100 (inclusive pixels)
    b = np.array([[5, 5, 14, 14], [10, 0, 19, 9], [0, 0, 9, 9]])
    np.testing.assert_array_equal(box_area(b), [100, 100, 100])
    # overlap of the first: x 5..9, y 5..9 = 25 pixels; union 175
    # the second touches at x = 10: no shared pixel
    np.testing.assert_allclose(box_iou(a, b), [[25 / 175, 0.0, 1.0]])


def test_clip_and_flip_by_hand():
    boxes = np.array([[-3.0, 2.0, 12.0, 30.0, 1.0, -1.0, 5.0, 5.0]])  # two classes' boxes
    np.testing.assert_array_equal(
        clip_boxes(boxes, height=20, width=10), [[0, 2, 9, 19, 1, 0, 5, 5]]
    )
    np.testing.assert_array_equal(flip_boxes(np.array([[0.0, 1, 3, 4]]), 10), [[6, 1, 9, 4]])


def test_encode_by_hand():
    p = np.array([[0.0, 0.0, 9.0, 19.0]])  # centre (5, 10), size (10, 20)
    g = np.array([[5.0, 0.0, 24.0, 9.0]])  # centre (15, 5), size (20, 10)
    expected = [[10 / 10, -5 / 20, np.log(2), np.log(0.5)]]
    np.testing.assert_allclose(bbox_encode(p, g), expected, rtol=1e-6)
    normalised = bbox_encode(p, g, TARGET_MEANS, TARGET_STDS)
    np.testing.assert_allclose(normalised, np.array(expected) / TARGET_STDS, rtol=1e-6)


def test_decode_clamps_wild_sizes():
    out = bbox_decode(np.array([[0.0, 0.0, 15.0, 15.0]]), np.array([[0.0, 0.0, 1e4, 1e4]]))
    assert np.all(np.isfinite(out))
    assert np.isclose(out[0, 2] - out[0, 0] + 1, 16 * np.exp(MAX_LOG_SCALE), rtol=1e-5)


coord = st.floats(0, 500, allow_nan=False)
size = st.floats(1, 300, allow_nan=False)
moderate = st.floats(8, 300, allow_nan=False)


@st.composite
def boxes(draw, n=None, size=size):
    k = draw(n if n is not None else st.integers(1, 12))
    xs = draw(st.lists(coord, min_size=k, max_size=k))
    ys = draw(st.lists(coord, min_size=k, max_size=k))
    ws = draw(st.lists(size, min_size=k, max_size=k))
    hs = draw(st.lists(size, min_size=k, max_size=k))
    x, y, w, h = map(np.array, (xs, ys, ws, hs))
    return np.stack([x, y, x + w - 1, y + h - 1], axis=1)


@settings(max_examples=60, deadline=None)
@given(boxes(), boxes())
def test_iou_properties(a, b):
    iou = box_iou(a, b)
    np.testing.assert_allclose(iou, box_iou(b, a).T, rtol=1e-12)
    assert np.all(iou >= 0) and np.all(iou <= 1 + 1e-12)
    np.testing.assert_allclose(np.diag(box_iou(a, a)), 1.0, rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 100), st.integers(0, 100), st.integers(1, 50), st.integers(1, 50))
def test_iou_of_a_one_pixel_shift_counts_pixels(x, y, w, h):
    # a w x h box (inclusive pixels: x2 = x + w - 1) against itself shifted right by one
    # pixel shares (w - 1) columns of h pixels out of (w + 1) columns: IoU = (w-1)/(w+1).
    # Without the +1 the widths would be w - 1 and this would not hold (and a one-pixel
    # box, w = 1, would have no area at all).
    box = np.array([[x, y, x + w - 1, y + h - 1]], dtype=float)
    shifted = box + [1, 0, 1, 0]
    np.testing.assert_allclose(box_iou(box, shifted), [[(w - 1) / (w + 1)]], rtol=1e-12)
    np.testing.assert_allclose(box_iou(box, box), [[1.0]])


@settings(max_examples=60, deadline=None)
@given(boxes(st.just(6), moderate), boxes(st.just(6), moderate))
def test_decode_inverts_encode(p, g):
    # sizes within 8..300 px keep every size ratio under the decode clamp (1000/16)
    for means, stds in [(None, None), (TARGET_MEANS, TARGET_STDS)]:
        deltas = bbox_encode(p, g, means, stds)
        np.testing.assert_allclose(bbox_decode(p, deltas, means, stds), g, rtol=1e-4, atol=1e-2)


def test_nms_by_hand():
    b = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [0, 0, 9, 9]], dtype=float)
    s = np.array([0.9, 0.8, 0.7, 0.9])
    # box 1 overlaps box 0 with IoU 81/119 = 0.68; boxes 0 and 3 tie on score -> 0 first
    np.testing.assert_array_equal(nms(b, s, 0.5), [0, 2])
    np.testing.assert_array_equal(nms(b, s, 0.7), [0, 1, 2])
    assert nms(b, s, 1.0).tolist() == [0, 3, 1, 2]  # nothing exceeds IoU 1
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).dtype == np.int64


@settings(max_examples=60, deadline=None)
@given(boxes(st.integers(1, 40)), st.floats(0.1, 0.9), st.integers(0, 2**31 - 1))
def test_nms_properties(b, thr, seed):
    scores = np.random.default_rng(seed).random(len(b))
    keep = nms(b, scores, thr)
    iou = box_iou(b, b)
    kept = set(keep.tolist())
    assert np.all(np.diff(scores[keep]) <= 0)  # by descending score
    for i in keep:
        for j in keep:
            assert i == j or iou[i, j] <= thr
    for d in set(range(len(b))) - kept:
        # every dropped box overlaps a kept box that ranks above it
        assert any(iou[d, k] > thr and (scores[k], -k) > (scores[d], -d) for k in kept)


def test_batched_nms_keeps_classes_apart():
    b = np.array([[0, 0, 9, 9], [0, 0, 9, 9], [1, 1, 9, 9]], dtype=float)
    s = np.array([0.9, 0.8, 0.7])
    labels = np.array([1, 2, 1])
    np.testing.assert_array_equal(batched_nms(b, s, labels, 0.5), [0, 1])


def test_nms_bad_input():
    with pytest.raises(ValueError, match=r"shape \[B, 4\]"):
        nms(np.zeros((3, 3)), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="finite"):
        nms(np.zeros((1, 4)), np.array([np.nan]), 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        nms(np.zeros((1, 4)), np.zeros(1), 1.5)


@pytest.mark.parametrize("max_keep", [0, 1, 7, 40, 1000])
def test_nms_stopped_early_keeps_the_first_of_a_full_pass(max_keep):
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 80, (300, 2))
    boxes = np.hstack([xy, xy + rng.uniform(4, 30, (300, 2))])
    scores = rng.random(300)
    full = nms(boxes, scores, 0.5)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, max_keep=max_keep), full[:max_keep])


def nms_reference(boxes, scores, thr):
    """Greedy NMS as the paper's code writes it: take the best remaining box, drop every
    remaining box overlapping it above ``thr``, repeat. Plain NumPy, one kept box at a time."""
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        if order:
            iou = box_iou(boxes[i : i + 1], boxes[order])[0]
            order = [k for k, v in zip(order, iou, strict=True) if not v > thr]
    return np.array(keep, dtype=np.int64)


@pytest.mark.parametrize("thr", [0.0, 0.5, 0.7, 1.0])
def test_nms_matches_the_reference_with_many_kept_boxes(thr):
    """Hundreds of boxes (well over one ``NMS_BLOCK`` of 32 kept), with exact duplicates,
    tied scores, and empty boxes (zero or negative width), which overlap nothing."""
    rng = np.random.default_rng(11)
    xy = rng.uniform(0, 300, (600, 2))
    boxes = np.hstack([xy, xy + rng.uniform(-3, 40, (600, 2))])  # some empty
    boxes[500:550] = boxes[:50]  # duplicates
    scores = rng.integers(0, 60, 600).astype(np.float64)  # many ties
    ref = nms_reference(boxes, scores, thr)
    assert len(ref) > 100
    np.testing.assert_array_equal(nms(boxes, scores, thr), ref)


def test_iou_of_empty_or_disjoint_boxes_is_exactly_zero():
    """No shared pixel, or an empty box (width 0, or x2 < x1 - 1): IoU 0, never NaN."""
    a = np.array([[0, 0, 9, 9], [5, 5, 4, 9], [3, 3, 1, 1], [5, 5, 4, 4]], dtype=float)
    b = np.array([[10, 0, 19, 9], [5, 5, 4, 9], [0, 0, 9, 9]], dtype=float)
    iou = box_iou(a, b)
    assert not np.isnan(iou).any()
    np.testing.assert_array_equal(iou[0], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(iou[1:], 0.0)
