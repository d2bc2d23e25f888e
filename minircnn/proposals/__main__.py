"""`python -m minircnn.proposals`: cache a split's selective-search boxes, measure recall.

python -m minircnn.proposals --root data/toyvoc --split trainval --jobs 2
python -m minircnn.proposals --recall --root data/toyvoc --split test
"""

import argparse
import json
from pathlib import Path

import numpy as np

from minircnn.data.voc import VOCDataset
from minircnn.ops.boxes import box_iou
from minircnn.proposals.cache import ProposalConfig, cache_path, load_or_compute

BUDGETS = (100, 500, 1000, 2000)
THRESHOLDS = (0.5, 0.7)


def recall_table(dataset: VOCDataset, proposals: list[np.ndarray], budgets=BUDGETS) -> dict:
    """Fraction of non-difficult ground-truth boxes covered (IoU >= t) by the first n
    proposals, for every t in THRESHOLDS and n in ``budgets``: {t: {n: recall}}."""
    best = {n: [] for n in budgets}
    for item, boxes in zip(dataset, proposals, strict=True):
        gt = item.boxes[~item.difficult]
        if len(gt) == 0:
            continue
        for n in budgets:
            top = boxes[:n]
            best[n].append(box_iou(gt, top).max(axis=1) if len(top) else np.zeros(len(gt)))
    return {
        t: {n: float(np.mean(np.concatenate(best[n]) >= t)) for n in budgets} for t in THRESHOLDS
    }


def plot_recall(dataset, proposals, path: str | Path) -> Path:
    """Recall at IoU 0.5 / 0.7 against the number of proposals kept, saved as PNG."""
    from minircnn.viz import plt, save_figure

    budgets = np.unique(np.geomspace(1, max(len(p) for p in proposals), 30).astype(int))
    table = recall_table(dataset, proposals, budgets)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for t, curve in table.items():
        ax.plot(list(curve), list(curve.values()), label=f"IoU >= {t}")
    ax.set_xscale("log")
    ax.set_xlabel("proposals per image")
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"selective search recall ({dataset.split})")
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minircnn.proposals", description=__doc__)
    parser.add_argument("--root", default="data/toyvoc", help="VOCdevkit folder")
    parser.add_argument("--year", default="2007")
    parser.add_argument("--split", default="trainval")
    parser.add_argument("--jobs", type=int, default=-1, help="parallel workers (-1: all cores)")
    parser.add_argument("--backend", default=None, help="joblib backend, e.g. dask")
    parser.add_argument("--mode", default="fast", choices=["fast", "single"])
    parser.add_argument("--max-proposals", type=int, default=2000)
    parser.add_argument("--cache-dir", default="data/proposals")
    parser.add_argument("--recall", action="store_true", help="print and plot recall")
    parser.add_argument("--plot", default="runs/proposals_recall.png")
    args = parser.parse_args(argv)
    dataset = VOCDataset(args.root, args.year, args.split, use_difficult=True)
    config = ProposalConfig(mode=args.mode, max_proposals=args.max_proposals)
    proposals = load_or_compute(dataset, config, args.cache_dir, args.jobs, args.backend)
    counts = [len(p) for p in proposals]
    print(
        f"{len(proposals)} images, {np.mean(counts):.0f} proposals per image "
        f"(min {min(counts)}, max {max(counts)}); cache {cache_path(dataset, args.cache_dir)}"
    )
    if args.recall:
        table = recall_table(dataset, proposals)
        print("recall  " + "  ".join(f"{n:>6}" for n in BUDGETS))
        for t, row in table.items():
            print(f"IoU {t}  " + "  ".join(f"{row[n]:6.3f}" for n in BUDGETS))
        print(f"wrote {plot_recall(dataset, proposals, args.plot)}")
        out = Path(args.plot).with_suffix(".json")
        out.write_text(json.dumps({str(t): row for t, row in table.items()}, indent=2))


if __name__ == "__main__":
    main()
