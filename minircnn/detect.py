"""Detection with a trained Fast R-CNN (section 3): one conv pass, then every proposal.

    python -m minircnn.detect --checkpoint runs/tiny/checkpoint.npz IMAGE... [--out DIR]

A Faster R-CNN checkpoint (``train --proposals rpn``) makes its proposals with its own
RPN on the same conv pass; a Fast R-CNN one runs selective search (cached) first.

For each image: scale it, compute the feature map once, RoI-pool all proposals, score
them (softmax over K+1 classes) and regress class-specific boxes; then, per class, drop
scores below a threshold and run NMS (IoU 0.3, as R-CNN and Fast R-CNN do), and keep
the best ``max_per_image`` over all classes.

Multi-scale testing (section 5.2) runs the image pyramid and pools each RoI at the scale
where its scaled area is closest to the network's preferred RoI area (224^2 for VGG16;
here the pre-training crop size squared).

Test-time augmentation (``tta_options``, what ``python -m minircnn.evaluate`` and
``python -m minircnn.detect`` do by default with selective-search proposals): the proposals
are scored at two scales (the training one and 1.5 times it, each RoI pooled at one of
them as above), and again on the mirrored image (``flip``: training flips too), the two
views' probabilities and boxes averaged; then box voting (``vote``, below). Neither paper
tests this way: ``detect`` itself runs the paper's single pass unless asked. On val
(models trained on train, seeds 0 to 4) it raised mAP@0.5 from 0.856 to 0.879 (AP on
small objects 0.850 to 0.900); it takes 3 to 4 times the single pass's time per image
(on the test split 52.6 ms against 15.8, selective search not included).

Refinement (``refine``, on by default for a Faster R-CNN): iterative localisation and box
voting, after Gidaris and Komodakis (ICCV 2015, section 5), which neither Fast nor Faster
R-CNN does. The head scores the regressed box of each proposal whose best class reaches
0.5 once more, on the same feature map (``second_pass``), and after NMS each detection's
box becomes the score-weighted mean of its class's candidate boxes (those above the score
threshold) that overlap it by IoU >= 0.5 (``box_voting``); voted boxes of one class can
then overlap by a little more than the NMS threshold. The RPN's proposals are looser than
selective search's, and its model's boxes with them: on val (models trained on train,
seeds 0 to 4) refinement raised Faster R-CNN's mAP@0.5 from 0.837 to 0.847 and its
mAP@[.5:.95] from 0.488 to 0.566; the selective-search model, whose proposals are tight,
did not gain (seeds 0, 1, 2: mAP@0.5 0.848 without, 0.846 with, when every box scoring
0.05 or more was scored again).
"""

import os
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from minircnn import cli
from minircnn.checkpoint import CheckpointError, load_model
from minircnn.config import config_from_dict
from minircnn.data.image import Preprocessing
from minircnn.faster_rcnn import FasterRCNN
from minircnn.layers.losses import softmax
from minircnn.model import FastRCNN
from minircnn.ops.boxes import bbox_decode, box_area, box_iou, clip_boxes, flip_boxes
from minircnn.ops.nms import batched_nms


@dataclass
class Detections:
    """boxes float32 [D, 4] (0-based inclusive, original image pixels), scores float32
    [D], labels int64 [D] in 1..K; sorted by descending score."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Detector:
    """Everything detection needs, as a checkpoint declares it: the network (in eval
    mode), the K class names (label k is ``classes[k - 1]``), and the Preprocessing that
    training used (pixel statistics, scales, box-target normalisation)."""

    model: FastRCNN | FasterRCNN
    classes: tuple[str, ...]
    preprocessing: Preprocessing

    @property
    def uses_rpn(self) -> bool:
        """Whether the model makes its own proposals (Faster R-CNN) instead of being
        given selective search's."""
        return isinstance(self.model, FasterRCNN)

    def compressed(self, rank: float) -> "Detector":
        """This detector with fc6 and fc7 replaced by truncated SVDs (section 3.1)."""
        from minircnn.svd import compress_model

        return replace(self, model=compress_model(self.model, rank))


