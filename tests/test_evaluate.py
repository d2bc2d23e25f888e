"""VOC evaluation on hand-worked cases, truncated SVD, and the detection contract."""

import numpy as np
import pytest

from minircnn.detect import detect
from minircnn.evaluate import eval_class, voc_ap
from minircnn.layers import Linear
from minircnn.model import FastRCNN, ModelConfig
from minircnn.ops.boxes import TARGET_MEANS, TARGET_STDS, box_iou
from minircnn.svd import compress_model, truncated_svd

BOX = np.array([10.0, 10.0, 29.0, 29.0])
OTHER = np.array([50.0, 50.0, 69.0, 69.0])


def ann(*boxes, difficult=None):
    boxes = np.array(boxes, dtype=float).reshape(-1, 4)
    return boxes, np.zeros(len(boxes), bool) if difficult is None else np.array(difficult)


def test_voc_ap_11_point_vs_area():
    # recall 0.5 at precision 1, then recall 1 at precision 0.5:
    # 11-point: t = 0..0.5 (6 points) give 1, t = 0.6..1 (5 points) give 0.5 -> 8.5 / 11
    # area: 0.5 * 1 + 0.5 * 0.5 = 0.75
    rec, prec = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert np.isclose(voc_ap(rec, prec, use_07_metric=True), 8.5 / 11)
    assert np.isclose(voc_ap(rec, prec, use_07_metric=False), 0.75)
    # the envelope: a later higher precision lifts earlier points
    assert np.isclose(voc_ap([0.5, 0.5, 1.0], [0.5, 0.4, 0.8], use_07_metric=False), 0.8)


def test_perfect_detections():
    annotations = {"a": ann(BOX), "b": ann(OTHER, BOX)}
    dets = [("a", 0.9, BOX), ("b", 0.8, OTHER), ("b", 0.7, BOX)]
    ap, rec, prec = eval_class(dets, annotations)
    assert ap == 1.0 and rec[-1] == 1.0 and np.all(prec == 1.0)


def test_top_ranked_false_positive():
    # ranking: FP then TP -> recall [0, 1], precision [0, 0.5]; both metrics give 0.5
    dets = [("a", 0.9, OTHER), ("a", 0.8, BOX)]
    ap07, rec, prec = eval_class(dets, {"a": ann(BOX)}, use_07_metric=True)
    np.testing.assert_allclose(rec, [0, 1])
    np.testing.assert_allclose(prec, [0, 0.5])
    assert np.isclose(ap07, 0.5)
    assert np.isclose(eval_class(dets, {"a": ann(BOX)}, use_07_metric=False)[0], 0.5)


def test_difficult_is_neither_tp_nor_fp():
    annotations = {"a": ann(BOX, OTHER, difficult=[False, True])}
    dets = [("a", 0.9, OTHER), ("a", 0.8, BOX)]  # the first hits the difficult box
    ap, rec, prec = eval_class(dets, annotations)
    assert ap == 1.0
    np.testing.assert_allclose(rec, [0, 1])  # one positive only: the difficult is not counted
    np.testing.assert_allclose(prec[1:], [1.0])


def test_duplicate_is_a_false_positive():
    dets = [("a", 0.9, BOX), ("a", 0.8, BOX + 1)]
    ap, rec, prec = eval_class(dets, {"a": ann(BOX)})
    np.testing.assert_allclose(prec, [1.0, 0.5])
    np.testing.assert_allclose(rec, [1.0, 1.0])
    assert ap == 1.0


def test_no_detections_and_iou_threshold():
    assert eval_class([], {"a": ann(BOX)})[0] == 0.0
    assert np.isnan(eval_class([("a", 0.5, BOX)], {})[0])  # no positives at all
    shifted = BOX + np.array([10, 0, 10, 0])  # IoU 10*20 / (30*20) = 1/3
    assert eval_class([("a", 0.5, shifted)], {"a": ann(BOX)})[0] == 0.0
    assert eval_class([("a", 0.5, shifted)], {"a": ann(BOX)}, iou_threshold=0.3)[0] == 1.0


def test_svd_full_rank_reproduces_fc():
    rng = np.random.default_rng(0)
    layer = Linear(40, 24, rng=rng)
    layer.params["bias"][:] = rng.standard_normal(24)
    x = rng.standard_normal((7, 40), dtype=np.float32)
    np.testing.assert_allclose(
        truncated_svd(layer, 24).forward(x), layer.forward(x), rtol=1e-5, atol=1e-5
    )
    low = truncated_svd(layer, 6).forward(x)
    assert not np.allclose(low, layer.forward(x), atol=1e-3)  # truncation does change it
    with pytest.raises(ValueError, match="rank"):
        compress_model(FastRCNN(ModelConfig(num_classes=2)), 0)


def tiny_detector(seed=0):
    config = ModelConfig(
        num_classes=3, conv_channels=(8, 16), convs_per_block=(1, 2), roi_size=2, fc_dims=(32, 32)
    )
    model = FastRCNN(config, np.random.default_rng(seed))
    model.params()["cls_score.weight"][...] *= 100  # confident, varied scores
    model.params()["bbox_pred.weight"][...] *= 100  # visible box changes
    model.meta = {
        "pixel_mean": [100.0] * 3,
        "pixel_std": [50.0] * 3,
        "bbox_means": list(TARGET_MEANS),
        "bbox_stds": list(TARGET_STDS),
        "sampler": {"short_side": 64, "max_side": 96},
    }
    return model


@pytest.mark.parametrize("scales", [None, [48, 80]])
def test_detection_contract(scales):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)
    x1, y1 = rng.uniform(0, 60, 300), rng.uniform(0, 40, 300)
    proposals = np.column_stack(
        [x1, y1, x1 + rng.uniform(4, 40, 300), y1 + rng.uniform(4, 30, 300)]
    )
    dets = detect(
        tiny_detector(), image, proposals, score_threshold=0.0, max_per_image=50, scales=scales
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
        assert np.all(iou[~np.eye(len(same), dtype=bool)] <= 0.3)  # per-class NMS at 0.3


def test_svd_model_detects_like_the_full_one_at_full_rank():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)
    proposals = np.array([[5, 5, 40, 30], [20, 10, 70, 50], [0, 0, 89, 59]], dtype=float)
    model = tiny_detector()
    full = detect(model, image, proposals, score_threshold=0.0)
    svd = detect(compress_model(model, 1.0 - 1e-9), image, proposals, score_threshold=0.0)
    np.testing.assert_allclose(svd.scores, full.scores, rtol=1e-4, atol=1e-5)
