"""The region proposal network (minircnn.rpn): anchors, anchor targets and proposals
worked by hand, and float64 gradient checks of the head and the loss."""

from dataclasses import replace

import numpy as np
import pytest

from minircnn.gradcheck import gradcheck
from minircnn.layers.losses import softmax
from minircnn.ops.boxes import box_iou, clip_boxes
from minircnn.rpn import (
    AnchorConfig,
    AnchorTargetConfig,
    RPNHead,
    RPNLoss,
    RPNProposalConfig,
    anchor_rows_to_map,
    anchor_targets,
    base_anchors,
    grid_anchors,
    inside_image,
    label_anchors,
    map_to_anchor_rows,
    objectness,
    propose,
    propose_batch,
    sample_anchors,
)

TOL = 1e-6


# ---------------------------------------------------------------- anchors
def test_anchors_one_scale_one_ratio_by_hand():
    # stride 4: cell (0, 0) covers pixels 0..3, centre 1.5; an 8x8 box centred there
    # spans 1.5 -/+ 3.5; the next cell shifts it by 4 px in x
    anchors = grid_anchors(1, 2, 4, AnchorConfig(scales=(8,), ratios=(1,)))
    assert anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors, [[-2, -2, 5, 5], [2, -2, 9, 5]])


def test_ratio_2_anchor_is_twice_as_tall_with_the_scale_area():
    (a,) = base_anchors(AnchorConfig(scales=(8,), ratios=(2,)), 4).astype(np.float64)
    w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
    assert h / w == pytest.approx(2.0, rel=1e-6)
    assert w * h == pytest.approx(64.0, rel=1e-6)
    assert (a[0] + a[2]) / 2 == pytest.approx(1.5) and (a[1] + a[3]) / 2 == pytest.approx(1.5)


def test_default_anchors_are_ratio_major_scale_minor():
    config = AnchorConfig()
    base = base_anchors(config, 4).astype(np.float64)
    assert config.num_anchors == len(base) == 6 * 3  # half-octave scales 16..90.5 px
    w, h = base[:, 2] - base[:, 0] + 1, base[:, 3] - base[:, 1] + 1
    for i_r, r in enumerate(config.ratios):
        for i_s, s in enumerate(config.scales):
            a = i_r * len(config.scales) + i_s
            assert w[a] * h[a] == pytest.approx(s * s, rel=1e-5)
            assert h[a] / w[a] == pytest.approx(r, rel=1e-5)


def test_anchor_rows_match_the_conv_output_layout():
    config = AnchorConfig(scales=(8, 16), ratios=(1,))  # A = 2
    n_h, n_w, stride, k = 2, 3, 4, 4
    anchors = grid_anchors(n_h, n_w, stride, config)
    # a conv output [N=1, A*k, H, W] whose value tells (h, w, a, j): channel a*k + j
    conv = np.zeros((1, 2 * k, n_h, n_w))
    for a in range(2):
        for j in range(k):
            for h in range(n_h):
                for w in range(n_w):
                    conv[0, a * k + j, h, w] = 1000 * h + 100 * w + 10 * a + j
    rows = map_to_anchor_rows(conv, k)
    assert rows.shape == (1, n_h * n_w * 2, k) == (1, len(anchors), k)
    for h in range(n_h):
        for w in range(n_w):
            for a in range(2):
                m = (h * n_w + w) * 2 + a
                np.testing.assert_array_equal(
                    rows[0, m], 1000 * h + 100 * w + 10 * a + np.arange(k)
                )
                x1, y1, x2, y2 = anchors[m]
                assert ((x1 + x2) / 2, (y1 + y2) / 2) == (w * stride + 1.5, h * stride + 1.5)
                assert x2 - x1 + 1 == config.scales[a]
    np.testing.assert_array_equal(anchor_rows_to_map(rows, n_h, n_w), conv)


