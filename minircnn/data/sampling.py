"""Hierarchical mini-batch sampling (Fast R-CNN section 2.3, "Mini-batch sampling").

R-CNN and SPPnet drew each training RoI from a different image, so every RoI paid for a
forward pass over its own (huge) receptive field. Fast R-CNN samples hierarchically: first
N images, then R/N RoIs from each, so the RoIs of one image share the conv computation
(N = 2, R = 128). A mini-batch is built in named steps, as fast-rcnn's ``minibatch.py``:

1. ``sample_rois``: per image, up to 25% foreground (IoU >= 0.5 with a ground-truth box)
   and the rest background (best IoU in [0.1, 0.5)). When an image has fewer candidates
   of a kind, it contributes fewer RoIs, as the paper's Caffe code does: an RoI is never
   repeated, and an RoI below IoU 0.1 is never used (the paper's lower bound is a
   heuristic for hard-example mining: such RoIs are easy background).
2. ``roi_labels``: the class of the matched ground truth for foreground, 0 for background.
3. ``class_specific_targets``: regression targets (R-CNN deltas, normalised) in the four
   columns of the RoI's class, with weights 1 there and 0 elsewhere: the ``[u >= 1]`` of
   eq. 1.

Images are flipped horizontally with probability 0.5 and rescaled by ``Preprocessing``.
"""

import warnings
from dataclasses import dataclass, field

import numpy as np

from minircnn.cli import InputError
from minircnn.data.copy_paste import jittered_candidates, paste_objects, resample_mask
from minircnn.data.image import Preprocessing, pad_batch
from minircnn.data.voc import VOCDataset
from minircnn.ops.boxes import bbox_encode, box_iou, flip_boxes


@dataclass(frozen=True)
class SamplerConfig:
    """Mini-batch settings; comments give the paper's values."""

    images_per_batch: int = 2  # N (paper: 2)
    rois_per_batch: int = 128  # R (paper: 128, i.e. 64 per image)
    fg_fraction: float = 0.25  # paper: 25% foreground
    fg_iou: float = 0.5  # paper: foreground if IoU >= 0.5
    bg_iou_lo: float = 0.1  # paper: background if IoU in [0.1, 0.5)
    flip: bool = True  # paper: horizontal flip with probability 0.5
    # multi-scale training (section 5.2): each time an image is sampled, a random shorter
    # side from these; empty = the single scale of Preprocessing.short_side
    train_scales: tuple[int, ...] = ()
    # copy-paste augmentation (data/copy_paste.py; not in the paper, which flips only): the
    # probability that a training image gets 1..copy_paste_objects objects of other
    # training images pasted in, where the training images have object masks
    # (SegmentationObject; without any, off). Chosen on val: 1.0 and 3 objects raised mAP@0.5
    # from 0.806 to 0.845 (mean of 3 seeds; 0.5 and 2 objects: +0.02-0.04); 0 = off
    copy_paste: float = 1.0
    copy_paste_objects: int = 3
    # a pasted object may hide up to 1 - copy_paste_keep of an annotated object's pixels
    # (its box then shrinks to what is left in view); 1: it hides none, though its box
    # may overlap the object's. Chosen on val (copy_paste.py): mAP@0.5 0.890 with the
    # former rule (pasted boxes clear of every annotated box), 0.902 with 0.5
    copy_paste_keep: float = 0.5
    # Faster R-CNN (RoIs sampled from the RPN's proposals, ``batch_from_proposals``):
    # jittered copies of each ground-truth box (``copy_paste.jitter_boxes``) join the
    # candidates beside the ground truth itself, which py-faster-rcnn adds; not in the
    # paper. The RPN's proposals cover the objects less well than selective search's
    # (least of all early in training, when the RPN has learnt little), so these give the
    # head more, and more varied, foreground RoIs to learn from. Chosen on val (trained on
    # train for 800 iterations, 3 seeds, tested with 1000 proposals): mAP@0.5 0.761
    # without, 0.794 with 30, 0.793 with 60; 0 = off. Unused with selective search's
    # proposals.
    jittered_per_gt: int = 30


