"""Hierarchical mini-batch sampling (Fast R-CNN section 2.3, "Mini-batch sampling").

R-CNN and SPPnet drew each training RoI from a different image, so every RoI paid for a
forward pass over its own (huge) receptive field. Fast R-CNN samples hierarchically: first
N images, then R/N RoIs from each, so the RoIs of one image share the conv computation
(N = 2, R = 128 is ~64x faster than 128 images of one RoI). Per image, 25% of the RoIs are
foreground (IoU >= 0.5 with a ground-truth box, labelled with its class) and the rest
background (max IoU in [0.1, 0.5), label 0). Images are flipped horizontally with
probability 0.5 and rescaled to a fixed shorter side, the longer side capped.

Regression targets (section 2.3) are the R-CNN deltas from each foreground RoI to its
ground truth, normalised by ``TARGET_MEANS/TARGET_STDS`` and written into the 4 columns of
the RoI's class; ``bbox_weights`` is 1 there and 0 elsewhere (the ``[u >= 1]`` of eq. 1).
"""

from dataclasses import dataclass

import numpy as np
import skimage.transform

from minircnn.data.voc import VOCDataset
from minircnn.ops.boxes import TARGET_MEANS, TARGET_STDS, bbox_encode, box_iou, flip_boxes


@dataclass(frozen=True)
class SamplerConfig:
    """Mini-batch settings; comments give the paper's values."""

    images_per_batch: int = 2  # N (paper: 2)
    rois_per_batch: int = 128  # R (paper: 128, i.e. 64 per image)
    fg_fraction: float = 0.25  # paper: 25% foreground
    fg_iou: float = 0.5  # paper: foreground if IoU >= 0.5
    bg_iou_lo: float = 0.1  # paper: background if IoU in [0.1, 0.5)
    flip: bool = True  # paper: horizontal flip with probability 0.5
    short_side: int = 192  # paper: 600 px (single-scale training); also the test scale
    max_side: int = 320  # paper: 1000 px
    # multi-scale training (section 5.2): each time an image is sampled, a random shorter
    # side from these (the longer side capped in proportion); empty = short_side only
    train_scales: tuple[int, ...] = ()


@dataclass
class MiniBatch:
    """images [N, 3, H, W] float32 (zero-padded to a common size); rois [R, 5] float32
    (batch_index, x1, y1, x2, y2) in scaled-image pixels; labels int64 [R] (0 =
    background); bbox_targets, bbox_weights float32 [R, 4(K+1)]."""

    images: np.ndarray
    rois: np.ndarray
    labels: np.ndarray
    bbox_targets: np.ndarray
    bbox_weights: np.ndarray


def pixel_statistics(dataset: VOCDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel RGB mean and standard deviation over the images of ``dataset``
    (float32 [3] each, 0..255 scale)."""
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for i in range(len(dataset)):
        pixels = dataset.load_image(i).reshape(-1, 3).astype(np.float64)
        total += pixels.sum(axis=0)
        total_sq += (pixels**2).sum(axis=0)
        count += len(pixels)
    mean = total / count
    return mean.astype(np.float32), np.sqrt(total_sq / count - mean**2).astype(np.float32)


def image_scale(height: int, width: int, short_side: int, max_side: int) -> float:
    """Factor that brings the shorter side to ``short_side`` unless the longer side would
    exceed ``max_side`` (section 2.3 / 5.2: single scale 600, cap 1000)."""
    scale = short_side / min(height, width)
    return min(scale, max_side / max(height, width))


def prepare_image(image: np.ndarray, mean, std, scale: float) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> network input float32 [3, round(H*s), round(W*s)]: rescaled
    (bilinear), per-channel mean subtracted and divided by the standard deviation."""
    height, width = image.shape[:2]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = image.astype(np.float32)
    if size != (height, width):
        resized = skimage.transform.resize(
            resized, size, order=1, preserve_range=True, anti_aliasing=False
        )
    normalised = (resized - mean) / std
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)  # HWC -> CHW


def sample_rois(max_iou, n_rois, config: SamplerConfig, rng: np.random.Generator):
    """Choose ``n_rois`` candidate indices from each candidate's best IoU with the ground
    truth: up to ``fg_fraction`` foreground (IoU >= fg_iou), the rest background (IoU in
    [bg_iou_lo, fg_iou)).

    When either kind runs short the batch is filled from what exists: more foreground,
    then background below ``bg_iou_lo``, then repeats. Returns (indices int64 [n_rois],
    is_foreground bool [n_rois]).
    """
    fg = np.flatnonzero(max_iou >= config.fg_iou)
    bg = np.flatnonzero((max_iou >= config.bg_iou_lo) & (max_iou < config.fg_iou))
    low = np.flatnonzero(max_iou < config.bg_iou_lo)
    fg, bg, low = rng.permutation(fg), rng.permutation(bg), rng.permutation(low)
    n_fg = min(len(fg), round(config.fg_fraction * n_rois))
    n_bg = min(len(bg), n_rois - n_fg)
    chosen = [fg[:n_fg], bg[:n_bg]]
    short = n_rois - n_fg - n_bg
    for pool in (fg[n_fg:], low):  # fill from what exists, foreground first
        take = pool[:short]
        chosen.append(take)
        short -= len(take)
    keep = np.concatenate(chosen).astype(np.int64)
    if short > 0:  # fewer candidates than RoIs wanted: repeat some
        keep = np.concatenate([keep, rng.choice(keep, short)])
    return keep, max_iou[keep] >= config.fg_iou