# ---------------------------------------------------------------- anchor targets
# image 100 x 100; IoUs worked by hand (+1 convention), labelled by the paper's thresholds
PAPER = AnchorTargetConfig(
    positive_iou=0.7, negative_iou=0.3, batch_size=256, positive_fraction=0.5, allowed_border=0
)
GT = np.array(
    [
        [10, 10, 39, 29],  # g0: 30 x 20
        [60, 60, 79, 81],  # g1: 20 x 22
        [90, 0, 99, 5],  # g2: overlaps no anchor at all
    ],
    dtype=np.float32,
)
ANCHORS = np.array(
    [
        [10, 10, 29, 29],  # a0: g0 400/600 = 0.667, its best (tied with a7): positive
        [10, 10, 24, 29],  # a1: g0 300/600 = 0.5: ignored
        [30, 10, 49, 29],  # a2: g0 200/800 = 0.25: negative
        [-5, 10, 14, 29],  # a3: g0 100/900 = 0.11, but crosses the border: ignored
        [60, 60, 79, 79],  # a4: g1 400/440 = 0.909: positive
        [60, 62, 79, 81],  # a5: g1 400/440 = 0.909: positive (tie)
        [60, 60, 79, 77],  # a6: g1 360/440 = 0.818 >= 0.7, not the best: positive
        [20, 10, 39, 29],  # a7: g0 400/600 = 0.667, tied best: positive
    ],
    dtype=np.float32,
)
EXPECTED_LABELS = [1, -1, 0, -1, 1, 1, 1, 1]


def test_label_anchors_by_hand():
    inside = inside_image(ANCHORS, 100, 100)
    np.testing.assert_array_equal(inside, [1, 1, 1, 0, 1, 1, 1, 1])
    labels, matched = label_anchors(ANCHORS, GT, inside, PAPER)
    np.testing.assert_array_equal(labels, EXPECTED_LABELS)
    assert labels.dtype == matched.dtype == np.int64
    np.testing.assert_array_equal(matched[[0, 4, 5, 6, 7]], [0, 1, 1, 1, 0])
    assert matched[3] == -1  # outside: never matched


def test_default_positive_iou_is_half():
    # the one default that is not the paper's: a1 (IoU 0.5 with g0) becomes positive
    assert AnchorTargetConfig() == replace(PAPER, positive_iou=0.5)
    labels, _ = label_anchors(ANCHORS, GT, inside_image(ANCHORS, 100, 100))
    np.testing.assert_array_equal(labels, [1, 1, 0, -1, 1, 1, 1, 1])


def label_anchors_reference(anchors, gt_boxes, inside, config):
    """The labelling rules in plain NumPy, on the full [M, G] IoU matrix."""
    labels = np.full(len(anchors), -1)
    iou = box_iou(anchors, gt_boxes)
    max_iou = iou.max(axis=1)
    gt_max = iou[inside].max(axis=0)
    labels[inside & (max_iou < config.negative_iou)] = 0
    best_for_gt = np.any((iou == gt_max) & (gt_max > 0), axis=1)
    labels[inside & (best_for_gt | (max_iou >= config.positive_iou))] = 1
    matched = np.where(inside, iou.argmax(axis=1), -1)
    return labels, matched


