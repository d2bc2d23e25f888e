"""VOC evaluation (AP, matching, difficult objects) on hand-worked cases."""

import numpy as np

from minircnn.evaluate import eval_class, voc_ap

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
