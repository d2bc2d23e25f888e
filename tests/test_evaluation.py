"""Evaluation beyond AP@0.5 on hand-worked cases: the VOC protocol for a class subset, AP
per size bucket and per IoU threshold, false positives by cause, and what evaluate prints
and writes."""

import json

import numpy as np
import pytest
from test_data import write_voc

from minircnn.data.voc import VOCDataset, VOCItem
from minircnn.detect import Detections
from minircnn.evaluate import evaluate_detections, evaluation_dataset, print_table
from minircnn.evaluation.ap import ap_by_iou, ap_by_size
from minircnn.evaluation.diagnosis import fp_causes, plot_fp_causes


def detections(boxes, scores, labels) -> Detections:
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array(labels, np.int64),
    )


def item(image_id, boxes, labels, difficult=None) -> VOCItem:
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    flags = np.zeros(len(boxes), bool) if difficult is None else np.array(difficult)
    return VOCItem(image_id, None, 400, 500, boxes, np.array(labels, np.int64), flags)


def test_subset_evaluation_counts_false_positives_on_every_image(tmp_path, capsys):
    # 000001 has a car, 000002 a dog, 000003 nothing; a car-only model fires on the dog
    # (0.9) and finds the car (0.8). VOC protocol: every image is scored, the dog is not a
    # car, so the ranking is FP, TP: recall [0, 1], precision [0, 0.5]; the 11-point AP is
    # max(precision at recall >= t) = 0.5 at every t -> 0.5. Keeping only images with a
    # car drops the false positive: TP alone -> 1.0.
    root = write_voc(
        tmp_path,
        {
            "000001": [("car", (5, 5, 20, 20), 0)],  # 1-based XML: (4, 4, 19, 19) 0-based
            "000002": [("dog", (10, 5, 30, 25), 0)],
            "000003": [],
        },
    )
    canned = {
        "000001": detections([[4, 4, 19, 19]], [0.8], [1]),
        "000002": detections([[9, 4, 29, 24]], [0.9], [1]),
        "000003": detections([], [], []),
    }

    def detect_every_image(dataset):  # as evaluate_model does: one run per dataset image
        return {it.image_id: canned[it.image_id] for it in dataset}

    dataset = evaluation_dataset(tmp_path, "2007", "trainval", ["car"])
    assert [it.image_id for it in dataset] == ["000001", "000002", "000003"]
    assert len(dataset[1].labels) == 0  # the dog is dropped, not kept as a car
    results = evaluate_detections(detect_every_image(dataset), dataset)
    assert results["classes"]["car"]["ap07"] == pytest.approx(0.5)
    assert results["classes"]["car"]["ap"] == pytest.approx(0.5)
    # top-N with N = 1 car: the 0.9 detection, overlapping nothing known -> background
    assert results["fp_causes"]["counts"] == {"localisation": 0, "confusion": 0, "background": 1}
    assert results["fp_causes"]["per_image"]["background"] == pytest.approx(1 / 3)

    old = VOCDataset(root, "2007", "trainval", classes=["car"], use_difficult=True)
    assert len(old) == 1
    assert evaluate_detections(detect_every_image(old), old)["classes"]["car"]["ap07"] == 1.0

    print_table(results)
    out = capsys.readouterr().out
    assert "AP.5:.95" in out and "small [0^2, 32^2)" in out and "background 0.33" in out
    assert json.loads(json.dumps(results))["size_buckets"]["large"] == [4096.0, None]
    path = plot_fp_causes(results["fp_causes"], tmp_path / "run" / "fp_causes.png")
    assert path.stat().st_size > 1000


# Three objects of one class in one image: small 20x20 (area 400 < 32^2), medium 40x40
# (1600), large 80x80 (6400 >= 64^2).
S, M, L = [0, 0, 19, 19], [100, 0, 139, 39], [200, 0, 279, 79]


