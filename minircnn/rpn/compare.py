"""R-CNN -> Fast R-CNN -> Faster R-CNN on one machine: proposal recall, test mAP, and test
time per image *including proposals*.

    python -m minircnn.rpn.compare --ss runs/tiny/checkpoint.npz \
        --rpn runs/tiny-rpn/checkpoint.npz --split test

- Recall at IoU 0.5 (and 0.7) against the number of proposals per image: selective search
  (the split's cache) and the RPN's, ranked by objectness after NMS (up to
  ``RECALL_TOP_N``); one plot, ``recall.png``.
- mAP@0.5 of each model with its own proposals: the Fast R-CNN with selective search's,
  the Faster R-CNN with its RPN's (at its test top-N); each as the ``detect`` function
  scores by default (one pass, the Faster R-CNN refined), not with the test-time
  augmentation that ``python -m minircnn.evaluate`` adds for the Fast R-CNN, so that
  both are timed and scored the same way.
- Time per image, each method timed in a block of consecutive calls over the same
  images: selective search, Fast R-CNN on its boxes, R-CNN (one network pass per warped
  crop, same weights and boxes), and Faster R-CNN end to end.

Writes ``runs/compare_<split>/compare.json`` and ``recall.png``.
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from minircnn import cli
from minircnn.proposals.recall import THRESHOLDS, recall_table
from minircnn.timing import best_time

RECALL_TOP_N = 2000  # RPN proposals kept for the recall curve (the selective-search cap)


def rpn_proposals(detector, dataset, post_nms_top_n: int = RECALL_TOP_N) -> list[np.ndarray]:
    """The RPN's proposals ``[P, 4]`` (original pixels, by descending objectness) for each
    image of ``dataset``, keeping up to ``post_nms_top_n`` after NMS (3x as many before)."""
    from minircnn.detect import rpn_proposals as proposals_of

    config = detector.model.rpn_config.proposals
    wide = replace(
        config, test_pre_nms_top_n=3 * post_nms_top_n, test_post_nms_top_n=post_nms_top_n
    )
    detector = replace(detector, model=replace_proposals(detector.model, wide))
    out = []
    for i in range(len(dataset)):
        _, rois, scale = proposals_of(detector, dataset.load_image(i))
        out.append(rois[:, 1:] / scale)
    return out


def replace_proposals(model, proposal_config):
    """A shallow copy of a FasterRCNN whose RPN proposes with ``proposal_config`` (the
    layers, and so the weights, are shared)."""
    import copy

    other = copy.copy(model)
    other.rpn_config = replace(model.rpn_config, proposals=proposal_config)
    return other


def plot_recall_curves(dataset, sets: dict, path) -> Path:
    """Recall at IoU 0.5 (solid) and 0.7 (dashed) against proposals per image, one colour
    per method in ``sets`` (name -> proposals per image)."""
    from minircnn.viz import plt, save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (name, proposals), colour in zip(sets.items(), ("C0", "C1", "C2"), strict=False):
        top = max(len(p) for p in proposals)
        budgets = np.unique(np.geomspace(1, top, 30).astype(int))
        table = recall_table(dataset, proposals, budgets)
        for t, style in zip(THRESHOLDS, ("-", "--"), strict=True):
            curve = table[t]
            ax.plot(
                list(curve), list(curve.values()), style, color=colour, label=f"{name}, IoU {t}"
            )
    ax.set_xscale("log")
    ax.set_xlabel("proposals per image")
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"proposal recall ({dataset.split})")
    fig.tight_layout()
    return save_figure(fig, path)


def time_per_image(ss_detector, rpn_detector, images, repeats: int = 3) -> dict:
    """Milliseconds per image of each stage, each timed as a block over ``images``:
    ``selective_search``, ``fast_rcnn`` (detection on those boxes), ``rcnn`` (R-CNN's
    per-crop scoring of the same boxes, same weights, one pass after a warm-up one) and
    ``faster_rcnn`` (its RPN and head, end to end); plus the totals per method, proposals
    included."""
    from minircnn.detect import detect, postprocess
    from minircnn.proposals.cache import ProposalConfig
    from minircnn.rcnn import rcnn_score_proposals

    search = ProposalConfig().search  # what the caches hold
    boxes = [search(image) for image in images]
    pairs = list(zip(images, boxes, strict=True))

    def block(fn, n=repeats, warmup=1):
        return 1e3 * best_time(lambda: [fn(*p) for p in pairs], n, warmup) / len(images)

    ms = {
        "selective_search": block(lambda image, _: search(image), 1, 0),
        "fast_rcnn": block(lambda image, b: detect(ss_detector, image, b)),
        "faster_rcnn": block(lambda image, _: detect(rpn_detector, image)),
        "rcnn": block(  # one call (it takes seconds), after a warm-up call like the others
            lambda image, b: postprocess(*rcnn_score_proposals(ss_detector, image, b)), 1
        ),
    }
    totals = {
        "R-CNN + selective search": ms["selective_search"] + ms["rcnn"],
        "Fast R-CNN + selective search": ms["selective_search"] + ms["fast_rcnn"],
        "Faster R-CNN (RPN)": ms["faster_rcnn"],
    }
    count = float(np.mean([len(b) for b in boxes]))
    return {"stages_ms": ms, "total_ms": totals, "selective_search_boxes_per_image": count}


@cli.command
def main(argv: list[str] | None = None) -> dict:
    """Recall, mAP and time of both checkpoints on a split; print the table, write the
    plot and JSON; returns the results."""
    from minircnn.checkpoint import CheckpointError
    from minircnn.detect import load_detector, refines
    from minircnn.evaluate import evaluate_model, evaluation_dataset
    from minircnn.proposals.cache import load_or_compute

    parser = cli.ArgumentParser(prog="python -m minircnn.rpn.compare", description=__doc__)
    parser.add_argument("--ss", default="runs/tiny/checkpoint.npz", help="a Fast R-CNN checkpoint")
    parser.add_argument(
        "--rpn", default="runs/tiny-rpn/checkpoint.npz", help="a Faster R-CNN checkpoint"
    )
    parser.add_argument("--root", default="data/toyvoc")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--time-images", type=cli.positive_int, default=10, help="images timed (default 10)"
    )
    parser.add_argument("--out", help="output folder (default runs/compare_<split>)")
    args = parser.parse_args(argv)
    ss, rpn = load_detector(args.ss), load_detector(args.rpn)
    if ss.uses_rpn or not rpn.uses_rpn:
        raise CheckpointError(
            f"--ss {args.ss} must be a Fast R-CNN and --rpn {args.rpn} a Faster R-CNN"
        )
    if ss.classes != rpn.classes:
        raise CheckpointError(f"{args.ss} and {args.rpn} were trained on different classes")
    dataset = evaluation_dataset(args.root, split=args.split, classes=ss.classes)
    out = Path(args.out or f"runs/compare_{args.split}")
    ss_boxes = load_or_compute(dataset, progress=False)
    sets = {"selective search": ss_boxes, "RPN": rpn_proposals(rpn, dataset)}
    budgets = (50, 100, 300, 1000, 2000)
    recall = {name: recall_table(dataset, boxes, budgets) for name, boxes in sets.items()}
    plot_recall_curves(dataset, sets, out / "recall.png")
    maps = {
        "Fast R-CNN + selective search": evaluate_model(ss, dataset, ss_boxes, progress=False)[0],
        "Faster R-CNN (RPN)": evaluate_model(rpn, dataset, None, progress=False)[0],
    }
    images = [dataset.load_image(i) for i in range(min(args.time_images, len(dataset)))]
    timing = time_per_image(ss, rpn, images)
    print(f"recall at IoU 0.5 on {args.split} ({len(dataset)} images), proposals per image:")
    print(f"{'':>18}" + "".join(f"{n:>7}" for n in budgets))
    for name, table in recall.items():
        print(f"{name:>18}" + "".join(f"{table[0.5][n]:7.3f}" for n in budgets))
    fast = timing["total_ms"]["Fast R-CNN + selective search"]
    print(f"\n{'method':<32}{'mAP@0.5':>9}{'ms/image':>10}{'speed-up':>10}  (proposals included)")
    for name, total in timing["total_ms"].items():
        m = maps.get(name)
        shown = f"{m['map07']:9.3f}" if m else f"{'':>9}"
        print(f"{name:<32}{shown}{total:10.1f}{fast / total:9.2f}x")
    print(
        "stages (ms per image): "
        + ", ".join(f"{k} {v:.1f}" for k, v in timing["stages_ms"].items())
    )
    results = {
        "split": args.split,
        "recall": {name: {str(t): v for t, v in table.items()} for name, table in recall.items()},
        "map07": {k: v["map07"] for k, v in maps.items()},
        "map": {k: v["map"] for k, v in maps.items()},
        "map_by_size": {k: v["map_by_size"] for k, v in maps.items()},
        "timing": timing,
        "time_images": len(images),
        "refined": {
            "Fast R-CNN + selective search": refines(ss, None, proposals_given=True),
            "Faster R-CNN (RPN)": refines(rpn, None, proposals_given=False),
        },
    }
    (out / "compare.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out}/recall.png and compare.json")
    return results


if __name__ == "__main__":
    cli.run(main)