def load_detector(checkpoint: str | Path) -> Detector:
    """The Detector a Fast R-CNN or Faster R-CNN checkpoint describes."""
    model, header = load_model(checkpoint)
    if not isinstance(model, FastRCNN | FasterRCNN):
        raise CheckpointError(
            f"{checkpoint}: a {header['kind']} checkpoint, not a Fast or Faster R-CNN one"
        )
    try:
        preprocessing = config_from_dict(Preprocessing, header["preprocessing"])
        classes = tuple(header["classes"])
    except (KeyError, TypeError, ValueError) as err:  # missing or malformed header entries
        raise CheckpointError(
            f"{checkpoint}: no usable classes and preprocessing in its header ({err!r})"
        ) from err
    if len(classes) != model.config.num_classes:
        raise CheckpointError(
            f"{checkpoint}: {len(classes)} class names for {model.config.num_classes} classes"
        )
    return Detector(model.eval(), classes, preprocessing)


def detect(
    detector: Detector,
    image: np.ndarray,
    proposals: np.ndarray | None = None,
    score_threshold=0.05,
    nms_threshold=0.3,
    max_per_image=100,
    scales=None,
    refine: bool | None = None,
    flip: bool = False,
    vote: bool | None = None,
) -> Detections:
    """Detect objects in ``image`` (uint8 RGB [H, W, 3]) given ``proposals`` [P, 4] in
    original pixels, or (None, for a Faster R-CNN) with the model's own RPN proposals.

    ``scales``: shorter-side lengths for multi-scale testing (None: the single training
    scale); with given proposals only. ``refine``: a second pass of the head and box
    voting (module docstring; single scale only); None: on for a Faster R-CNN with its own
    proposals, off otherwise, as chosen on val. ``flip``: the proposals scored on the
    mirrored image too, and averaged (given proposals only). ``vote``: box voting after
    NMS; None: as ``refine``. The defaults are the paper's single pass;
    ``tta_options`` gives the command line's.
    """
    refine = refines(detector, refine, proposals_given=proposals is not None)
    if proposals is not None:
        scores, boxes = score_proposals(detector, image, proposals, scales, refine, flip)
    elif detector.uses_rpn:
        if scales and len(scales) > 1:
            raise ValueError("detect: multi-scale testing needs given proposals, not the RPN's")
        if flip:
            raise ValueError("detect: mirrored testing needs given proposals, not the RPN's")
        short_side = scales[0] if scales else None
        scores, boxes = score_rpn_proposals(detector, image, short_side, refine)
    else:
        raise ValueError("detect: a Fast R-CNN needs proposals (it has no RPN)")
    vote = refine if vote is None else vote
    return postprocess(scores, boxes, score_threshold, nms_threshold, max_per_image, vote)


def refines(detector: Detector, refine: bool | None, proposals_given: bool) -> bool:
    """Whether ``detect`` refines: ``refine`` when given; None, the default, means a
    Faster R-CNN scoring its own proposals (chosen on val)."""
    return detector.uses_rpn and not proposals_given if refine is None else refine


REFINE_MODES = {"auto": None, "on": True, "off": False}  # --refine -> detect's refine


def add_refine_argument(parser) -> None:
    """``--refine auto|on|off``, as ``evaluate`` and ``detect`` take it:
    ``REFINE_MODES[args.refine]`` is ``detect``'s ``refine``."""
    parser.add_argument(
        "--refine",
        choices=tuple(REFINE_MODES),
        default="auto",
        help="a second pass of the head and box voting (minircnn.detect); auto: on for a "
        "Faster R-CNN with its own proposals, off otherwise",
    )


TTA_MODES = ("auto", "on", "off")  # --tta


