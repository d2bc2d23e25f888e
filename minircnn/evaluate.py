"""PASCAL VOC detection evaluation, as the VOC devkit defines it, with a diagnosis.

    python -m minircnn.evaluate --checkpoint runs/tiny/checkpoint.npz \
        --root data/toyvoc --split test        # or --split val

Every image of the split is evaluated, also for a model trained on a subset of the
classes (``--classes``): as in the devkit, a class's false positives on images without it
count; objects of classes the model does not know are dropped.

Per class (matching: minircnn.evaluation.ap): AP at IoU 0.5, VOC07 11-point and area
(VOC2010+); area AP at IoU 0.5:0.05:0.95 and their mean (COCO-style); area AP at IoU 0.5
for small / medium / large objects (box area < 32^2 <= medium < 64^2 px <= large). mAP is
the mean over classes. False positives per image by cause, localisation / confusion /
background (Hoiem et al. 2012; minircnn.evaluation.diagnosis). A Fast R-CNN's proposals
are scored with test-time augmentation by default (``--tta``: two scales, the mirrored
image, box voting; ``--tta off`` for the paper's single pass), a Faster R-CNN's detections
are refined (``--refine``: a second pass of the head and box voting; minircnn.detect
explains both). Writes eval.json, pr.png, fp_causes.png and detections.png under
runs/<run>/eval_<split>/ (or runs/<--name>/).
"""

import json
import time
from pathlib import Path

import numpy as np

from minircnn import cli
from minircnn.evaluation.ap import (
    IOU_THRESHOLDS,
    SIZE_BUCKETS,
    ap_by_iou,
    ap_by_size,
    class_annotations,
    class_detections,
    eval_class,
    nanmean,
    voc_ap,
)
from minircnn.evaluation.diagnosis import FP_CAUSES, fp_causes, plot_fp_causes
from minircnn.progress import ProgressBar

__all__ = ["voc_ap", "eval_class", "evaluate_detections", "evaluate_model", "evaluation_dataset"]


def evaluation_dataset(root, year: str = "2007", split: str = "test", classes=None):
    """The VOCDataset to evaluate on: every image of ``<root>/VOC<year>``'s ``split``, the
    objects of ``classes`` only (None: all), difficult ones kept so they can be ignored.
    Images without any of ``classes`` stay (``keep_all_images``): false positives there
    count, as in the VOC devkit."""
    from minircnn.data.voc import VOCDataset

    return VOCDataset(root, year, split, classes=classes, use_difficult=True, keep_all_images=True)


def class_metrics(detections: list, annotations: dict, iou_threshold: float = 0.5) -> dict:
    """Every AP of one class (arguments as ``eval_class``): ``{"ap07", "ap", "recall",
    "precision", "ap_by_iou", "ap_50_95", "ap_by_size"}``; recall/precision as lists."""
    ap07, recall, precision = eval_class(detections, annotations, iou_threshold, True)
    # the area AP from the same precision/recall curve: one matching serves both metrics
    ap = float("nan") if np.isnan(ap07) else voc_ap(recall, precision, use_07_metric=False)
    by_iou = ap_by_iou(detections, annotations)
    return {
        "ap07": ap07,
        "ap": ap,
        "recall": recall.tolist(),
        "precision": precision.tolist(),
        "ap_by_iou": by_iou,
        "ap_50_95": nanmean(by_iou.values()),
        "ap_by_size": ap_by_size(detections, annotations, iou_threshold=iou_threshold),
    }


def evaluate_detections(per_image: dict, dataset, iou_threshold: float = 0.5) -> dict:
    """All metrics for ``per_image`` (image_id -> Detections) against ``dataset`` (read
    as ``evaluation_dataset`` does).

    Returns ``{"classes": {name: class_metrics(...)}, "map07", "map", "map_by_iou":
    {"0.50": .., "0.95": ..}, "map_50_95", "map_by_size": {"small", "medium", "large"},
    "size_buckets": {name: [low, high or None]}, "fp_causes": diagnosis.fp_causes(...)}``;
    APs are floats, NaN for a class (or bucket) without ground truth, means skip NaN.
    """
    classes = {
        name: class_metrics(
            class_detections(per_image, label), class_annotations(dataset, label), iou_threshold
        )
        for label, name in enumerate(dataset.classes, start=1)
    }
    rows = classes.values()
    return {
        "classes": classes,
        "map07": nanmean(r["ap07"] for r in rows),
        "map": nanmean(r["ap"] for r in rows),
        "map_by_iou": {
            f"{t:.2f}": nanmean(r["ap_by_iou"][f"{t:.2f}"] for r in rows) for t in IOU_THRESHOLDS
        },
        "map_50_95": nanmean(r["ap_50_95"] for r in rows),
        "map_by_size": {b: nanmean(r["ap_by_size"][b] for r in rows) for b in SIZE_BUCKETS},
        "size_buckets": {
            b: [low, None if np.isinf(high) else high] for b, (low, high) in SIZE_BUCKETS.items()
        },
        "fp_causes": fp_causes(per_image, dataset, dataset.classes, iou_threshold),
    }


