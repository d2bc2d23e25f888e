"""Pictures: images with boxes, sample grids (matplotlib, no screen needed)."""

from pathlib import Path

import matplotlib.pyplot as plt  # without a display matplotlib falls back to Agg by itself
import numpy as np

_COLOURS = plt.get_cmap("tab10").colors


def draw_boxes(ax, image, boxes, labels, class_names, scores=None, difficult=None) -> None:
    """Show ``image`` (uint8 [H, W, 3]) on ``ax`` with boxes ``[G, 4]`` (0-based inclusive),
    labels ``[G]`` in 1..K named by ``class_names[label - 1]``, optional scores ``[G]``;
    difficult objects are drawn dashed."""
    ax.imshow(image)
    ax.set_axis_off()
    for k, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        x1, y1, x2, y2 = box
        colour = _COLOURS[(int(label) - 1) % len(_COLOURS)]
        dashed = difficult is not None and difficult[k]
        # a pixel-inclusive box covers [x1 - 0.5, x2 + 0.5] in matplotlib's pixel-centre axes
        rect = plt.Rectangle(
            (x1 - 0.5, y1 - 0.5),
            x2 - x1 + 1,
            y2 - y1 + 1,
            fill=False,
            edgecolor=colour,
            linewidth=1.5,
            linestyle="--" if dashed else "-",
        )
        ax.add_patch(rect)
        text = class_names[int(label) - 1]
        if scores is not None:
            text += f" {scores[k]:.2f}"
        ax.text(
            x1,
            y1 - 2,
            text,
            fontsize=7,
            color="white",
            va="bottom",
            bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "linewidth": 0},
        )


def save_preview(dataset, path: str | Path = "runs/toyvoc_preview.png", n: int = 12) -> Path:
    """A grid of the first ``n`` images of a VOCDataset with their ground-truth boxes."""

    def draw(ax, i):
        item = dataset[i]
        draw_boxes(
            ax,
            dataset.load_image(i),
            item.boxes,
            item.labels,
            dataset.classes,
            difficult=item.difficult,
        )

    return _image_grid(dataset, n, draw, path)


def save_detection_grid(dataset, per_image: dict, path, n: int = 8, min_score: float = 0.5):
    """The first ``n`` images of a dataset with their detections (score >= min_score);
    ``per_image`` maps image id -> Detections."""

    def draw(ax, i):
        dets = per_image[dataset[i].image_id]
        keep = dets.scores >= min_score
        draw_boxes(
            ax,
            dataset.load_image(i),
            dets.boxes[keep],
            dets.labels[keep],
            dataset.classes,
            scores=dets.scores[keep],
        )

    return _image_grid(dataset, n, draw, path)


def plot_losses(log: list[dict], path) -> Path | None:
    """Loss terms of a training log (rows with iteration, loss, and those of loss_cls,
    loss_loc, loss_rpn_cls, loss_rpn_reg that the run has) against iteration, as a moving average
    over 20 iterations, saved as PNG."""
    if not log:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    its = np.array([r["iteration"] for r in log])
    terms = [("loss", "total"), ("loss_cls", "L_cls"), ("loss_loc", "L_loc")]
    terms += [("loss_rpn_cls", "RPN L_cls"), ("loss_rpn_reg", "RPN L_reg")]
    for key, label in (t for t in terms if t[0] in log[0]):
        values = np.array([r[key] for r in log])
        k = min(20, len(values))
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(its[k - 1 :], smooth, label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure (creating folders) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _image_grid(dataset, n, draw, path) -> Path:
    """Up to 4 columns of the first ``n`` images, each drawn by ``draw(ax, i)``, saved."""
    n = min(n, len(dataset))
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i in range(n):
        draw(axes.ravel()[i], i)
        axes.ravel()[i].set_title(dataset[i].image_id, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