def tta_options(
    detector: Detector, tta: str = "auto", refine: bool | None = None, scales=None
) -> dict:
    """``detect``'s keyword arguments for the command line's ``--tta``, ``--refine`` and
    ``--scales`` (a Fast R-CNN gets selective search's proposals, a Faster R-CNN makes its
    own). ``tta`` "on" (module docstring): scales (s, 1.5 s) for the training scale s,
    ``flip`` and ``vote``; "off": the paper's single pass; "auto", the default: "on" for
    a Fast R-CNN and "off" for a Faster R-CNN (its RPN proposes at one scale, unmirrored,
    and its refinement votes) or when ``refine`` is asked for (it re-scores one unmirrored
    scale). ``scales`` replace the augmentation's. A combination that cannot run is a
    ``cli.UsageError``."""
    if tta not in TTA_MODES:
        raise cli.UsageError(f"--tta {tta}: one of {', '.join(TTA_MODES)}")
    if scales and len(scales) > 1:
        if refine:
            raise cli.UsageError("--refine on: single-scale testing only (drop --scales)")
        if detector.uses_rpn:
            raise cli.UsageError("--scales: one scale for an RPN model (it proposes per scale)")
    if tta == "auto":
        tta = "off" if detector.uses_rpn or refine else "on"
    options = {}
    if tta == "on":
        if detector.uses_rpn:
            raise cli.UsageError("--tta on: for given proposals, not a Faster R-CNN's own")
        if refine:
            raise cli.UsageError("--tta on: refinement re-scores one scale (add --refine off)")
        short_side = detector.preprocessing.short_side
        options = {"scales": [short_side, round(1.5 * short_side)], "flip": True, "vote": True}
    if scales:
        options["scales"] = list(scales)
    return options


def add_tta_argument(parser) -> None:
    """``--tta auto|on|off``, as ``evaluate`` and ``detect`` take it (``tta_options``)."""
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="auto",
        help="test-time augmentation: two scales, the mirrored image and box voting "
        "(minircnn.detect); auto: on with selective-search proposals, off for an RPN model "
        "and with --refine on",
    )


def rpn_proposals(detector: Detector, image, short_side: int | None = None):
    """A Faster R-CNN's conv pass and proposals for one image (uint8 RGB [H, W, 3]) ->
    (features [1, C, h, w], rois float32 [P, 5] in input pixels, the input's scale over
    the original image); P <= the RPN's ``test_post_nms_top_n``."""
    model, pre = detector.model.eval(), detector.preprocessing
    scale = pre.scale(*image.shape[:2], short_side)
    x = pre.network_input(image, scale)[None]  # [1, 3, H', W']
    features, rpn_scores, rpn_deltas = model.forward_rpn(x)
    rois, _ = model.proposals(rpn_scores, rpn_deltas, [x.shape[2:]], [scale], training=False)
    return features, rois, scale


def score_rpn_proposals(
    detector: Detector, image, short_side: int | None = None, refine: bool = False
):
    """Faster R-CNN at test time: one conv pass, the RPN's proposals (test top-N), and
    Fast R-CNN's head on them -> (probabilities [P, K+1], boxes [P, 4(K+1)]) as
    ``score_proposals``; P <= the RPN's ``test_post_nms_top_n``. ``refine``: then
    ``second_pass`` on the same features."""
    model, pre = detector.model.eval(), detector.preprocessing
    height, width = image.shape[:2]
    features, rois, scale = rpn_proposals(detector, image, short_side)
    if len(rois) == 0:  # every box below min_size: nothing to score
        k1 = model.config.num_classes + 1
        return np.zeros((0, k1), np.float32), np.zeros((0, 4 * k1), np.float32)
    cls_score, bbox_pred = model.forward_head(features, rois)
    proposals = rois[:, 1:] / scale  # back to original pixels, where boxes are decoded
    probs, boxes = decode_outputs(pre, cls_score, bbox_pred, proposals, height, width)
    if refine:
        head = partial(_head_on_boxes, model.fast, features, scale)
        probs, boxes = second_pass(pre, head, probs, boxes, height, width)
    return probs, boxes