def test_ap_by_size_ignores_other_buckets():
    dets = [
        ("a", 0.95, [200, 100, 279, 179]),  # F: large-sized background
        ("a", 0.9, L),  # A
        ("a", 0.8, [0, 100, 19, 119]),  # B: small-sized background
        ("a", 0.7, S),  # C
        ("a", 0.6, M),  # D
        ("a", 0.5, [100, 100, 139, 139]),  # E: medium-sized background
    ]
    ann = {"a": (np.array([S, M, L], float), np.zeros(3, bool))}
    # small: only S counts (n_pos 1). A, D hit ignored GT and E, F are unmatched boxes of
    # other sizes: all ignored. B FP, C TP -> recall [0, 1], precision [0, 0.5] -> 0.5.
    # (Were A counted a FP: FP, FP, TP -> 1/3; were F counted: 1/3 as well.)
    # medium: B, F unmatched of other sizes, A, C on ignored GT; D TP then E FP -> 1.0.
    # large: F FP, A TP, the rest ignored -> 0.5.
    assert ap_by_size(dets, ann) == pytest.approx({"small": 0.5, "medium": 1.0, "large": 0.5})
    # all sizes together: F FP, A TP, B FP, C TP, D TP, E FP: recall 1/3 at precision 1/2,
    # 2/3 at 1/2, 1 at 3/5; the envelope is 3/5 everywhere -> area AP 0.6.
    everything = ap_by_size(dets, ann, buckets={"all": (0.0, np.inf)})["all"]
    assert everything == pytest.approx(0.6)
    # a bucket without ground truth has no AP
    assert np.isnan(ap_by_size(dets, ann, buckets={"huge": (1e5, np.inf)})["huge"])


def test_ap_over_iou_thresholds():
    # det 1 (0.9) covers the top 36 rows of the 50x50 G1: IoU 50*36 / 2500 = 0.72;
    # det 2 (0.8) is exactly G2. IoU 0.50 ... 0.70 (5 thresholds): two TPs -> AP 1.
    # 0.75 ... 0.95 (5): FP then TP -> recall [0, 0.5], precision [0, 0.5] -> area 0.25.
    # Mean over the 10 thresholds: (5 * 1 + 5 * 0.25) / 10 = 0.625.
    g1, g2 = [0, 0, 49, 49], [100, 0, 149, 49]
    dets = [("a", 0.9, [0, 0, 49, 35]), ("a", 0.8, g2)]
    ann = {"a": (np.array([g1, g2], float), np.zeros(2, bool))}
    by_iou = ap_by_iou(dets, ann)
    assert list(by_iou) == ["0.50", "0.55", "0.60", "0.65", "0.70", "0.75"] + [
        "0.80",
        "0.85",
        "0.90",
        "0.95",
    ]
    assert list(by_iou.values()) == pytest.approx([1.0] * 5 + [0.25] * 5)
    assert np.mean(list(by_iou.values())) == pytest.approx(0.625)


def test_false_positive_causes():
    # class 1 ("car"): 5 objects, so its top 5 detections are examined; class 2 ("dog"): D.
    g1, g2, dog = [0, 0, 49, 49], [200, 0, 249, 49], [300, 0, 349, 49]
    missed = [[0, 400, 49, 449], [100, 400, 149, 449], [200, 400, 249, 449]]
    items = [item("a", [g1, g2, *missed, dog], [1, 1, 1, 1, 1, 2]), item("b", [], [])]
    per_image = {
        "a": detections(
            [
                g1,  # 0.9: TP
                [2, 2, 51, 51],  # 0.8: IoU 48^2 / (2 * 2500 - 48^2) = 0.85 with matched G1
                [230, 0, 279, 49],  # 0.7: IoU 20*50 / (2 * 2500 - 1000) = 0.25 with G2
                dog,  # 0.6: a dog called a car
                [0, 300, 49, 349],  # 0.5: nothing there
                [100, 300, 149, 349],  # 0.4: nothing there either, but rank 6 > N = 5
            ],
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
            [1] * 6,
        ),
        "b": detections([], [], []),
    }
    # duplicate -> localisation; IoU 0.25 -> localisation; dog -> confusion; background.
    result = fp_causes(per_image, items, ("car", "dog"))
    assert result["counts"] == {"localisation": 2, "confusion": 1, "background": 1}
    assert result["classes"]["dog"] == {"localisation": 0, "confusion": 0, "background": 0}
    assert result["per_image"] == pytest.approx(
        {"localisation": 1.0, "confusion": 0.5, "background": 0.5}
    )
