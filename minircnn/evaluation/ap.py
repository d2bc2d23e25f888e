"""Average precision: the VOC devkit's greedy matching, written once, and its variants.

Matching, per class (VOC devkit ``VOCevaldet``): detections over all images are sorted by
score; each is matched to the ground truth (GT) of its image it overlaps most (IoU with the
+1 convention of ``minircnn.ops.boxes``). At IoU >= the threshold with a GT box not yet
matched it is a true positive (TP); a second detection of a matched box is a false
positive (FP, a duplicate); a match to an *ignored* GT box (VOC: difficult) counts as
neither. Everything else is a FP, unless the caller marks that detection as ignorable
when unmatched (COCO's rule for detections outside a size range, see ``ap_by_size``).

Variants built on that one routine:

- ``eval_class``: VOC07 11-point AP or (VOC2010+) area AP at one IoU threshold;
- ``ap_by_iou``: area AP at each COCO IoU threshold 0.5:0.05:0.95 (their mean is COCO's
  "AP", computed with VOC's matching and area AP instead of COCO's 101-point AP);
- ``ap_by_size``: area AP at IoU 0.5 for small / medium / large objects.

Size buckets. COCO splits at box area 32^2 and 96^2 on images of ~640x480 (mean side
~554 px), which puts 41 / 34 / 24 % of its objects in small / medium / large. Scaling
those by the toy images' size (sides 160-256 px, mean ~207: x0.37 -> 12^2 and 36^2) would
leave "small" empty: toyvoc draws object sides log-uniformly from 16 px to half the
shorter side and flags anything under 12 px difficult. We keep COCO's intent, three
populated buckets of roughly COCO's proportions, with ``small < 32^2 <= medium < 64^2 <=
large`` (box area in pixels, +1 convention): 45 / 39 / 16 % of the toy set's non-difficult
objects (measured over 300 rendered images). For real VOC images (~500x375, like COCO's)
pass COCO's own thresholds as ``buckets``.
"""

from dataclasses import dataclass

import numpy as np

from minircnn.ops.boxes import box_area, box_iou

IOU_THRESHOLDS = tuple(float(t) for t in np.linspace(0.5, 0.95, 10).round(2))  # COCO
SIZE_BUCKETS = {  # half-open box-area ranges [low, high), justified in the module docstring
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 64.0**2),
    "large": (64.0**2, np.inf),
}


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """Average precision from a precision/recall curve (arrays in ranking order).

    VOC07: mean over t in {0, 0.1, ..., 1} of max(precision where recall >= t) (0 if none).
    Otherwise: area under the precision envelope (precision made non-increasing in recall).
    """
    recall, precision = np.asarray(recall, float), np.asarray(precision, float)
    if use_07_metric:
        points = [precision[recall >= t].max(initial=0.0) for t in np.linspace(0, 1, 11)]
        return float(np.mean(points))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: best precision to the right
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


@dataclass(frozen=True)
class Matching:
    """One class's detections after matching, in ranking order (descending score).

    order int64 [D]: index into the detection list at each rank; outcome int8 [D]: 1 TP,
    -1 FP, 0 ignored; duplicate bool [D]: its best GT was already matched; best_iou float64
    [D]: IoU with the class's GT box it overlaps most in its image (0 if none); n_pos: the
    number of GT boxes not ignored.
    """

    order: np.ndarray
    outcome: np.ndarray
    duplicate: np.ndarray
    best_iou: np.ndarray
    n_pos: int