def score_proposals(
    detector: Detector, image, proposals, scales=None, refine: bool = False, flip: bool = False
):
    """Class probabilities [P, K+1] and class-specific boxes [P, 4(K+1)] (clipped, in
    original pixels) for every proposal. ``flip``: the mean of those for the image and for
    its mirror (the mirrored proposals scored there, their boxes mirrored back).
    ``refine``: then ``second_pass`` (one scale, unmirrored)."""
    model, pre = detector.model.eval(), detector.preprocessing
    fast = model.fast  # a Faster R-CNN's head scores any given boxes too
    height, width = image.shape[:2]
    proposals = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    factors = [pre.scale(height, width, s) for s in (scales or [pre.short_side])]
    if refine and (len(factors) > 1 or flip):
        raise ValueError("score_proposals: refinement is for single-scale, unmirrored testing")
    cls_score, bbox_pred, features = _score_pyramid(fast, pre, image, proposals, factors)
    probs, boxes = decode_outputs(pre, cls_score, bbox_pred, proposals, height, width)
    if flip:  # the same boxes on the mirrored image, as training sees half its images
        mirrored = flip_boxes(proposals, width)
        outputs = _score_pyramid(fast, pre, image, mirrored, factors, flip=True)[:2]
        probs2, boxes2 = decode_outputs(pre, *outputs, mirrored, height, width)
        unmirrored = flip_boxes(boxes2.reshape(-1, 4), width).reshape(boxes.shape)
        probs, boxes = (probs + probs2) / 2, (boxes + unmirrored) / 2
    if refine and len(proposals):  # one scale: level 0
        head = partial(_head_on_boxes, fast, features[0], factors[0])
        probs, boxes = second_pass(pre, head, probs, boxes, height, width)
    return probs, boxes


def _score_pyramid(fast: FastRCNN, pre: Preprocessing, image, proposals, factors, flip=False):
    """The head's raw outputs (cls_score [P, K+1], bbox_pred [P, 4(K+1)]) for proposals
    [P, 4] in original pixels (of the mirrored image if ``flip``), each pooled at the scale
    factor where its area is nearest the preferred one; and the feature maps computed,
    {level: [1, C, h, w]}."""
    # section 5.2: pool each RoI at the scale where its area is closest to the preferred
    # one (224^2 for VGG16; here the pre-training crop size squared)
    target = fast.config.crop_size**2
    scaled_areas = box_area(proposals)[:, None] * np.square(factors)[None, :]  # [P, scales]
    level = np.argmin(np.abs(scaled_areas - target), axis=1)
    k1 = fast.config.num_classes + 1
    cls_score = np.zeros((len(proposals), k1), dtype=np.float32)
    bbox_pred = np.zeros((len(proposals), 4 * k1), dtype=np.float32)
    features = {}  # level -> the feature map [1, C, h, w] at that scale
    for lv, s in enumerate(factors):
        idx = np.flatnonzero(level == lv)
        if len(idx) == 0:
            continue
        features[lv] = fast.backbone.forward(pre.network_input(image, s, flip)[None])
        cls_score[idx], bbox_pred[idx] = _head_on_boxes(fast, features[lv], s, proposals[idx])
    return cls_score, bbox_pred, features


def _head_on_boxes(fast: FastRCNN, features, scale: float, boxes):
    """Fast R-CNN's head on one image's features [1, C, h, w] for boxes [R, 4] in
    original pixels (times ``scale`` to the input's) -> (cls_score, bbox_pred)."""
    rois = np.column_stack([np.zeros(len(boxes)), boxes * scale]).astype(np.float32)
    return fast.forward_head(features, rois)