@pytest.mark.parametrize("positive_iou", [0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_anchors_matches_the_numpy_reference(seed, positive_iou):
    rng = np.random.default_rng(seed)
    anchors = grid_anchors(12, 20, 4, AnchorConfig())
    corners = rng.uniform(0, 60, (5, 2))
    gt = np.column_stack([corners, corners + rng.uniform(4, 40, (5, 2))]).astype(np.float32)
    gt[4] = gt[3]  # two equal ground truths: tied best anchors for both
    inside = inside_image(anchors, 48, 80)
    config = AnchorTargetConfig(positive_iou=positive_iou)
    labels, matched = label_anchors(anchors, gt, inside, config)
    want_labels, want_matched = label_anchors_reference(anchors, gt, inside, config)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(matched, want_matched)
    assert set(labels) == {-1, 0, 1}


def test_inside_image_edges():
    # a 100 x 100 image has pixels 0..99: x2 == 100 is one pixel outside
    anchors = np.array([[0, 0, 99, 99], [0, 0, 100, 99], [-1, 0, 99, 99], [0, 0, 99, 100]])
    np.testing.assert_array_equal(inside_image(anchors, 100, 100), [1, 0, 0, 0])
    np.testing.assert_array_equal(inside_image(anchors, 100, 100, allowed_border=1), [1, 1, 1, 1])


def test_border_allowance_and_lower_thresholds():
    # allowing 5 px lets a3 in: IoU 0.11 < 0.3, negative
    config = replace(PAPER, allowed_border=5)
    labels, _ = label_anchors(ANCHORS, GT, inside_image(ANCHORS, 100, 100, 5), config)
    assert labels[3] == 0
    # positive_iou 0.5 makes a1 (0.5) positive; negative_iou 0.2 makes a2 (0.25) ignored
    config = replace(PAPER, positive_iou=0.5, negative_iou=0.2)
    labels, _ = label_anchors(ANCHORS, GT, inside_image(ANCHORS, 100, 100), config)
    assert labels[1] == 1 and labels[2] == -1


def test_no_ground_truth_makes_every_inside_anchor_negative():
    labels, matched = label_anchors(ANCHORS, np.zeros((0, 4)), inside_image(ANCHORS, 100, 100))
    np.testing.assert_array_equal(labels, [0, 0, 0, -1, 0, 0, 0, 0])
    assert np.all(matched == -1)


def test_anchor_targets_regress_positives_only():
    t = anchor_targets(ANCHORS, GT, 100, 100, np.random.default_rng(0), PAPER)  # all 8 kept
    np.testing.assert_array_equal(t.labels, EXPECTED_LABELS)
    # a0 -> g0: centre x 20 -> 25 over width 20; width 20 -> 30; y unchanged
    np.testing.assert_allclose(t.bbox_targets[0], [0.25, 0, np.log(1.5), 0], atol=1e-6)
    positive = np.array(EXPECTED_LABELS) == 1
    np.testing.assert_array_equal(t.bbox_weights, np.repeat(positive[:, None], 4, axis=1))
    assert np.all(t.bbox_targets[~positive] == 0)
    assert t.bbox_targets.dtype == t.bbox_weights.dtype == np.float32


@pytest.mark.parametrize(
    ("n_pos", "n_neg", "kept_pos", "kept_neg"),
    [(300, 1000, 128, 128), (10, 1000, 10, 246), (10, 20, 10, 20), (0, 1000, 0, 256)],
)
def test_sampling_caps_positives_at_half_and_never_exceeds_counts(n_pos, n_neg, kept_pos, kept_neg):
    labels = np.concatenate([np.ones(n_pos), np.zeros(n_neg), -np.ones(50)]).astype(np.int64)
    labels = np.random.default_rng(1).permutation(labels)
    out = sample_anchors(labels, AnchorTargetConfig(), np.random.default_rng(0))
    assert (np.sum(out == 1), np.sum(out == 0)) == (kept_pos, kept_neg)
    assert np.all((out == labels) | (out == -1))  # only un-labels, never relabels
    assert labels.sum() == n_pos - 50  # the input is left alone


def test_sampling_is_deterministic_with_a_seed():
    labels = np.random.default_rng(2).integers(-1, 2, 2000)
    config = AnchorTargetConfig()

    def sample(seed):
        return sample_anchors(labels, config, np.random.default_rng(seed))

    np.testing.assert_array_equal(sample(0), sample(0))
    assert not np.array_equal(sample(0), sample(1))


# ---------------------------------------------------------------- proposals
NO_LIMITS = RPNProposalConfig(
    train_pre_nms_top_n=100, train_post_nms_top_n=100, nms_iou=1.0, min_size=0
)


def test_zero_deltas_return_the_anchors_clipped_by_score():
    anchors = np.array([[-4, -4, 10, 10], [20, 20, 39, 39], [45, 30, 60, 49]], np.float32)
    scores = np.array([0.2, 0.9, 0.5], np.float32)
    boxes, kept = propose(
        anchors, scores, np.zeros((3, 4)), 40, 50, config=NO_LIMITS, training=True
    )
    np.testing.assert_array_equal(boxes, clip_boxes(anchors, 40, 50)[[1, 2, 0]])
    np.testing.assert_array_equal(kept, scores[[1, 2, 0]])
    assert boxes.dtype == kept.dtype == np.float32


def test_small_boxes_are_dropped_at_the_scaled_min_size():
    anchors = np.array([[0, 0, 9, 9], [20, 20, 22, 29]], np.float32)  # the second is 3 px wide
    scores, deltas = np.array([0.1, 0.9]), np.zeros((2, 4))
    config = RPNProposalConfig(nms_iou=1.0, min_size=4)
    boxes, _ = propose(anchors, scores, deltas, 40, 40, scale=1.0, config=config)
    np.testing.assert_array_equal(boxes, anchors[:1])
    boxes, _ = propose(anchors, scores, deltas, 40, 40, scale=0.5, config=config)  # 2 px min
    np.testing.assert_array_equal(boxes, anchors[[1, 0]])


def test_nms_removes_a_duplicate_and_deltas_are_decoded():
    anchors = np.array([[0, 0, 9, 9], [0, 0, 9, 9], [20, 20, 29, 29]], np.float32)
    # the third anchor's deltas move it 10 px right (tx = 1): [30, 20, 39, 29]
    deltas = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], np.float32)
    config = RPNProposalConfig(nms_iou=0.7, min_size=0)
    boxes, kept = propose(anchors, np.array([0.8, 0.6, 0.7]), deltas, 60, 60, config=config)
    np.testing.assert_array_equal(boxes, [[0, 0, 9, 9], [30, 20, 39, 29]])
    np.testing.assert_allclose(kept, [0.8, 0.7])


