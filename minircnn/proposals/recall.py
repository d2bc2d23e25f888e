"""Recall of proposals: the fraction of ground-truth boxes that some proposal covers.

A detector can only find an object that one of its proposals overlaps, so recall at
IoU 0.5 bounds the detector's recall (Fast R-CNN section 5.5 studies how it varies with
the number of proposals).
"""

from pathlib import Path

import numpy as np

from minircnn.data.voc import VOCDataset
from minircnn.ops.boxes import box_iou

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
