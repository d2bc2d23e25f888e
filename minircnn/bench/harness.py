"""What every bench section shares: the section registry, optional torch/torchvision,
result tables and ratio rows, random RoIs, and a synthetic training batch with a Trainer
that steps on it."""

from collections.abc import Callable

import numpy as np

from minircnn.timing import best_time

SECTIONS: dict[str, Callable] = {}


def section(name: str):
    """Register a bench section under ``name``."""

    def register(fn):
        SECTIONS[name] = fn
        return fn

    return register


def try_import_torch(threads: int):
    """torch with ``threads`` intra-op threads, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def torchvision_op(name: str):
    """``torchvision.ops.<name>``, or None when torchvision is not installed."""
    try:
        import torchvision.ops
    except ImportError:
        return None
    return getattr(torchvision.ops, name)


def side_by_side(ours: Callable, theirs: Callable | None, repeats: int, rounds: int):
    """Best wall times (s) of ``ours`` and ``theirs`` (None: not timed, returned as None).
    Each is timed in blocks of ``repeats`` consecutive calls, the two taking turns for
    ``rounds`` rounds: a slow spell of a shared machine then spoils a block, not a side."""
    best_ours = best_theirs = float("inf")
    for _ in range(rounds):
        if theirs is not None:
            best_theirs = min(best_theirs, best_time(theirs, repeats))
        best_ours = min(best_ours, best_time(ours, repeats))
    return best_ours, (best_theirs if theirs is not None else None)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """Print rows (dicts) as an aligned text table; missing values show as '-'."""

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n== {title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))


def compare(row: dict, ours: float, theirs: float | None, flops: float | None = None) -> dict:
    """Fill a table row with times (ms), GFLOP/s and the ours/torch time ratio."""
    row["ours_ms"] = ours * 1e3
    if flops:
        row["ours_GFLOPs"] = flops / ours / 1e9
    if theirs is not None:
        row["torch_ms"] = theirs * 1e3
        row["ratio"] = ours / theirs
        if flops:
            row["torch_GFLOPs"] = flops / theirs / 1e9
    return row


def random_rois(rng: np.random.Generator, n: int, n_img: int, height: int, width: int):
    """``n`` RoIs ``[n, 5]`` float32 spread over ``n_img`` images of ``height x width`` px."""
    x1 = rng.uniform(0, width * 0.8, n)
    y1 = rng.uniform(0, height * 0.8, n)
    x2 = np.minimum(x1 + rng.uniform(16, width * 0.6, n), width - 1)
    y2 = np.minimum(y1 + rng.uniform(16, height * 0.6, n), height - 1)
    return np.stack([rng.integers(0, n_img, n), x1, y1, x2, y2], axis=1).astype(np.float32)


def training_batch(
    rng: np.random.Generator,
    num_classes: int,
    n_images: int = 2,
    height: int = 192,
    width: int = 256,
    n_rois: int = 128,
):
    """A synthetic MiniBatch of the shapes training runs (N = 2 images of the training
    scale, R = 128 RoIs): images ``[N, 3, H, W]`` float32 (standard normal, like
    normalised pixels), R/N ``random_rois`` per image grouped by image, the first 25% of
    each image's RoIs foreground with a random class in 1..K, and their class-specific
    targets and weights ``[R, 4(K+1)]`` towards a jittered copy of each box, normalised
    as in training. No data set, proposals or sampling: only the arrays."""
    from minircnn.data.sampling import MiniBatch, SamplerConfig, class_specific_targets, roi_labels
    from minircnn.ops.boxes import TARGET_MEANS, TARGET_STDS

    per_image = n_rois // n_images
    n_fg = round(SamplerConfig.fg_fraction * per_image)
    rois, labels = [], []
    for b in range(n_images):
        r = random_rois(rng, per_image, 1, height, width)
        r[:, 0] = b
        rois.append(r)
        is_fg = np.arange(per_image) < n_fg  # foreground first, as sample_rois orders them
        labels.append(roi_labels(rng.integers(1, num_classes + 1, per_image), is_fg))
    rois, labels = np.concatenate(rois), np.concatenate(labels)
    gt = rois[:, 1:] + rng.normal(0, 4, (len(rois), 4))  # a nearby "ground truth" box
    targets, weights = class_specific_targets(
        rois[:, 1:], gt, labels, num_classes, TARGET_MEANS, TARGET_STDS
    )
    images = rng.standard_normal((n_images, 3, height, width), dtype=np.float32)
    return MiniBatch(images, rois, labels, targets, weights)


class FixedBatchSampler:
    """Stands in for HierarchicalSampler: ``batch`` returns the same MiniBatch every
    time, so a Trainer's ``step`` runs its math (forward, loss, backward, SGD) on it with
    no data set and no sampling cost."""

    def __init__(self, batch) -> None:
        from minircnn.data.sampling import SamplerConfig

        self.config = SamplerConfig(images_per_batch=len(batch.images))
        self.usable = np.arange(len(batch.images))
        self._batch = batch

    def batch(self, indices):
        return self._batch


def fixed_batch_trainer(model, batch):
    """A Trainer of ``model`` whose every ``step(range(N))`` trains on ``batch``, at the
    default schedule's learning rate kept constant (no step). It is never saved."""
    from minircnn.train.trainer import TrainConfig, Trainer

    config = TrainConfig(lr_step_epochs=())
    sampler = FixedBatchSampler(batch)
    return Trainer(model, sampler, config, "runs/bench/unsaved", {}, np.random.default_rng(0))