def evaluate_model(
    detector, dataset, proposals, progress=True, **detect_kwargs
) -> tuple[dict, dict]:
    """Detect on every image of ``dataset`` and evaluate -> (results with seconds per
    image added, detections per image id). ``proposals``: one array per image, or None
    for a Faster R-CNN (its RPN proposes)."""
    from minircnn.detect import detect

    per_image, t0 = {}, time.perf_counter()
    for i in ProgressBar(range(len(dataset)), desc="detect", enabled=progress):
        given = None if proposals is None else proposals[i]
        per_image[dataset[i].image_id] = detect(
            detector, dataset.load_image(i), given, **detect_kwargs
        )
    seconds = (time.perf_counter() - t0) / max(len(dataset), 1)
    results = evaluate_detections(per_image, dataset)
    results["seconds_per_image"] = seconds
    return results, per_image


def print_table(results: dict) -> None:
    """Per-class AP table with the mAP row, then size buckets and false-positive causes."""
    print(
        f"{'class':>14}  {'AP07':>6}  {'AP':>6}  {'AP75':>6}  {'AP.5:.95':>8}  "
        + "  ".join(f"{b:>6}" for b in results["size_buckets"])
    )
    rows = {name: _row(r, "ap") for name, r in results["classes"].items()}
    for name, values in {**rows, "mAP": _row(results, "map")}.items():
        ap07, ap, ap75, ap_50_95, *by_size = values
        print(
            f"{name:>14}  {ap07:6.3f}  {ap:6.3f}  {ap75:6.3f}  {ap_50_95:8.3f}  "
            + "  ".join(f"{v:6.3f}" for v in by_size)
        )
    print(
        "AP07: VOC07 11-point, others area AP; AP and sizes at IoU 0.5; box areas: "
        + ", ".join(
            f"{b} [{low**0.5:g}^2, {'inf' if high is None else f'{high**0.5:g}^2'})"
            for b, (low, high) in results["size_buckets"].items()
        )
    )
    fp = results["fp_causes"]["per_image"]
    print(
        "false positives per image (top-N per class, N = its objects): "
        + "  ".join(f"{c} {fp[c]:.2f}" for c in FP_CAUSES)
    )


def _row(r: dict, prefix: str) -> list[float]:
    """AP07, AP, AP@0.75, AP@[.5:.95] and AP per size of a class (prefix "ap") or of the
    whole (prefix "map")."""
    by_size = list(r[f"{prefix}_by_size"].values())
    return [
        r[f"{prefix}07"],
        r[prefix],
        r[f"{prefix}_by_iou"]["0.75"],
        r[f"{prefix}_50_95"],
        *by_size,
    ]


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


@cli.command
def main(argv: list[str] | None = None) -> dict:
    """Evaluate a checkpoint on a split: print the table, write the plots and eval.json;
    returns the results. The checkpoint, data set and arguments are checked first."""
    from minircnn.checkpoint import CheckpointError
    from minircnn.data.voc import UnknownClassError
    from minircnn.detect import (
        REFINE_MODES,
        add_refine_argument,
        add_tta_argument,
        load_detector,
        refines,
        tta_options,
    )
    from minircnn.proposals.cache import load_or_compute

    parser = cli.ArgumentParser(prog="python -m minircnn.evaluate", description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--root", default="data/toyvoc")
    parser.add_argument("--year", default="2007")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--name", help="output folder under runs/ (default: <checkpoint's run>/eval_<split>)"
    )
    parser.add_argument(
        "--svd-rank",
        type=cli.svd_rank,
        help="truncated SVD of fc6/fc7: a rank (>= 1) or a fraction (in (0, 1))",
    )
    parser.add_argument(
        "--scales", type=cli.scales, help="comma-separated shorter sides for multi-scale testing"
    )
    add_refine_argument(parser)
    add_tta_argument(parser)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    refine = REFINE_MODES[args.refine]
    detector = load_detector(args.checkpoint)
    if args.scales:
        cli.check_scales(args.scales, detector.model.config)
    options = tta_options(detector, args.tta, refine, args.scales)
    if args.svd_rank:
        detector = detector.compressed(args.svd_rank)
    try:
        dataset = evaluation_dataset(args.root, args.year, args.split, detector.classes)
    except UnknownClassError as err:
        raise CheckpointError(f"{args.checkpoint}: a model of other classes; {err}") from err
    if detector.uses_rpn:  # Faster R-CNN: proposals from its RPN, timed with detection
        proposals, timed = None, "detection including the RPN's proposals"
    else:
        proposals = load_or_compute(dataset, progress=not args.quiet)
        timed = "detection; selective-search proposals cached"
    results, per_image = evaluate_model(
        detector, dataset, proposals, progress=not args.quiet, refine=refine, **options
    )
    results["refine"] = refines(detector, refine, proposals_given=proposals is not None)
    results["test_time"] = options
    print_table(results)
    augmented = f", scales {options['scales']}, mirrored, voted" if options.get("flip") else ""
    print(f"{results['seconds_per_image'] * 1e3:.1f} ms per image ({timed}{augmented})")
    run = Path(args.checkpoint).parent.name
    out_dir = Path("runs") / (args.name or f"{run}/eval_{args.split}")  # val and test apart
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_pr(results, out_dir / "pr.png")
    plot_fp_causes(results["fp_causes"], out_dir / "fp_causes.png")
    from minircnn.viz import save_detection_grid  # matplotlib: half a second, when needed

    save_detection_grid(dataset, per_image, out_dir / "detections.png")
    (out_dir / "eval.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out_dir}/pr.png, fp_causes.png, detections.png and eval.json")
    return results


if __name__ == "__main__":
    cli.run(main)
