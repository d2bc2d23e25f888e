"""Detection: the output contract, which scale each RoI is pooled at, truncated SVD."""

import numpy as np
import pytest

from minircnn.cli import UsageError
from minircnn.data.image import Preprocessing
from minircnn.detect import (
    Detector,
    box_voting,
    detect,
    postprocess,
    score_proposals,
    second_pass,
    tta_options,
)
from minircnn.faster_rcnn import FasterRCNN
from minircnn.layers import Linear
from minircnn.model import FastRCNN, ModelConfig
from minircnn.ops.boxes import box_iou
from minircnn.svd import compress_model, truncated_svd

CONFIG = ModelConfig(
    num_classes=3, conv_channels=(8, 16), convs_per_block=(1, 2), roi_size=2, fc_dims=(32, 32)
)
PRE = Preprocessing((100.0,) * 3, (50.0,) * 3, short_side=64, max_side=96)


def tiny_detector(seed=0) -> Detector:
    model = FastRCNN(CONFIG, np.random.default_rng(seed))
    model.params()["cls_score.weight"][...] *= 100  # confident, varied scores
    model.params()["bbox_pred.weight"][...] *= 100  # visible box changes
    return Detector(model.eval(), ("a", "b", "c"), PRE)


def random_scene(seed, n=300):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)
    x1, y1 = rng.uniform(0, 60, n), rng.uniform(0, 40, n)
    proposals = np.column_stack([x1, y1, x1 + rng.uniform(4, 40, n), y1 + rng.uniform(4, 30, n)])
    return image, proposals


@pytest.mark.parametrize(
    ("scales", "refine", "flip"),
    [(None, False, False), ([48, 80], False, False), (None, True, False), ([48, 80], False, True)],
)
def test_detection_contract(scales, refine, flip):
    image, proposals = random_scene(1)
    dets = detect(
        tiny_detector(),
        image,
        proposals,
        score_threshold=0.0,
        max_per_image=50,
        scales=scales,
        refine=refine,
        flip=flip,
        vote=refine or flip,
    )
    assert dets.boxes.dtype == np.float32 and dets.scores.dtype == np.float32
    assert dets.labels.dtype == np.int64 and dets.boxes.shape == (len(dets.scores), 4)
    assert 0 < len(dets.scores) <= 50
    assert np.all(np.diff(dets.scores) <= 0)
    assert np.all((dets.labels >= 1) & (dets.labels <= 3))
    assert np.all(dets.boxes[:, [0, 2]] >= 0) and np.all(dets.boxes[:, [0, 2]] <= 89)
    assert np.all(dets.boxes[:, [1, 3]] >= 0) and np.all(dets.boxes[:, [1, 3]] <= 59)
    for k in np.unique(dets.labels):
        same = dets.boxes[dets.labels == k]
        iou = box_iou(same, same)
        # per-class NMS at 0.3; box voting moves the boxes after it
        assert refine or flip or np.all(iou[~np.eye(len(same), dtype=bool)] <= 0.3)


def test_multi_scale_pools_each_roi_at_the_scale_nearest_the_crop_area():
    # 60x90 image, training scale 64 (cap 96): test scales 48 and 80 give factors
    # min(48/60, 72/90) = 0.8 and min(80/60, 120/90) = 4/3. The crop is 2*2*2 = 8 px, so the
    # preferred RoI area is 64: a 10x10 proposal (area 100) scales to 64 at 0.8 and to
    # 178 at 4/3 -> scale 0.8; a 5x5 one (25) gives 16 vs 44.4 -> scale 4/3.
    detector = tiny_detector()
    big = np.array([[10, 10, 19, 19], [40, 20, 49, 29]], dtype=np.float32)
    small = np.array([[0, 0, 4, 4], [60, 30, 64, 34], [30, 40, 34, 44]], dtype=np.float32)
    proposals = np.vstack([small[:1], big[:1], small[1:], big[1:]])
    inputs, pooled = [], []
    model = detector.model
    backbone_forward, pool_forward = model.backbone.forward, model.roi_pool.forward

    def recording_backbone(images):
        inputs.append(images.shape)
        return backbone_forward(images)

    def recording_pool(features, rois):
        pooled.append(rois.copy())
        return pool_forward(features, rois)

    model.backbone.forward, model.roi_pool.forward = recording_backbone, recording_pool
    score_proposals(detector, np.zeros((60, 90, 3), np.uint8), proposals, scales=[48, 80])
    assert inputs == [(1, 3, 48, 72), (1, 3, 80, 120)]
    np.testing.assert_allclose(pooled[0][:, 1:], big * 0.8, rtol=1e-6)
    np.testing.assert_allclose(pooled[1][:, 1:], small * 4 / 3, rtol=1e-6)


