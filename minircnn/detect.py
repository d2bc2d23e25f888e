"""Detection with a trained Fast R-CNN (section 3): one conv pass, then every proposal.

    python -m minircnn.detect --checkpoint runs/tiny/checkpoint.npz IMAGE... [--out DIR]

For each image: scale it, compute the feature map once, RoI-pool all proposals, score
them (softmax over K+1 classes) and regress class-specific boxes; then, per class, drop
scores below a threshold and run NMS (IoU 0.3, as R-CNN and Fast R-CNN do), and keep
the best ``max_per_image`` over all classes.

Multi-scale testing (section 5.2) runs the image pyramid and pools each RoI at the scale
where its scaled area is closest to the network's preferred RoI area (224^2 for VGG16;
here the pre-training crop size squared).
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minircnn.data.sampling import image_scale, prepare_image
from minircnn.model import FastRCNN, load_model
from minircnn.ops.boxes import bbox_decode, clip_boxes
from minircnn.ops.nms import batched_nms


@dataclass
class Detections:
    """boxes float32 [D, 4] (0-based inclusive, original image pixels), scores float32
    [D], labels int64 [D] in 1..K; sorted by descending score."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def load_detector(checkpoint: str | Path) -> FastRCNN:
    """A FastRCNN in eval mode with ``meta`` (classes, pixel statistics, box-target
    normalisation, scales) from its checkpoint."""
    model, header = load_model(checkpoint)
    if not isinstance(model, FastRCNN):
        raise ValueError(f"{checkpoint}: a {header['kind']} checkpoint, not a Fast R-CNN one")
    model.meta = header
    return model.eval()


def detect(
    model: FastRCNN,
    image: np.ndarray,
    proposals: np.ndarray,
    score_threshold=0.05,
    nms_threshold=0.3,
    max_per_image=100,
    scales=None,
) -> Detections:
    """Detect objects in ``image`` (uint8 RGB [H, W, 3]) given ``proposals`` [P, 4].

    ``scales``: shorter-side lengths for multi-scale testing (None: the single training
    scale). ``model.meta`` must hold pixel_mean/std, bbox_means/stds and sampler settings.
    """
    scores, boxes = score_proposals(model, image, proposals, scales)
    with model.timer("nms"):
        return postprocess(scores, boxes, score_threshold, nms_threshold, max_per_image)


def score_proposals(model: FastRCNN, image, proposals, scales=None):
    """Class probabilities [P, K+1] and class-specific boxes [P, 4(K+1)] (clipped, in
    original pixels) for every proposal."""
    meta, timer = model.meta, model.timer
    model.eval()
    height, width = image.shape[:2]
    proposals = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    train_short, train_max = meta["sampler"]["short_side"], meta["sampler"]["max_side"]
    short_sides = scales or [train_short]
    # the longer-side cap grows with the scale, as the paper's pyramid caps at 2000 px
    factors = [image_scale(height, width, s, train_max * s / train_short) for s in short_sides]
    # section 5.2: pool each RoI at the scale where its area is closest to the preferred one
    areas = (proposals[:, 2] - proposals[:, 0] + 1) * (proposals[:, 3] - proposals[:, 1] + 1)
    target = model.config.crop_size**2
    level = np.argmin(np.abs(areas[:, None] * np.square(factors)[None, :] - target), axis=1)
    k1 = model.config.num_classes + 1
    cls_score = np.zeros((len(proposals), k1), dtype=np.float32)
    bbox_pred = np.zeros((len(proposals), 4 * k1), dtype=np.float32)
    for lv, s in enumerate(factors):
        idx = np.flatnonzero(level == lv)
        if len(idx) == 0:
            continue
        with timer("prepare"):
            x = prepare_image(image, np.array(meta["pixel_mean"]), np.array(meta["pixel_std"]), s)
        features = model.features(x[None])
        rois = np.column_stack([np.zeros(len(idx)), proposals[idx] * s]).astype(np.float32)
        cls_score[idx], bbox_pred[idx] = model.head_forward(features, rois)
    with timer("decode"):
        return decode_outputs(model, cls_score, bbox_pred, proposals, height, width)


def decode_outputs(model, cls_score, bbox_pred, proposals, height, width):
    """Network outputs -> (softmax probabilities [P, K+1], boxes [P, 4(K+1)] decoded with
    the checkpoint's target normalisation and clipped to the image)."""
    z = cls_score - cls_score.max(axis=1, keepdims=True)  # stable softmax
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    boxes = bbox_decode(proposals, bbox_pred, model.meta["bbox_means"], model.meta["bbox_stds"])
    return probs, clip_boxes(boxes, height, width)


def postprocess(scores, boxes, score_threshold=0.05, nms_threshold=0.3, max_per_image=100):
    """Per-class thresholding and NMS over scores [P, K+1] / boxes [P, 4(K+1)], then the
    best ``max_per_image`` detections over all classes."""
    rows, cols = np.nonzero(scores[:, 1:] > score_threshold)  # class 0 is background
    labels = cols + 1
    cand_boxes = boxes.reshape(len(boxes), -1, 4)[rows, labels]  # [D, 4]
    cand_scores = scores[rows, labels]
    keep = batched_nms(cand_boxes, cand_scores, labels, nms_threshold)[:max_per_image]
    return Detections(
        cand_boxes[keep].astype(np.float32),
        cand_scores[keep].astype(np.float32),
        labels[keep].astype(np.int64),
    )


def main(argv: list[str] | None = None) -> None:
    from minircnn.data.voc import load_image
    from minircnn.proposals.selective_search import selective_search
    from minircnn.viz import draw_boxes, plt, save_figure

    parser = argparse.ArgumentParser(
        prog="python -m minircnn.detect",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", default="runs/detect", help="folder for the drawn images")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="drawn if above")
    args = parser.parse_args(argv)
    model = load_detector(args.checkpoint)
    for path in args.images:
        image = load_image(path)
        dets = detect(model, image, selective_search(image))
        show = dets.scores >= args.score_threshold
        fig, ax = plt.subplots(figsize=(5, 5 * image.shape[0] / image.shape[1]))
        draw_boxes(
            ax,
            image,
            dets.boxes[show],
            dets.labels[show],
            model.meta["classes"],
            scores=dets.scores[show],
        )
        fig.tight_layout()
        out = save_figure(fig, Path(args.out) / (Path(path).stem + "_detections.png"))
        print(f"{path}: {int(show.sum())} detections -> {out}")


if __name__ == "__main__":
    main()
