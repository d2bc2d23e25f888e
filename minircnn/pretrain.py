"""Backbone pre-training as a classifier, standing in for ImageNet (section 2.2).

The paper starts from networks pre-trained on ImageNet classification. Nothing can be
downloaded here, so the backbone learns from the training split itself: warped crops of
ground-truth objects (jittered, labelled with their class) and of background regions
(IoU < 0.3 with every object, label 0), ``crop_size x crop_size`` each. Where the data set
has object masks, each object is also cut out along its mask and laid over a region of
another training image, so that the classifier sees its shape on backgrounds it was never
photographed on (copy-paste, as ``data/copy_paste.py`` does for fine-tuning). The trained
``Classifier`` is cached and later converted to Fast R-CNN (``FastRCNN.from_classifier``).
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from minircnn.checkpoint import load_model, save_checkpoint
from minircnn.data.image import Preprocessing, resize_bilinear
from minircnn.data.voc import VOCDataset
from minircnn.layers import SoftmaxCrossEntropy
from minircnn.model import Classifier, ModelConfig
from minircnn.ops.boxes import box_iou
from minircnn.optim import SGD, SGDConfig
from minircnn.progress import ProgressBar


@dataclass(frozen=True)
class PretrainConfig:
    """Classifier pre-training settings."""

    # chosen on val (models trained on train): 400 -> 1200 raised val mAP@0.5 by 0.04-0.06;
    # 2000 gave no more; a higher lr (0.03) did not help
    iterations: int = 1200
    batch_size: int = 32
    lr: float = 0.01
    crops_per_object: int = 4  # jittered crops of each ground-truth box
    background_per_image: int = 4  # crops with IoU < 0.3 to every object
    # crops of each object cut along its mask and laid over another image (where masks
    # exist; 0 = none). Chosen on val: 8 raised mAP@0.5 from 0.845 to 0.856 (mean of 3
    # seeds; stars 0.68 -> 0.71); 4 did about as well
    pasted_per_object: int = 8
    seed: int = 0


def crop_bank(
    dataset: VOCDataset, crop_size: int, preprocessing: Preprocessing, config: PretrainConfig, rng
):
    """All training crops: float32 ``[M, 3, S, S]`` (normalised like network input) and
    int64 labels ``[M]`` (0 = background, 1..K = class)."""
    crops, labels, cutouts = [], [], []
    for i in range(len(dataset)):
        item, image = dataset[i], dataset.load_image(i)
        height, width = image.shape[:2]
        masks = dataset.load_masks(i) if config.pasted_per_object > 0 else None
        for k, (box, label) in enumerate(zip(item.boxes, item.labels, strict=True)):
            for _ in range(config.crops_per_object):
                crops.append(_warp(image, _jitter(box, rng, height, width), crop_size))
                labels.append(label)
            has_pixels = masks is not None and masks[k].any()  # a hidden object has none
            for _ in range(config.pasted_per_object if has_pixels else 0):
                cutouts.append(_cutout(image, masks[k], box, label, crop_size, i, rng))
        for _ in range(config.background_per_image):
            box = _background_box(item.boxes, rng, height, width)
            if box is not None:
                crops.append(_warp(image, box, crop_size))
                labels.append(0)
    for crop, label in _paste_cutouts(dataset, cutouts, crop_size, rng):
        crops.append(crop)
        labels.append(label)
    return preprocessing.normalise(np.stack(crops)), np.array(labels, dtype=np.int64)


def _cutout(image, mask, box, label, crop_size, image_index, rng):
    """An object to paste: a jittered crop of it and of its mask (the alpha, bilinear, so
    edges blend), ``[S, S, 3]`` and ``[S, S, 1]`` float32, with its label, box size (w, h)
    and the index of the image it comes from."""
    height, width = image.shape[:2]
    box = _jitter(box, rng, height, width)
    alpha = _warp(mask[:, :, None].astype(np.float32), box, crop_size)
    size = (box[2] - box[0] + 1, box[3] - box[1] + 1)
    return _warp(image, box, crop_size), alpha, label, size, image_index


def _paste_cutouts(dataset, cutouts, crop_size, rng):
    """Each cutout laid over a region of the same size (clipped to the image) at a random
    place in another training image; yields (crop [S, S, 3], label). Each image is loaded
    once, however many cutouts land on it."""
    n = len(dataset)
    if not cutouts or n < 2:
        return
    # another image than the cutout's own: its index plus 1..n-1, modulo n
    hosts = np.array([(c[4] + rng.integers(1, n)) % n for c in cutouts])
    for j in np.unique(hosts):
        image = dataset.load_image(int(j))
        height, width = image.shape[:2]
        for c in np.flatnonzero(hosts == j):
            crop, alpha, label, (w, h), _ = cutouts[c]
            w, h = min(w, width), min(h, height)
            x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
            background = _warp(image, (x1, y1, x1 + w - 1, y1 + h - 1), crop_size)
            yield alpha * crop + (1 - alpha) * background, label


def pretrain(
    dataset,
    model_config: ModelConfig,
    preprocessing: Preprocessing,
    config: PretrainConfig,
    progress: bool = True,
) -> tuple[Classifier, list[dict]]:
    """Train a Classifier on the crop bank; returns it and per-iteration history."""
    rng = np.random.default_rng(config.seed)
    crops, labels = crop_bank(dataset, model_config.crop_size, preprocessing, config, rng)
    model = Classifier(model_config, rng).train()
    optimizer = SGD(model.params(), SGDConfig(lr=config.lr, steps=(int(0.7 * config.iterations),)))
    loss_fn = SoftmaxCrossEntropy()
    history = []
    bar = ProgressBar(range(config.iterations), desc="pre-train", enabled=progress)
    batch_size = min(config.batch_size, len(crops))  # a tiny data set has fewer crops
    for it in bar:
        pick = rng.choice(len(crops), batch_size, replace=False)
        batch = crops[pick]
        flip = rng.random(len(pick)) < 0.5
        batch[flip] = batch[flip, :, :, ::-1]  # horizontal flip
        scores = model.forward(batch)
        loss = loss_fn.forward(scores, labels[pick])
        if not np.isfinite(loss):
            raise FloatingPointError(f"pre-training loss is {loss} at iteration {it}")
        model.backward(loss_fn.backward())
        optimizer.step(model.grads(), it)
        acc = float(np.mean(scores.argmax(axis=1) == labels[pick]))
        history.append({"iteration": it, "loss": loss, "accuracy": acc})
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.2f}")
    return model.eval(), history


def load_or_pretrain(
    dataset,
    model_config: ModelConfig,
    preprocessing: Preprocessing,
    config: PretrainConfig,
    cache_dir="data/pretrained",
    progress=True,
) -> Classifier:
    """The cached classifier for these settings and images, or a newly trained one."""
    key = json.dumps(
        {
            "model": asdict(model_config),
            "pretrain": asdict(config),
            "preprocessing": asdict(preprocessing),
            "root": str(dataset.root),
            "split": dataset.split,
            "ids": [it.image_id for it in dataset],
            # masks added to a data set later change the crop bank: a new classifier
            "masks": dataset.with_masks() if config.pasted_per_object > 0 else [],
        },
        sort_keys=True,
    )
    path = Path(cache_dir) / f"classifier_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if path.exists():
        model, _ = load_model(path, expected_config=model_config)
        return model.eval()
    model, history = pretrain(dataset, model_config, preprocessing, config, progress)
    tail = history[-20:]
    header = {
        "classes": list(dataset.classes),
        "preprocessing": asdict(preprocessing),
        "final_loss": float(np.mean([h["loss"] for h in tail])),
        "final_accuracy": float(np.mean([h["accuracy"] for h in tail])),
    }
    save_checkpoint(path, model, header)
    return model


def _jitter(box, rng, height, width):
    """A box shifted and rescaled by up to ~10% of its size, clipped to the image."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1 + 1, y2 - y1 + 1
    cx, cy = x1 + w / 2 + rng.uniform(-0.1, 0.1) * w, y1 + h / 2 + rng.uniform(-0.1, 0.1) * h
    w, h = w * rng.uniform(0.9, 1.1), h * rng.uniform(0.9, 1.1)
    return np.clip(
        [cx - w / 2, cy - h / 2, cx + w / 2 - 1, cy + h / 2 - 1],
        0,
        [width - 1, height - 1, width - 1, height - 1],
    )


def _background_box(gt, rng, height, width, tries=20):
    """A random box of 16 px to half the image with IoU < 0.3 to every object, or None."""
    for _ in range(tries):
        w = rng.uniform(16, max(17, width / 2))
        h = rng.uniform(16, max(17, height / 2))
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        box = np.array([[x1, y1, x1 + w - 1, y1 + h - 1]])
        if len(gt) == 0 or box_iou(box, gt).max() < 0.3:
            return box[0]
    return None


def _warp(image, box, size):
    """Crop a box (0-based inclusive, float) and warp it to ``size x size`` (bilinear)."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    patch = image[y1 : max(y2, y1) + 1, x1 : max(x2, x1) + 1].astype(np.float32)
    return resize_bilinear(patch, (size, size))