def test_truncated_svd_error_is_bounded_by_the_first_dropped_singular_value():
    # Eckart-Young: ||W - W_t||_2 = s_t (0-based), so each output row moves by at most
    # s_t * ||x||; at full rank the layer is reproduced.
    rng = np.random.default_rng(0)
    layer = Linear(40, 24, dtype=np.float64, rng=rng)
    layer.params["bias"][:] = rng.standard_normal(24)
    x = rng.standard_normal((7, 40))
    s = np.linalg.svd(layer.params["weight"], compute_uv=False)
    exact = layer.forward(x)
    np.testing.assert_allclose(truncated_svd(layer, 24).forward(x), exact, atol=1e-10)
    for rank in (3, 6, 12):
        err = np.linalg.norm(truncated_svd(layer, rank).forward(x) - exact, axis=1)
        bound = s[rank] * np.linalg.norm(x, axis=1)
        assert np.all(err <= bound * (1 + 1e-9))
        assert err.max() > 0.1 * bound.max()  # and truncation really does change it
    with pytest.raises(ValueError, match="rank"):
        compress_model(FastRCNN(ModelConfig(num_classes=2)), 0)


def test_svd_at_reduced_rank_keeps_scores_and_boxes_of_low_rank_layers():
    # fc6 and fc7 made exactly rank 5: a rank-8 truncation (of 32) must give the same
    # scores and boxes, a rank-3 one must not.
    detector = tiny_detector()
    rng = np.random.default_rng(3)
    for name in ("fc6", "fc7"):
        w = detector.model.params()[f"{name}.weight"]
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        w[...] = (u[:, :5] * s[:5]) @ vt[:5] * rng.uniform(0.5, 2.0)
    image, proposals = random_scene(2, n=100)
    full_scores, full_boxes = score_proposals(detector, image, proposals)
    svd_scores, svd_boxes = score_proposals(detector.compressed(8 / 32), image, proposals)
    np.testing.assert_allclose(svd_scores, full_scores, atol=1e-4)
    np.testing.assert_allclose(svd_boxes, full_boxes, atol=1e-2)
    low_scores, _ = score_proposals(detector.compressed(3), image, proposals)
    assert np.abs(low_scores - full_scores).max() > 1e-3


def test_timed_model_copies_run_their_own_layers():
    # stages are timed by wrapping methods from outside; a compressed deep copy of a timed
    # model must run its own (low-rank) layers, not the original's
    from minircnn.timing import StageTimer, instrument_fast_rcnn

    model = tiny_detector().model
    timer = instrument_fast_rcnn(model, StageTimer())
    image, proposals = random_scene(4, n=20)
    x = PRE.network_input(image, 1.0)[None]
    rois = np.column_stack([np.zeros(len(proposals)), proposals]).astype(np.float32)
    full = model.forward(x, rois)[0]
    low = compress_model(model, 1).forward(x, rois)[0]
    assert np.abs(full - low).max() > 1e-3
    assert {"conv_forward", "roi_pool", "fc"} <= set(timer.totals)


def test_drawings_of_images_with_one_stem_do_not_overwrite_each_other():
    from minircnn.detect import _output_names

    names = _output_names(["a.jpg", "a.png", "sub/b.jpg", "c.jpeg"])
    assert names == ["a_jpg", "a_png", "sub__b", "c"]