@dataclass
class MiniBatch:
    """images [N, 3, H, W] float32 (zero-padded to a common size); rois [R, 5] float32
    (batch_index, x1, y1, x2, y2) in scaled-image pixels; labels int64 [R] (0 =
    background); bbox_targets, bbox_weights float32 [R, 4(K+1)]. R may be below
    ``rois_per_batch`` when an image has too few candidates."""

    images: np.ndarray
    rois: np.ndarray
    labels: np.ndarray
    bbox_targets: np.ndarray
    bbox_weights: np.ndarray


def sample_rois(max_iou: np.ndarray, n_rois: int, config: SamplerConfig, rng):
    """Choose up to ``n_rois`` distinct candidates from each candidate's best IoU with the
    ground truth ``max_iou`` float [M]: up to ``fg_fraction * n_rois`` foreground (IoU >=
    fg_iou), then background (IoU in [bg_iou_lo, fg_iou)) for the rest.

    Returns (indices int64 [n], is_foreground bool [n]) with n <= n_rois, foreground first.
    """
    fg = np.flatnonzero(max_iou >= config.fg_iou)
    bg = np.flatnonzero((max_iou >= config.bg_iou_lo) & (max_iou < config.fg_iou))
    n_fg = min(len(fg), round(config.fg_fraction * n_rois))
    n_bg = min(len(bg), n_rois - n_fg)
    fg = rng.choice(fg, n_fg, replace=False)
    bg = rng.choice(bg, n_bg, replace=False)
    keep = np.concatenate([fg, bg]).astype(np.int64)
    return keep, np.arange(len(keep)) < n_fg


def roi_labels(matched_labels: np.ndarray, is_foreground: np.ndarray) -> np.ndarray:
    """int64 [R]: the matched ground truth's class (1..K) for foreground RoIs, 0 for
    background."""
    return np.where(is_foreground, matched_labels, 0).astype(np.int64)


def class_specific_targets(
    rois: np.ndarray, gt_boxes: np.ndarray, labels: np.ndarray, num_classes: int, means, stds
):
    """Regression targets and weights for rois [R, 4] matched to gt_boxes [R, 4] with
    labels int64 [R] (section 2.3): each foreground row holds its normalised R-CNN deltas
    (``bbox_encode``) in the 4 columns of its class, weights 1 there; background rows and
    all other columns are 0. Returns (targets, weights), float32 [R, 4(K+1)] each."""
    targets = np.zeros((len(rois), 4 * (num_classes + 1)), dtype=np.float32)
    weights = np.zeros_like(targets)
    rows = np.flatnonzero(labels > 0)
    cols = 4 * labels[rows, None] + np.arange(4)  # [F, 4]: the class's 4 columns
    targets[rows[:, None], cols] = bbox_encode(rois[rows], gt_boxes[rows], means, stds)
    weights[rows[:, None], cols] = 1.0
    return targets, weights


