"""PASCAL VOC detection evaluation, as the VOC devkit defines it.

    python -m minircnn.evaluate --checkpoint runs/tiny/checkpoint.npz \
        --root data/toyvoc --split test

Per class: detections over all images are sorted by score; each is matched greedily to
the ground truth it overlaps most (IoU with the +1 convention). At IoU >= 0.5 with a box
not yet matched it is a true positive; a second detection of a matched box is a false
positive; a match to a box marked *difficult* counts as neither. Precision and recall
follow down the ranking; AP is either VOC2007's 11-point mean of the interpolated
precision at recall 0, 0.1, ..., 1 or (VOC2010+) the area under the monotone precision
envelope. mAP is the mean over classes.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minircnn.ops.boxes import box_iou


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


def eval_class(detections, annotations, iou_threshold=0.5, use_07_metric=True):
    """AP of one class.

    detections: list of ``(image_id, score, box[4])``; annotations: ``image_id ->
    (boxes [G, 4], difficult bool [G])`` for this class (images without it may be left
    out). Returns ``(ap, recall [D], precision [D])``; AP is 0 when nothing is detected
    and NaN when the class has no non-difficult ground truth.
    """
    n_pos = sum(int(np.sum(~np.asarray(d, bool))) for _, d in annotations.values())
    order = sorted(range(len(detections)), key=lambda i: -detections[i][1])  # stable
    matched = {k: np.zeros(len(b), dtype=bool) for k, (b, _) in annotations.items()}
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, i in enumerate(order):
        image_id, _, box = detections[i]
        gt_boxes, difficult = annotations.get(image_id, (np.zeros((0, 4)), np.zeros(0, bool)))
        if len(gt_boxes) == 0:
            fp[rank] = 1
            continue
        iou = box_iou(np.asarray(box, float)[None], np.asarray(gt_boxes, float))[0]
        j = int(np.argmax(iou))
        if iou[j] < iou_threshold:
            fp[rank] = 1
        elif difficult[j]:
            continue  # neither true nor false positive
        elif not matched[image_id][j]:
            tp[rank], matched[image_id][j] = 1, True
        else:
            fp[rank] = 1  # a duplicate detection of an already matched object
    if n_pos == 0:
        return float("nan"), np.zeros(0), np.zeros(0)
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    recall = ctp / n_pos
    precision = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
    if len(order) == 0:
        return 0.0, recall, precision
    return voc_ap(recall, precision, use_07_metric), recall, precision


def evaluate_detections(per_image: dict, dataset, iou_threshold=0.5) -> dict:
    """Per-class AP (both metrics) for ``per_image``: image_id -> Detections, against a
    dataset read with ``use_difficult=True``. Returns {"classes": {name: {...}}, "map07",
    "map"}."""
    results = {}
    for k, name in enumerate(dataset.classes, start=1):
        dets = [
            (iid, float(s), b)
            for iid, d in per_image.items()
            for s, b in zip(d.scores[d.labels == k], d.boxes[d.labels == k], strict=True)
        ]
        ann = {
            it.image_id: (it.boxes[it.labels == k], it.difficult[it.labels == k]) for it in dataset
        }
        ap07, recall, precision = eval_class(dets, ann, iou_threshold, use_07_metric=True)
        ap, _, _ = eval_class(dets, ann, iou_threshold, use_07_metric=False)
        results[name] = {
            "ap07": ap07,
            "ap": ap,
            "recall": recall.tolist(),
            "precision": precision.tolist(),
        }
    return {
        "classes": results,
        "map07": float(np.nanmean([r["ap07"] for r in results.values()])),
        "map": float(np.nanmean([r["ap"] for r in results.values()])),
    }


def evaluate_model(model, dataset, proposals, progress=True, **detect_kwargs) -> tuple[dict, dict]:
    """Detect on every image of ``dataset`` and evaluate -> (results with seconds per
    image added, detections per image id)."""
    from minircnn.detect import detect

    per_image, t0 = {}, time.perf_counter()
    for i in tqdm(range(len(dataset)), desc="detect", disable=not progress):
        per_image[dataset[i].image_id] = detect(
            model, dataset.load_image(i), proposals[i], **detect_kwargs
        )
    seconds = (time.perf_counter() - t0) / max(len(dataset), 1)
    results = evaluate_detections(per_image, dataset)
    results["seconds_per_image"] = seconds
    return results, per_image


def print_table(results: dict) -> None:
    """Per-class AP table and mAP (VOC07 11-point and area)."""
    print(f"{'class':>14}  {'AP (07)':>8}  {'AP (area)':>9}")
    for name, r in results["classes"].items():
        print(f"{name:>14}  {r['ap07']:8.3f}  {r['ap']:9.3f}")
    print(f"{'mAP':>14}  {results['map07']:8.3f}  {results['map']:9.3f}")


def plot_pr(results: dict, path) -> Path:
    """Precision-recall curves, one per class."""
    from minircnn.viz import plt, save_figure

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, r in results["classes"].items():
        ax.plot(r["recall"], r["precision"], label=f"{name} (AP {r['ap07']:.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"mAP@0.5 {results['map07']:.3f} (VOC07) / {results['map']:.3f} (area)")
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    from minircnn.data.voc import VOCDataset, dataset_classes
    from minircnn.detect import load_detector
    from minircnn.proposals.cache import load_or_compute
    from minircnn.svd import compress_model
    from minircnn.viz import save_detection_grid

    parser = argparse.ArgumentParser(
        prog="python -m minircnn.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--root", default="data/toyvoc")
    parser.add_argument("--year", default="2007")
    parser.add_argument("--split", default="test")
    parser.add_argument("--name", help="output folder under runs/ (default: the checkpoint's)")
    parser.add_argument(
        "--svd-rank", type=float, help="truncated SVD of fc6/fc7: a rank (>= 1) or a fraction (< 1)"
    )
    parser.add_argument("--scales", help="comma-separated shorter sides for multi-scale testing")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    model = load_detector(args.checkpoint)
    if args.svd_rank:
        model = compress_model(model, args.svd_rank)
    classes = tuple(model.meta["classes"])
    if classes == dataset_classes(Path(args.root) / f"VOC{args.year}"):
        classes = None  # all classes: every image of the split is evaluated
    dataset = VOCDataset(args.root, args.year, args.split, classes=classes, use_difficult=True)
    proposals = load_or_compute(dataset, progress=not args.quiet)
    scales = [int(s) for s in args.scales.split(",")] if args.scales else None
    results, per_image = evaluate_model(
        model, dataset, proposals, progress=not args.quiet, scales=scales
    )
    print_table(results)
    print(f"{results['seconds_per_image'] * 1e3:.1f} ms per image (detection, proposals cached)")
    out_dir = Path("runs") / (args.name or Path(args.checkpoint).parent.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_pr(results, out_dir / "pr.png")
    save_detection_grid(dataset, per_image, out_dir / "detections.png")
    (out_dir / "eval.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out_dir}/pr.png, detections.png and eval.json")
    return results


if __name__ == "__main__":
    main()