def test_box_voting_by_hand():
    # class 1: a (0.9) and b (0.3) overlap by IoU 8*10 / (100 + 100 - 80) = 2/3 >= 0.5,
    # c lies apart; class 2: d covers a exactly but is another class, so it has no vote
    boxes = np.array([[0, 0, 9, 9], [2, 0, 11, 9], [30, 30, 39, 39], [0, 0, 9, 9]], np.float32)
    scores = np.array([0.9, 0.3, 0.8, 0.7], np.float32)
    labels = np.array([1, 1, 1, 2])
    kept = boxes[[0, 2, 3]]
    voted = box_voting(kept, labels[[0, 2, 3]], boxes, scores, labels)
    # a: (0.9 * (0, 0, 9, 9) + 0.3 * (2, 0, 11, 9)) / 1.2 = (0.5, 0, 9.5, 9)
    want = [[0.5, 0, 9.5, 9], [30, 30, 39, 39], [0, 0, 9, 9]]
    np.testing.assert_allclose(voted, want, rtol=1e-6)
    assert voted.dtype == np.float32


def test_second_pass_rescores_the_best_class_boxes_of_confident_rows_only():
    # 3 proposals, K = 2: rows 0 and 2 have a class at >= 0.3, row 1 does not
    probs = np.array([[0.1, 0.2, 0.7], [0.97, 0.02, 0.01], [0.5, 0.4, 0.1]], np.float32)
    boxes = np.arange(3 * 12, dtype=np.float32).reshape(3, 12)  # [P, 4 * (K + 1)]
    seen = []

    def head(b):  # always "class 1", no box change
        seen.append(b.copy())
        cls_score = np.tile(np.array([0.0, 10.0, 0.0], np.float32), (len(b), 1))
        return cls_score, np.zeros((len(b), 12), np.float32)

    pre = Preprocessing((0.0,) * 3, (1.0,) * 3)  # zero deltas decode to the box itself
    new_probs, new_boxes = second_pass(pre, head, probs, boxes, 100, 100, min_score=0.3)
    # the heads saw row 0's class-2 box and row 2's class-1 box
    np.testing.assert_array_equal(seen[0], [boxes[0, 8:12], boxes[2, 4:8]])
    second = np.exp([0.0, 10.0, 0.0]) / np.exp([0.0, 10.0, 0.0]).sum()
    np.testing.assert_allclose(new_probs[[0, 2]], (probs[[0, 2]] + second) / 2, rtol=1e-5)
    np.testing.assert_array_equal(new_probs[1], probs[1])  # below 0.3: untouched
    np.testing.assert_array_equal(new_boxes[1], boxes[1])
    np.testing.assert_allclose(new_boxes[0], np.tile(boxes[0, 8:12], 3))  # zero deltas
    np.testing.assert_allclose(new_boxes[2], np.tile(boxes[2, 4:8], 3))


def test_second_pass_pools_the_best_class_boxes_of_the_first_at_the_input_scale():
    # 60x90 image at training scale 64 (cap 96): factor min(64/60, 96/90) = 16/15
    image, proposals = random_scene(2)
    detector = tiny_detector()
    probs, boxes = score_proposals(detector, image, proposals)
    pooled, pool_forward = [], detector.model.roi_pool.forward

    def recording_pool(features, rois):
        pooled.append(rois.copy())
        return pool_forward(features, rois)

    detector.model.roi_pool.forward = recording_pool
    refined_probs, _ = score_proposals(detector, image, proposals, refine=True)
    rows = np.flatnonzero(probs[:, 1:].max(axis=1) >= 0.5)  # second_pass's default
    best = probs[rows, 1:].argmax(axis=1) + 1
    assert len(pooled) == 2 and len(rows) > 0  # this confident model: every row
    want = boxes.reshape(len(boxes), 4, 4)[rows, best] * 16 / 15
    np.testing.assert_allclose(pooled[1][:, 1:], want, rtol=1e-5)
    assert not np.allclose(refined_probs[rows], probs[rows])  # averaged with the second pass


def test_refinement_is_off_by_default_for_fast_rcnn_and_refuses_a_pyramid():
    image, proposals = random_scene(2)
    plain = detect(tiny_detector(), image, proposals, score_threshold=0.0, refine=False)
    default = detect(tiny_detector(), image, proposals, score_threshold=0.0)
    np.testing.assert_array_equal(default.boxes, plain.boxes)
    with pytest.raises(ValueError, match="single-scale"):
        detect(tiny_detector(), image, proposals, scales=[48, 80], refine=True)