class HierarchicalSampler:
    """Mini-batches of N images x R/N RoIs from a dataset and its proposals.

    Per image, the candidates are its proposals (None: none yet, for proposals made during
    training, ``batch_from_proposals``, which adds jittered copies of the ground truth)
    plus its ground-truth boxes (so every image with an object has foreground), and each
    candidate's best IoU and matched ground truth are computed once (and again for a view
    with pasted objects). An image with no usable candidate (no object and no proposal in
    the background range) can teach nothing: it is left out with a warning naming it.
    Prepared images are cached in memory.
    """

    def __init__(
        self,
        dataset: VOCDataset,
        proposals,
        config: SamplerConfig,
        preprocessing: Preprocessing,
        rng: np.random.Generator,
    ) -> None:
        if proposals is None:  # proposals come during training (RPN): ground truth only
            proposals = [np.zeros((0, 4), np.float32)] * len(dataset)
        if len(proposals) != len(dataset):
            raise ValueError(f"{len(proposals)} proposal sets for {len(dataset)} images")
        self.dataset, self.config, self.rng = dataset, config, rng
        self.preprocessing = preprocessing
        self.num_classes = dataset.num_classes
        self.candidates, self.max_iou, self.matched = [], [], []
        for item, boxes in zip(dataset, proposals, strict=True):
            cand = np.vstack([item.boxes, boxes]).astype(np.float32)
            cand, max_iou, matched = _match(cand, item.boxes)
            self.candidates.append(cand)
            self.max_iou.append(max_iou)  # [P+G]
            self.matched.append(matched)  # [P+G], index into item.boxes
        usable = [bool(np.any(m >= config.bg_iou_lo)) for m in self.max_iou]
        self.usable = np.flatnonzero(usable)
        unusable = [dataset[i].image_id for i in np.flatnonzero(~np.array(usable, bool))]
        if unusable:
            warnings.warn(
                f"{dataset.root}: {len(unusable)} {dataset.split} image(s) without objects or "
                f"background proposals are not used for training: {', '.join(unusable[:10])}"
                + (" ..." if len(unusable) > 10 else ""),
                stacklevel=2,
            )
        if len(self.usable) < config.images_per_batch:  # the data set's fault: InputError
            raise InputError(
                f"{dataset.root}: only {len(self.usable)} usable training image(s) in "
                f"{dataset.split}, a mini-batch needs {config.images_per_batch}"
            )
        self._images: dict[tuple[int, int, bool], tuple[np.ndarray, float]] = {}
        self.masks, self.paste_bank = {}, []  # copy-paste: (image, object) pairs
        if config.copy_paste > 0:
            self._load_masks()

    def epoch(self) -> list[np.ndarray]:
        """One pass over the usable images in random order, in groups of N."""
        n = self.config.images_per_batch
        order = self.rng.permutation(self.usable)
        return [order[i : i + n] for i in range(0, len(order) - n + 1, n)]

    def image(self, i: int, short_side: int | None = None, flip: bool = False):
        """Network input [3, H', W'] of image i and its scale factor (cached), at
        ``short_side`` (default: the training scale), mirrored if ``flip``."""
        key = (i, short_side or self.preprocessing.short_side, flip)
        if key not in self._images:
            item = self.dataset[i]
            scale = self.preprocessing.scale(item.height, item.width, key[1])
            x = self.preprocessing.network_input(self.dataset.load_image(i), scale, flip)
            self._images[key] = (x, scale)
        return self._images[key]

    def view(self, i: int) -> "ImageView":
        """Image i as one training step sees it: mirrored with probability 0.5, rescaled to
        a (random, for multi-scale training) shorter side, and, with probability
        ``copy_paste`` (where there are masks), with objects of other images pasted in."""
        c, pre = self.config, self.preprocessing
        scales = c.train_scales or (pre.short_side,)
        flip = c.flip and self.rng.random() < 0.5
        image, scale = self.image(i, scales[int(self.rng.integers(len(scales)))], flip)
        item = self.dataset[i]
        view = ImageView(int(i), image, scale, bool(flip), item.boxes, item.labels)
        if self.paste_bank and self.rng.random() < c.copy_paste:
            view = self._paste(view)
        return view

    def gt_boxes(self, view: "ImageView") -> np.ndarray:
        """The ground-truth boxes ``[G, 4]`` of a view (pasted objects included) in its
        input pixels (mirrored if the view is, then scaled): what the RPN's anchor targets
        are computed against."""
        width = self.dataset[view.index].width
        boxes = flip_boxes(view.boxes, width) if view.flip else view.boxes
        return (boxes * view.scale).astype(np.float32).reshape(-1, 4)

    def to_original(self, view: "ImageView", boxes: np.ndarray) -> np.ndarray:
        """Boxes ``[B, 4]`` in a view's input pixels -> the image's own pixels (unscaled,
        unmirrored): the inverse of ``gt_boxes``'s mapping."""
        boxes = boxes / view.scale
        return flip_boxes(boxes, self.dataset[view.index].width) if view.flip else boxes

    def batch(self, indices) -> MiniBatch:
        """Sample R/N RoIs from each of the images ``indices`` (among their selective-search
        proposals and ground truth, and boxes around pasted objects) and assemble the
        batch."""
        views, parts = [], []
        for b, i in enumerate(indices):
            views.append(self.view(i))
            parts.append(self._sample(b, views[-1], *self._candidates(views[-1]), len(indices)))
        return _assemble(views, parts)

    def batch_from_proposals(self, views: list["ImageView"], rois: np.ndarray) -> MiniBatch:
        """The same sampling on proposals made during training (Faster R-CNN's RPN):
        ``rois [P, 5]`` (batch index, box in the views' input pixels). Each view's
        candidates are its ground truth (pasted objects included), ``jittered_per_gt``
        jittered copies of each of its boxes (these cover the pasted objects too, so the
        view's own ``jittered`` boxes are not used here), and its proposals mapped back to
        original pixels (unscaled, unmirrored)."""
        parts = []
        for b, view in enumerate(views):
            boxes = self.to_original(view, rois[rois[:, 0] == b, 1:])
            image = self.dataset[view.index]
            jittered = jittered_candidates(
                view.boxes, self.config.jittered_per_gt, image.height, image.width, self.rng
            )
            found = np.vstack([view.boxes, jittered, boxes]).astype(np.float32)
            parts.append(self._sample(b, view, *_match(found, view.boxes), len(views)))
        return _assemble(views, parts)

    def _candidates(self, view: "ImageView") -> tuple:
        """A view's candidate RoIs (original pixels), each one's best IoU with the view's
        ground truth and the index of that box: precomputed for an image as it is; after
        a paste, its proposals and the jittered boxes around the pasted objects matched
        to the grown ground truth."""
        i = view.index
        if len(view.boxes) == len(self.dataset[i].boxes):  # nothing pasted
            return self.candidates[i], self.max_iou[i], self.matched[i]
        proposals = self.candidates[i][len(self.dataset[i].boxes) :]
        found = np.vstack([view.boxes, proposals, view.jittered]).astype(np.float32)
        return _match(found, view.boxes)

    def _sample(self, b, view, candidates, max_iou, matched, n_images) -> tuple:
        """Image ``b`` of a batch: RoIs sampled among ``candidates [M, 4]`` (original
        pixels) matched to the view's ground truth -> (rois [n, 5] in input pixels, labels,
        targets, weights)."""
        c, pre = self.config, self.preprocessing
        keep, is_fg = sample_rois(max_iou, c.rois_per_batch // n_images, c, self.rng)
        boxes = candidates[keep]  # [n, 4], original pixels
        matched = matched[keep]
        has_gt = len(view.boxes) > 0
        gt = view.boxes[matched] if has_gt else boxes  # only fg rows are used
        lab = roi_labels(view.labels[matched] if has_gt else 0, is_fg)
        if view.flip:  # the image was mirrored in original pixels, so are its boxes
            width = self.dataset[view.index].width
            boxes, gt = flip_boxes(boxes, width), flip_boxes(gt, width)
        t, w = class_specific_targets(
            boxes, gt, lab, self.num_classes, pre.target_means, pre.target_stds
        )
        rois = np.column_stack([np.full(len(keep), b), boxes * view.scale])
        return rois, lab, t, w

    def _load_masks(self) -> None:
        """The objects copy-paste may cut out: every object of a usable image whose mask
        has pixels (difficult ones are not in the items). None at all: no copy-paste."""
        for i in self.usable:
            masks = self.dataset.load_masks(int(i))
            if masks is None:
                continue
            self.masks[int(i)] = masks
            self.paste_bank += [(int(i), k) for k in range(len(masks)) if masks[k].any()]

    def _paste(self, view: "ImageView") -> "ImageView":
        """``view`` with 1..copy_paste_objects objects of other training images pasted in
        (``copy_paste.paste_objects``): a new view whose ground truth includes them, with
        the boxes of the objects they partly hide shrunk to what is left in view, and
        whose ``jittered`` boxes surround them (original pixels)."""
        objects = []
        for _ in range(int(self.rng.integers(1, self.config.copy_paste_objects + 1))):
            j, k = self.paste_bank[int(self.rng.integers(len(self.paste_bank)))]
            if j == view.index:  # an object of this very image: not a new example
                continue
            source, scale = self.image(j)  # unmirrored, at the training scale
            box = self.dataset[j].boxes[k]
            # the box's pixels at that scale: [x1, x2) x [y1, y2), as round(edge * scale)
            x1, y1 = np.round(box[:2] * scale).astype(int)
            x2, y2 = np.minimum(np.round((box[2:] + 1) * scale), source.shape[:0:-1]).astype(int)
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            mask = resample_mask(self.masks[j][k], box, (y2 - y1, x2 - x1))
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if len(rows) == 0:
                continue
            tight = np.s_[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # the object
            patch = source[:, y1:y2, x1:x2][tight]
            objects.append((patch, mask[tight[1:]], self.dataset[j].labels[k]))
        image = view.image.copy()  # the cached input stays as it is
        visible, pixel_rows, pixel_cols = self._objects_in_view(view, image.shape[1:])
        # without masks, no annotated pixel is covered: a box is not its object's outline
        keep = self.config.copy_paste_keep if view.index in self.masks else 1.0
        pasted = paste_objects(image, visible, objects, self.rng, keep)
        own = view.boxes.copy()
        for g in np.flatnonzero(pasted.hidden):  # partly hidden now
            own[g] = _box_in_view(visible[g], view.flip, pixel_rows, pixel_cols, own[g])
        boxes = np.vstack([own, self.to_original(view, pasted.boxes)])
        labels = np.concatenate([view.labels, pasted.labels])
        jittered = self.to_original(view, pasted.jittered).astype(np.float32)
        return ImageView(
            view.index, image, view.scale, view.flip, boxes.astype(np.float32), labels, jittered
        )

    def _objects_in_view(self, view: "ImageView", size: tuple[int, int]) -> tuple:
        """The view's annotated objects' pixels on its input grid ``size`` (H', W'): bool
        [G, H', W'] (mirrored if the view is), each input pixel taking the original pixel
        its centre falls in; where the image has no masks, each object's whole box. Also
        that original pixel's row [H'] and column [W'] (of the unmirrored image)."""
        item = self.dataset[view.index]
        rows = np.minimum((np.arange(size[0]) + 0.5) / view.scale, item.height - 1).astype(int)
        cols = np.minimum((np.arange(size[1]) + 0.5) / view.scale, item.width - 1).astype(int)
        if view.index in self.masks:
            masks = self.masks[view.index]
        else:
            masks = np.zeros((len(item.boxes), item.height, item.width), bool)
            for mask, (x1, y1, x2, y2) in zip(masks, item.boxes.astype(int), strict=True):
                mask[y1 : y2 + 1, x1 : x2 + 1] = True
        visible = masks[:, rows][:, :, cols]
        return (visible[:, :, ::-1] if view.flip else visible).copy(), rows, cols


def _box_in_view(visible: np.ndarray, flip: bool, rows, cols, box: np.ndarray) -> np.ndarray:
    """The tight box [4] (original pixels, within the object's ``box``) of an object's
    pixels in view, bool [H', W'] on a view's input grid (mirrored if ``flip``); ``rows``
    [H'] and ``cols`` [W'] give each input pixel's original pixel.

    Every side takes the grid's extent, also a side the paste did not reach: on the toy
    set, whose masks fill their boxes, that moves it by a pixel at most; where masks leave
    out a band along the edges (VOC's "void" outline) it would move further."""
    ys, xs = np.nonzero(visible[:, ::-1] if flip else visible)
    seen = np.array([cols[xs.min()], rows[ys.min()], cols[xs.max()], rows[ys.max()]], np.float32)
    shrunk = np.concatenate([np.maximum(box[:2], seen[:2]), np.minimum(box[2:], seen[2:])])
    # a mask that strays outside its box (it can, in real VOC) would invert the box
    return shrunk if (shrunk[2:] >= shrunk[:2]).all() else box


@dataclass
class ImageView:
    """An image as one training step sees it: index into the data set, network input
    ``[3, H', W']`` float32, scale (input over original pixels), whether it is mirrored,
    its ground truth in the image's own pixels (unscaled, unmirrored: boxes float32
    [G, 4], labels int64 [G]; pasted objects included) and the jittered boxes float32
    [J, 4] around pasted objects (J = 0 when nothing was pasted)."""

    index: int
    image: np.ndarray
    scale: float
    flip: bool
    boxes: np.ndarray
    labels: np.ndarray
    jittered: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


def _match(candidates: np.ndarray, gt_boxes: np.ndarray) -> tuple:
    """(candidates [M, 4], each one's best IoU with ``gt_boxes`` [M], the index of that
    ground truth [M]); with no ground truth, IoU 0 everywhere."""
    iou = box_iou(candidates, gt_boxes) if len(gt_boxes) else np.zeros((len(candidates), 1))
    return candidates, iou.max(axis=1), iou.argmax(axis=1)


def _assemble(views: list[ImageView], parts: list[tuple]) -> MiniBatch:
    """Pad the views' images to one size and concatenate their RoIs, labels and targets."""
    rois, labels, targets, weights = zip(*parts, strict=True)
    return MiniBatch(
        pad_batch([v.image for v in views]),
        np.concatenate(rois).astype(np.float32),
        np.concatenate(labels),
        np.concatenate(targets),
        np.concatenate(weights),
    )