def second_pass(preprocessing: Preprocessing, head, probs, boxes, height, width, min_score=0.5):
    """Iterative localisation (Gidaris and Komodakis, ICCV 2015, section 5), one step: each
    proposal whose best class scores ``min_score`` or more is replaced by its regressed box
    for that class, which ``head`` (boxes [R, 4] in original pixels -> the network's
    cls_score and bbox_pred) scores and regresses again.

    probs [P, K+1] and boxes [P, 4(K+1)] as ``decode_outputs`` gives them -> (probabilities
    averaged over the two passes, the second pass's boxes) for those rows; the other rows
    keep their first pass. ``min_score``: on val, 0.05 / 0.2 / 0.5 gave mAP@0.5 0.849 /
    0.848 / 0.847 (Faster R-CNN, seeds 0 to 4) for 209 / 94 / 44 boxes scored again per
    image, so the default takes the likely detections only.
    """
    k1 = probs.shape[1]
    rows = np.flatnonzero(probs[:, 1:].max(axis=1) >= min_score)
    if len(rows) == 0:
        return probs, boxes
    best = probs[rows, 1:].argmax(axis=1) + 1  # class 0 is background
    regressed = boxes.reshape(len(boxes), k1, 4)[rows, best]  # [R, 4]
    probs2, boxes2 = decode_outputs(preprocessing, *head(regressed), regressed, height, width)
    probs, boxes = probs.copy(), boxes.copy()
    probs[rows] = (probs[rows] + probs2) / 2
    boxes[rows] = boxes2
    return probs, boxes


def decode_outputs(preprocessing: Preprocessing, cls_score, bbox_pred, proposals, height, width):
    """Network outputs -> (softmax probabilities [P, K+1], boxes [P, 4(K+1)] decoded with
    the training's target normalisation and clipped to the image)."""
    probs = softmax(cls_score, axis=1)
    boxes = bbox_decode(proposals, bbox_pred, preprocessing.target_means, preprocessing.target_stds)
    return probs, clip_boxes(boxes, height, width)


def postprocess(
    scores, boxes, score_threshold=0.05, nms_threshold=0.3, max_per_image=100, vote=False
):
    """Per-class thresholding and NMS over scores [P, K+1] / boxes [P, 4(K+1)], then the
    best ``max_per_image`` detections over all classes; ``vote``: their boxes by
    ``box_voting`` among the thresholded candidates."""
    rows, cols = np.nonzero(scores[:, 1:] > score_threshold)  # class 0 is background
    labels = cols + 1
    cand_boxes = boxes.reshape(len(boxes), scores.shape[1], 4)[rows, labels]  # [D, 4]
    cand_scores = scores[rows, labels]
    keep = batched_nms(cand_boxes, cand_scores, labels, nms_threshold)[:max_per_image]
    kept_boxes = cand_boxes[keep]
    if vote:
        kept_boxes = box_voting(kept_boxes, labels[keep], cand_boxes, cand_scores, labels)
    return Detections(
        kept_boxes.astype(np.float32),
        cand_scores[keep].astype(np.float32),
        labels[keep].astype(np.int64),
    )