def mirror_back(boxes, width):
    """Class-specific boxes [P, 4(K+1)] of a mirrored image, in the original's pixels."""
    out = boxes.copy()
    out[:, 0::4], out[:, 2::4] = width - 1 - boxes[:, 2::4], width - 1 - boxes[:, 0::4]
    return out


def test_mirrored_testing_averages_the_image_and_its_mirror():
    # by hand: the mirrored image is the array reversed along x, a proposal (x1, x2) of a
    # 90 px wide image is (89 - x2, 89 - x1) there, and its boxes mirror back the same way
    image, proposals = random_scene(3, n=40)
    detector = tiny_detector()
    probs, boxes = score_proposals(detector, image, proposals)
    mirrored = proposals.copy()
    mirrored[:, 0], mirrored[:, 2] = 89 - proposals[:, 2], 89 - proposals[:, 0]
    probs_m, boxes_m = score_proposals(detector, image[:, ::-1].copy(), mirrored)
    both_probs, both_boxes = score_proposals(detector, image, proposals, flip=True)
    np.testing.assert_allclose(both_probs, (probs + probs_m) / 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(both_boxes, (boxes + mirror_back(boxes_m, 90)) / 2, atol=1e-3)
    assert not np.allclose(probs, probs_m)  # the two views differ: the mean is not a copy
    # both views averaged: mirroring the input mirrors the output and nothing else
    probs_mm, boxes_mm = score_proposals(detector, image[:, ::-1].copy(), mirrored, flip=True)
    np.testing.assert_allclose(probs_mm, both_probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mirror_back(boxes_mm, 90), both_boxes, atol=1e-3)


def test_vote_follows_refine_unless_given():
    image, proposals = random_scene(2)
    detector = tiny_detector()
    scores, boxes = score_proposals(detector, image, proposals)
    voted = detect(detector, image, proposals, score_threshold=0.0, vote=True)
    want = postprocess(scores, boxes, score_threshold=0.0, vote=True)
    np.testing.assert_array_equal(voted.boxes, want.boxes)
    plain = detect(detector, image, proposals, score_threshold=0.0)
    np.testing.assert_array_equal(plain.boxes, postprocess(scores, boxes, 0.0).boxes)
    assert not np.array_equal(voted.boxes, plain.boxes)
    refined, unvoted = (
        detect(detector, image, proposals, score_threshold=0.0, refine=True, vote=vote)
        for vote in (None, False)
    )
    scores2, boxes2 = score_proposals(detector, image, proposals, refine=True)
    want_refined = postprocess(scores2, boxes2, score_threshold=0.0, vote=True)
    np.testing.assert_array_equal(refined.boxes, want_refined.boxes)  # None: as refine
    np.testing.assert_array_equal(unvoted.boxes, postprocess(scores2, boxes2, 0.0).boxes)


def test_tta_options_of_the_command_line():
    fast = tiny_detector()  # trained at shorter side 64
    on = {"scales": [64, 96], "flip": True, "vote": True}
    assert tta_options(fast) == on == tta_options(fast, "on")
    assert tta_options(fast, "auto", refine=True) == {}  # refinement: one view
    assert tta_options(fast, "off") == {}
    assert tta_options(fast, "off", scales=[48, 80]) == {"scales": [48, 80]}
    assert tta_options(fast, "auto", scales=[80]) == {**on, "scales": [80]}
    with pytest.raises(UsageError, match="--tta on"):
        tta_options(fast, "on", refine=True)
    with pytest.raises(UsageError, match="--tta often"):
        tta_options(fast, "often")
    with pytest.raises(UsageError, match="--refine on"):
        tta_options(fast, "off", refine=True, scales=[48, 80])
    faster = Detector(FasterRCNN(CONFIG).eval(), ("a", "b", "c"), PRE)
    assert tta_options(faster) == {} and tta_options(faster, scales=[80]) == {"scales": [80]}
    with pytest.raises(UsageError, match="--tta on"):
        tta_options(faster, "on")
    with pytest.raises(UsageError, match="--scales"):
        tta_options(faster, scales=[48, 80])
    with pytest.raises(ValueError, match="mirrored testing"):
        detect(faster, random_scene(0)[0], flip=True)