class HierarchicalSampler:
    """Mini-batches of N images x R/N RoIs from a dataset and its proposals.

    Per image, the candidates are its proposals plus its ground-truth boxes (so every
    image has foreground), and each candidate's best IoU and matched ground truth are
    computed once. Prepared images are cached in memory.
    """

    def __init__(
        self,
        dataset: VOCDataset,
        proposals,
        config: SamplerConfig,
        pixel_mean,
        pixel_std,
        rng: np.random.Generator,
    ) -> None:
        if len(proposals) != len(dataset):
            raise ValueError(f"{len(proposals)} proposal sets for {len(dataset)} images")
        self.dataset, self.config, self.rng = dataset, config, rng
        self.mean, self.std = np.asarray(pixel_mean), np.asarray(pixel_std)
        self.num_classes = dataset.num_classes
        self.candidates, self.max_iou, self.matched = [], [], []
        for item, boxes in zip(dataset, proposals, strict=True):
            cand = np.vstack([item.boxes, boxes]).astype(np.float32)
            if len(item.boxes):
                iou = box_iou(cand, item.boxes)  # [P+G, G]
                self.max_iou.append(iou.max(axis=1))
                self.matched.append(iou.argmax(axis=1))
            else:
                self.max_iou.append(np.zeros(len(cand)))
                self.matched.append(np.zeros(len(cand), dtype=np.int64))
            self.candidates.append(cand)
        self._images: dict[tuple[int, int], tuple[np.ndarray, float]] = {}

    def epoch(self) -> list[np.ndarray]:
        """One pass over the images in random order, in groups of N."""
        n = self.config.images_per_batch
        order = self.rng.permutation(len(self.dataset))
        return [order[i : i + n] for i in range(0, len(order) - n + 1, n)]

    def image(self, i: int, short_side: int | None = None) -> tuple[np.ndarray, float]:
        """Prepared network input [3, H', W'] of image i and its scale factor (cached), at
        ``short_side`` (default: the config's)."""
        c = self.config
        short = short_side or c.short_side
        if (i, short) not in self._images:
            item = self.dataset[i]
            s = image_scale(item.height, item.width, short, c.max_side * short / c.short_side)
            prepared = prepare_image(self.dataset.load_image(i), self.mean, self.std, s)
            self._images[i, short] = (prepared, s)
        return self._images[i, short]

    def batch(self, indices) -> MiniBatch:
        """Sample R/N RoIs from each of the images ``indices`` and assemble the batch."""
        c, k1 = self.config, self.num_classes + 1
        per_image = c.rois_per_batch // len(indices)
        images, rois, labels, targets, weights = [], [], [], [], []
        for b, i in enumerate(indices):
            item = self.dataset[i]
            scales = c.train_scales or (c.short_side,)
            image, scale = self.image(i, scales[int(self.rng.integers(len(scales)))])
            keep, is_fg = sample_rois(self.max_iou[i], per_image, c, self.rng)
            boxes = self.candidates[i][keep]
            lab = np.zeros(len(keep), dtype=np.int64)  # 0 = background
            gt = boxes  # regression targets only matter for foreground rows
            if len(item.boxes):
                gt = item.boxes[self.matched[i][keep]]
                lab[is_fg] = item.labels[self.matched[i][keep][is_fg]]
            t = np.zeros((len(keep), 4 * k1), dtype=np.float32)
            w = np.zeros_like(t)
            if c.flip and self.rng.random() < 0.5:
                image = image[:, :, ::-1]
                boxes, gt = flip_boxes(boxes, item.width), flip_boxes(gt, item.width)
            deltas = bbox_encode(boxes, gt, TARGET_MEANS, TARGET_STDS)  # [n, 4]
            for j in np.flatnonzero(is_fg):
                t[j, 4 * lab[j] : 4 * lab[j] + 4] = deltas[j]
                w[j, 4 * lab[j] : 4 * lab[j] + 4] = 1.0
            images.append(image)
            rois.append(np.column_stack([np.full(len(keep), b), boxes * scale]))
            labels.append(lab)
            targets.append(t)
            weights.append(w)
        height = max(im.shape[1] for im in images)
        width = max(im.shape[2] for im in images)
        batch = np.zeros((len(images), 3, height, width), dtype=np.float32)  # 0 = the mean
        for b, im in enumerate(images):
            batch[b, :, : im.shape[1], : im.shape[2]] = im
        return MiniBatch(
            batch,
            np.concatenate(rois).astype(np.float32),
            np.concatenate(labels).astype(np.int64),
            np.concatenate(targets),
            np.concatenate(weights),
        )