def test_top_n_before_and_after_nms():
    anchors = np.array([[0, 0, 9, 9], [0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    # pre-NMS top 2 keeps only the duplicate pair: NMS leaves one box
    config = RPNProposalConfig(test_pre_nms_top_n=2, test_post_nms_top_n=10, min_size=0)
    boxes, _ = propose(anchors, scores, np.zeros((4, 4)), 60, 60, config=config)
    np.testing.assert_array_equal(boxes, anchors[:1])
    # post-NMS top 2 of the three distinct boxes; training uses its own counts
    config = RPNProposalConfig(
        test_pre_nms_top_n=10, test_post_nms_top_n=2, train_post_nms_top_n=3, min_size=0
    )
    boxes, kept = propose(anchors, scores, np.zeros((4, 4)), 60, 60, config=config)
    np.testing.assert_array_equal(boxes, anchors[[0, 2]])
    boxes, _ = propose(anchors, scores, np.zeros((4, 4)), 60, 60, config=config, training=True)
    np.testing.assert_array_equal(boxes, anchors[[0, 2, 3]])


def test_propose_batch_reads_the_head_layout():
    config_a = AnchorConfig(scales=(8, 16), ratios=(1,))
    anchors = grid_anchors(2, 3, 4, config_a)  # [12, 4]
    scores = np.zeros((2, 4, 2, 3), np.float32)  # [N, 2A, H, W]: object score in channel 2a+1
    scores[0, 2 * 1 + 1, 1, 2] = 5.0  # image 0: anchor a=1 at cell (1, 2) is the best
    scores[1, 2 * 0 + 1, 0, 1] = 5.0  # image 1: anchor a=0 at cell (0, 1)
    config = RPNProposalConfig(test_post_nms_top_n=1, nms_iou=1.0, min_size=0)
    rois, kept = propose_batch(scores, np.zeros((2, 8, 2, 3)), anchors, [(8, 12)] * 2, None, config)
    expected = clip_boxes(anchors[[(1 * 3 + 2) * 2 + 1, (0 * 3 + 1) * 2 + 0]], 8, 12)
    np.testing.assert_array_equal(rois, np.column_stack([[0, 1], expected]))
    assert rois.dtype == np.float32 and kept[0] > 0.9


# ---------------------------------------------------------------- gradients
def _tiny_head(rng, window=3, dilation=1):
    head = RPNHead(
        in_channels=3,
        num_anchors=2,
        mid_channels=4,
        dtype=np.float64,
        rng=rng,
        window=window,
        dilation=dilation,
    )
    for p in head.params().values():  # larger than the 0.01 init, so every term matters
        p[...] = rng.standard_normal(p.shape) * 0.5
    return head


def test_rpn_head_shapes_and_names():
    head = RPNHead(in_channels=8, num_anchors=12)
    scores, deltas = head.forward(np.zeros((2, 8, 5, 7), np.float32))
    assert scores.shape == (2, 24, 5, 7) and deltas.shape == (2, 48, 5, 7)
    assert set(head.params()) == {
        f"{n}.{p}"
        for n in ("rpn_conv", "rpn_cls_score", "rpn_bbox_pred")
        for p in ("weight", "bias")
    }
    assert head.params()["rpn_conv.weight"].std() == pytest.approx(0.01, rel=0.1)
    wide = RPNHead(in_channels=8, num_anchors=12, window=5)  # n = 5 keeps the map's size
    assert wide.forward(np.zeros((2, 8, 5, 7), np.float32))[0].shape == (2, 24, 5, 7)
    dilated = RPNHead(in_channels=8, num_anchors=12, dilation=2)  # so does a 5 x 5 view
    assert dilated.conv.padding == 2
    assert dilated.forward(np.zeros((2, 8, 5, 7), np.float32))[0].shape == (2, 24, 5, 7)
    with pytest.raises(ValueError, match="window"):
        RPNHead(in_channels=8, num_anchors=12, window=4)


@pytest.mark.parametrize("window, dilation", [(3, 1), (5, 1), (3, 2)])
def test_rpn_head_gradcheck_float64(window, dilation):
    rng = np.random.default_rng(0)
    head = _tiny_head(rng, window, dilation)
    features = rng.standard_normal((2, 3, 4, 5))
    w_scores, w_deltas = rng.standard_normal((2, 4, 4, 5)), rng.standard_normal((2, 8, 4, 5))

    def f():
        scores, deltas = head.forward(features)
        return float(np.sum(scores * w_scores) + np.sum(deltas * w_deltas))

    f()
    dfeatures = head.backward(w_scores, w_deltas)
    grads = {k: v.copy() for k, v in head.grads().items()}
    assert gradcheck(f, features, dfeatures) < TOL
    params = head.params()
    assert set(grads) == set(params)
    for name, g in grads.items():
        assert gradcheck(f, params[name], g, num_checks=20) < TOL, name


def _loss_inputs(rng, n=2, a=2, h=3, w=4):
    m = h * w * a
    labels = rng.integers(-1, 2, (n, m))
    weights = np.repeat((labels == 1)[..., None], 4, axis=2).astype(np.float64)
    return (
        rng.standard_normal((n, 2 * a, h, w)),
        rng.standard_normal((n, 4 * a, h, w)),
        labels,
        rng.standard_normal((n, m, 4)) * weights,
        weights,
    )


def test_rpn_loss_value_is_the_papers_normalisation():
    rng = np.random.default_rng(3)
    scores, deltas, labels, targets, weights = inputs = _loss_inputs(rng)
    losses = RPNLoss(reg_weight=10.0).forward(*inputs)
    # plain reference: log loss over sampled anchors / N_cls, smooth L1 over positives / N_reg
    s, d = map_to_anchor_rows(scores, 2).reshape(-1, 2), map_to_anchor_rows(deltas, 4)
    lab = labels.reshape(-1)
    log_p = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    sampled = lab >= 0
    cls = -np.mean(log_p[sampled, lab[sampled]])
    diff = np.abs(d - targets)
    sl1 = np.where(diff < 1, 0.5 * diff**2, diff - 0.5) * weights
    reg = sl1.sum() / (2 * 3 * 4)  # N_reg: N * H * W anchor locations
    assert losses.cls == pytest.approx(cls, rel=1e-12)
    assert losses.reg == pytest.approx(reg, rel=1e-12)
    assert losses.total == pytest.approx(cls + 10 * reg, rel=1e-12)


def test_rpn_loss_gradcheck_float64_and_ignored_anchors_get_none():
    rng = np.random.default_rng(4)
    scores, deltas, labels, targets, weights = _loss_inputs(rng)
    loss = RPNLoss()

    def f():
        return loss.forward(scores, deltas, labels, targets, weights).total

    f()
    dscores, ddeltas = loss.backward()
    assert gradcheck(f, scores, dscores, num_checks=48) < TOL
    assert gradcheck(f, deltas, ddeltas, num_checks=96) < TOL
    drows = map_to_anchor_rows(dscores, 2)
    assert np.all(drows[labels == -1] == 0) and np.all(drows[labels >= 0] != 0)
    assert np.all(map_to_anchor_rows(ddeltas, 4)[labels != 1] == 0)


def test_objectness_is_the_two_class_softmax_even_at_extremes():
    rows = np.array([[0.0, 0.0], [2.0, -1.0], [-300.0, 300.0], [300.0, -300.0], [5.0, 5.5]])
    expected = softmax(rows)[:, 1]
    np.testing.assert_allclose(objectness(rows), expected, rtol=1e-6, atol=1e-30)
    assert objectness(rows).dtype == np.float32
