"""False positives by cause, after Hoiem, Chodpathumwan and Dai (ECCV 2012), "Diagnosing
error in object detectors".

Which detections: as Hoiem et al. do, for each class the N most confident detections, N =
the number of its non-difficult GT objects (a cut that does not depend on how the scores
are calibrated; at that rank a perfect detector has found everything). Among them, each
false positive at IoU 0.5 (VOC matching, ``minircnn.evaluation.ap``) gets one cause, the
first that applies:

- localisation: IoU in [0.1, 0.5) with a GT box of its class, or a duplicate detection of
  an already matched one;
- confusion: IoU >= 0.1 with a GT box of another class (Hoiem et al. split this into
  similar and other classes; with the toy set's five shapes we do not);
- background: everything else.

GT boxes of every kind count here, difficult ones included: a box on a difficult object of
another class is still a confusion, not background.
"""

from pathlib import Path

import numpy as np

from minircnn.evaluation.ap import class_annotations, class_detections, match_detections
from minircnn.ops.boxes import box_iou

FP_CAUSES = ("localisation", "confusion", "background")
NEAR_IOU = 0.1  # Hoiem et al.: overlap >= 0.1 counts as "near" an object


def fp_causes(per_image: dict, items, classes, iou_threshold: float = 0.5) -> dict:
    """False positives among each class's top-N detections, by cause.

    per_image: ``image_id -> Detections`` (boxes [D, 4], scores [D], labels [D] in 1..K);
    items: the evaluated images (``image_id``, ``boxes`` [G, 4], ``labels`` [G],
    ``difficult`` [G]: a VOCDataset); classes: the K class names. Returns ``{"per_image":
    {cause: FP per image}, "counts": {cause: int}, "classes": {name: {cause: int}},
    "num_images": int}``.
    """
    items = list(items)
    by_class = {}
    for label, name in enumerate(classes, start=1):
        detections = class_detections(per_image, label)
        matching = match_detections(detections, class_annotations(items, label), iou_threshold)
        others = {it.image_id: it.boxes[it.labels != label] for it in items}
        counts = dict.fromkeys(FP_CAUSES, 0)
        for rank in np.flatnonzero(matching.outcome[: matching.n_pos] == -1):
            image_id, _, box = detections[matching.order[rank]]
            other_iou = box_iou(
                np.asarray(box, float)[None], others.get(image_id, np.zeros((0, 4)))
            )
            cause = fp_cause(
                matching.best_iou[rank], matching.duplicate[rank], other_iou.max(initial=0.0)
            )
            counts[cause] += 1
        by_class[name] = counts
    total = {cause: sum(c[cause] for c in by_class.values()) for cause in FP_CAUSES}
    return {
        "per_image": {cause: n / max(len(items), 1) for cause, n in total.items()},
        "counts": total,
        "classes": by_class,
        "num_images": len(items),
    }


def fp_cause(same_class_iou: float, duplicate: bool, other_class_iou: float) -> str:
    """The cause of one false positive from its best IoU with a GT box of its class, whether
    it duplicates a matched one, and its best IoU with a GT box of another class."""
    if duplicate or same_class_iou >= NEAR_IOU:
        return "localisation"
    if other_class_iou >= NEAR_IOU:
        return "confusion"
    return "background"


def plot_fp_causes(diagnosis: dict, path) -> Path:
    """Stacked bars: false positives per image for each class, split by cause."""
    from minircnn.viz import plt, save_figure

    names = list(diagnosis["classes"])
    n_images = max(diagnosis["num_images"], 1)
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.5))
    bottom = np.zeros(len(names))
    for cause in FP_CAUSES:
        heights = np.array([diagnosis["classes"][n][cause] for n in names]) / n_images
        ax.bar(names, heights, bottom=bottom, label=cause)
        bottom += heights
    ax.set_xlabel("class")
    ax.set_ylabel("false positives per image")
    ax.set_title("top-N false positives by cause (Hoiem et al. 2012)", fontsize=9)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    return save_figure(fig, path)