def box_voting(kept, kept_labels, boxes, scores, labels, iou_threshold=0.5) -> np.ndarray:
    """Box voting (Gidaris and Komodakis, ICCV 2015, section 5): each kept box [D, 4] of
    label ``kept_labels`` [D] becomes the mean of the candidate boxes [C, 4] of the same
    label (``labels`` [C]) that overlap it by IoU >= ``iou_threshold``, weighted by their
    ``scores`` [C]; it is among them itself (a box of zero area, which overlaps nothing,
    stays as it is). Computed in float64, so that a mean of boxes clipped to the image
    stays inside it. -> float32 [D, 4]."""
    kept = np.asarray(kept, dtype=np.float64)
    boxes, scores = np.asarray(boxes, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    voted = kept.copy()
    for label in np.unique(kept_labels):
        mine, theirs = kept_labels == label, labels == label
        weights = (box_iou(kept[mine], boxes[theirs]) >= iou_threshold) * scores[theirs]
        total = weights.sum(axis=1, keepdims=True)
        mean = weights @ boxes[theirs] / np.where(total > 0, total, 1.0)
        voted[mine] = np.where(total > 0, mean, kept[mine])
    return voted.astype(np.float32)


def coco_results(detections: list["Detections"], dataset, classes) -> list[dict]:
    """Detections of every image as COCO's results format: one dict per box with
    ``image_id`` (the image's index), ``file_name``, ``category_id`` (1..K),
    ``category``, ``bbox`` ``[x, y, w, h]`` (w = x2 - x1 + 1: pixels counted inclusively,
    so a box covering one pixel has width 1) and ``score``."""
    rows = []
    for index, dets in enumerate(detections):
        for box, score, label in zip(dets.boxes, dets.scores, dets.labels, strict=True):
            x1, y1, x2, y2 = (round(float(v), 2) for v in box)
            rows.append(
                {
                    "image_id": index,
                    "file_name": dataset[index].image_id,
                    "category_id": int(label),
                    "category": classes[int(label) - 1],
                    "bbox": [
                        round(x1, 2),
                        round(y1, 2),
                        round(x2 - x1 + 1, 2),
                        round(y2 - y1 + 1, 2),
                    ],
                    "score": round(float(score), 5),
                }
            )
    return rows


@cli.command
def main(argv: list[str] | None = None) -> int:
    """Detect in the given images and folders; exit status 0, or 2 for bad input."""
    import json

    from minircnn.data.folder import ImageFolder
    from minircnn.progress import ProgressBar
    from minircnn.proposals.cache import load_or_compute
    from minircnn.viz import draw_boxes, plt, save_figure

    parser = cli.ArgumentParser(prog="python -m minircnn.detect", description=__doc__)
    parser.add_argument("images", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", default="runs/detect", help="folder for the results")
    parser.add_argument(
        "--score-threshold", type=cli.probability, default=0.5, help="drawn if above"
    )
    parser.add_argument("--cache-dir", default="data/proposals", help="proposal cache folder")
    parser.add_argument("--jobs", type=cli.jobs, default=-1, help="selective-search workers")
    parser.add_argument("--scheduler", help="selective search on Dask: 'local' or tcp://HOST:8786")
    add_refine_argument(parser)
    add_tta_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    refine = REFINE_MODES[args.refine]
    detector = load_detector(args.checkpoint)
    options = tta_options(detector, args.tta, refine)
    images = ImageFolder(args.images)
    proposals = [None] * len(images)  # Faster R-CNN: its own RPN's
    if not detector.uses_rpn:
        proposals = load_or_compute(
            images,
            cache_dir=args.cache_dir,
            jobs=args.jobs,
            scheduler=args.scheduler,
            progress=not args.quiet,
        )
    out_dir = Path(args.out)
    names = _output_names([item.image_id for item in images])
    results = []
    for i in ProgressBar(range(len(images)), desc="detect", enabled=not args.quiet):
        image = images.load_image(i)
        dets = detect(detector, image, proposals[i], refine=refine, **options)
        results.append(dets)
        show = dets.scores >= args.score_threshold
        fig, ax = plt.subplots(figsize=(5, 5 * image.shape[0] / image.shape[1]))
        draw_boxes(
            ax, image, dets.boxes[show], dets.labels[show], detector.classes, dets.scores[show]
        )
        fig.tight_layout()
        save_figure(fig, out_dir / f"{names[i]}_detections.jpg")
    json_path = out_dir / "detections.json"
    json_path.write_text(json.dumps(coco_results(results, images, detector.classes), indent=1))
    drawn = sum(int((d.scores >= args.score_threshold).sum()) for d in results)
    print(
        f"{len(images)} images, {drawn} detections with score >= {args.score_threshold} drawn "
        f"in {out_dir}/; all detections (score > 0.05) in {json_path}"
    )
    return 0


def _output_names(image_ids: list[str]) -> list[str]:
    """A file-name stem per image, unique: sub/x.jpg -> sub__x, and x.jpg beside x.png
    -> x_jpg and x_png (so no drawing overwrites another)."""
    flat = [i.replace(os.sep, "__") for i in image_ids]
    stems = [str(Path(f).with_suffix("")) for f in flat]
    return [
        stem if stems.count(stem) == 1 else f.replace(".", "_")
        for stem, f in zip(stems, flat, strict=True)
    ]


if __name__ == "__main__":
    sys.exit(main())