def match_detections(
    detections: list,
    annotations: dict,
    iou_threshold: float = 0.5,
    ignore_unmatched: np.ndarray | None = None,
) -> Matching:
    """The VOC devkit's greedy matching (module docstring), with two ignore rules.

    detections: list of ``(image_id, score, box[4])``; annotations: ``image_id -> (boxes
    [G, 4], ignore bool [G])`` for this class (VOC: ignore = difficult; images without the
    class may be left out). ignore_unmatched: bool [D] in detection-list order; a marked
    detection that matches no free GT (IoU below the threshold, or a duplicate) is ignored
    instead of counted as a FP.
    """
    n_pos = sum(int(np.sum(~np.asarray(ig, bool))) for _, ig in annotations.values())
    order = np.array(sorted(range(len(detections)), key=lambda i: -detections[i][1]), np.int64)
    matched = {k: np.zeros(len(b), dtype=bool) for k, (b, _) in annotations.items()}
    outcome = np.zeros(len(order), np.int8)
    duplicate = np.zeros(len(order), bool)
    best_iou = np.zeros(len(order))
    for rank, i in enumerate(order):
        image_id, _, box = detections[i]
        gt_boxes, ignore = annotations.get(image_id, (np.zeros((0, 4)), np.zeros(0, bool)))
        if len(gt_boxes):
            iou = box_iou(np.asarray(box, float)[None], np.asarray(gt_boxes, float))[0]
            j = int(np.argmax(iou))
            best_iou[rank] = iou[j]
            if iou[j] >= iou_threshold:
                if ignore[j]:
                    continue  # neither TP nor FP (VOC: difficult)
                if not matched[image_id][j]:
                    outcome[rank], matched[image_id][j] = 1, True
                    continue
                duplicate[rank] = True
        if ignore_unmatched is None or not ignore_unmatched[i]:
            outcome[rank] = -1
    return Matching(order, outcome, duplicate, best_iou, n_pos)


def precision_recall(matching: Matching) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision float64 [D] down the ranking (ignored ranks repeat the previous
    values, as in the devkit); empty when the class has no positives."""
    if matching.n_pos == 0:
        return np.zeros(0), np.zeros(0)
    ctp, cfp = np.cumsum(matching.outcome == 1), np.cumsum(matching.outcome == -1)
    return ctp / matching.n_pos, ctp / np.maximum(ctp + cfp, np.finfo(float).eps)


def eval_class(
    detections: list,
    annotations: dict,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    ignore_unmatched: np.ndarray | None = None,
) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one class: ``(ap, recall [D], precision [D])``; arguments as
    ``match_detections``. AP is 0 when nothing is detected and NaN when the class has no
    GT that is not ignored (recall and precision are then empty)."""
    matching = match_detections(detections, annotations, iou_threshold, ignore_unmatched)
    recall, precision = precision_recall(matching)
    ap = voc_ap(recall, precision, use_07_metric) if matching.n_pos else float("nan")
    return ap, recall, precision


def ap_by_iou(detections: list, annotations: dict, thresholds=IOU_THRESHOLDS) -> dict[str, float]:
    """Area AP at each IoU threshold, keyed ``"0.50"``, ``"0.55"``, ...; arguments as
    ``match_detections``."""
    return {
        f"{t:.2f}": eval_class(detections, annotations, t, use_07_metric=False)[0]
        for t in thresholds
    }


def ap_by_size(
    detections: list, annotations: dict, buckets=SIZE_BUCKETS, iou_threshold: float = 0.5
) -> dict[str, float]:
    """Area AP per size bucket (``name -> (low, high)``, box area in [low, high)).

    As COCO does for its area ranges: GT outside the bucket is ignored (like difficult),
    so a detection matched to it is neither TP nor FP, and a detection whose own box is
    outside the bucket is ignored when it matches no free GT (a FP that belongs to
    another bucket). NaN for a bucket with no GT of the class.
    """
    det_area = box_area(np.array([box for _, _, box in detections], float).reshape(-1, 4))
    results = {}
    for name, (low, high) in buckets.items():
        ann = {
            image_id: (boxes, np.asarray(ig, bool) | ~_inside(box_area(boxes), low, high))
            for image_id, (boxes, ig) in annotations.items()
        }
        outside = ~_inside(det_area, low, high)
        results[name] = eval_class(detections, ann, iou_threshold, False, outside)[0]
    return results


def class_detections(per_image: dict, label: int) -> list:
    """``[(image_id, score, box[4])]`` of one label from ``image_id -> Detections``."""
    return [
        (image_id, float(score), box)
        for image_id, d in per_image.items()
        for score, box in zip(d.scores[d.labels == label], d.boxes[d.labels == label], strict=True)
    ]


def class_annotations(items, label: int) -> dict:
    """``image_id -> (boxes [G, 4], difficult [G])`` of one label, for every item (objects
    with ``image_id``, ``boxes``, ``labels``, ``difficult``: a VOCDataset)."""
    return {
        it.image_id: (it.boxes[it.labels == label], it.difficult[it.labels == label])
        for it in items
    }


def nanmean(values) -> float:
    """Mean over the values that are not NaN; NaN (without NumPy's warning) if none."""
    values = np.asarray(list(values), float)
    return float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else float("nan")


def _inside(area: np.ndarray, low: float, high: float) -> np.ndarray:
    return (area >= low) & (area < high)
