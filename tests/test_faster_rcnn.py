"""Faster R-CNN: the joint gradient in float64, joint training, RPN proposals as training
candidates, checkpoints that record the RPN, and detection with the model's own proposals."""

from dataclasses import asdict, replace

import numpy as np
import pytest

from minircnn.checkpoint import CheckpointError, load_model, save_checkpoint
from minircnn.data.image import Preprocessing
from minircnn.data.sampling import HierarchicalSampler, ImageView, SamplerConfig
from minircnn.detect import Detector, detect
from minircnn.faster_rcnn import FasterRCNN, RPNConfig
from minircnn.gradcheck import gradcheck
from minircnn.layers.losses import MultiTaskLoss
from minircnn.model import FastRCNN, ModelConfig
from minircnn.ops.boxes import box_iou, flip_boxes
from minircnn.optim import SGDConfig
from minircnn.rpn import AnchorConfig, RPNLoss, RPNProposalConfig, batch_anchor_targets
from minircnn.rpn.compare import rpn_proposals, time_per_image
from minircnn.train import JointTrainer, TrainConfig

TINY = ModelConfig(
    num_classes=2, conv_channels=(3, 4), convs_per_block=(1, 2), roi_size=2, fc_dims=(6, 5)
)
SMALL = ModelConfig(
    num_classes=5, conv_channels=(8, 16), convs_per_block=(1, 2), roi_size=2, fc_dims=(32, 32)
)
SMALL_RPN = RPNConfig(
    anchors=AnchorConfig(scales=(16.0, 32.0, 64.0)),
    proposals=RPNProposalConfig(train_pre_nms_top_n=300, train_post_nms_top_n=100),
)
PRE = Preprocessing((110.0,) * 3, (60.0,) * 3, short_side=96, max_side=128)


@pytest.mark.parametrize("frozen", [0, 1])
def test_joint_gradient_float64(frozen):
    """Fast R-CNN's loss on fixed RoIs plus the RPN's loss on fixed anchor targets: every
    trainable parameter (shared convs, RPN, heads) against finite differences of the sum."""
    rng = np.random.default_rng(0)
    config = ModelConfig(**{**TINY.__dict__, "freeze_blocks": frozen})
    rpn_config = RPNConfig(anchors=AnchorConfig(scales=(4.0, 8.0), ratios=(1.0,)))
    model = FasterRCNN(config, rpn_config, rng, dtype=np.float64).train()
    for p in model.params().values():
        p[...] = rng.standard_normal(p.shape) * 0.5
    images = rng.standard_normal((2, 3, 12, 14))
    rois = np.array([[0, 0, 0, 13, 11], [0, 2, 3, 9, 10], [1, 4, 1, 12, 8]], np.float64)
    labels = np.array([1, 0, 2])
    targets = rng.standard_normal((3, 12))
    weights = np.zeros((3, 12))
    for r, k in enumerate(labels):
        weights[r, 4 * k : 4 * k + 4] = float(k > 0)
    m = 6 * 7 * 2  # a 6x7 feature map, 2 anchors per cell
    rpn_labels = rng.integers(-1, 2, size=(2, m))
    rpn_targets = rng.standard_normal((2, m, 4))
    rpn_weights = np.repeat((rpn_labels == 1)[..., None], 4, axis=2).astype(np.float64)
    loss, rpn_loss = MultiTaskLoss(), RPNLoss(reg_weight=3.0)

    def f():
        features, scores, deltas = model.forward_rpn(images)
        fast = loss.forward(*model.forward_head(features, rois), labels, targets, weights)
        rpn = rpn_loss.forward(scores, deltas, rpn_labels, rpn_targets, rpn_weights)
        return fast.total + rpn.total

    f()
    model.backward(*loss.backward(), *rpn_loss.backward())
    grads = {k: v.copy() for k, v in model.grads().items()}
    assert {"rpn_conv.weight", "rpn_cls_score.bias", "conv2_2.weight"} <= set(grads)
    assert ("conv1_1.weight" in grads) == (frozen == 0)
    params = model.params()
    for name, g in grads.items():
        err = gradcheck(f, params[name], g, num_checks=15)
        assert err < 1e-6, (name, err)


def make_joint_trainer(ds, run_dir, epochs=2, seed=0):
    rng = np.random.default_rng(seed)
    model = FasterRCNN(SMALL, SMALL_RPN, rng)
    sampler = HierarchicalSampler(ds, None, SamplerConfig(rois_per_batch=32), PRE, rng)
    train_config = TrainConfig(epochs=epochs, sgd=SGDConfig(lr=0.01))
    return JointTrainer(model, sampler, train_config, run_dir, {"classes": list(ds.classes)}, rng)


def test_joint_training_lowers_both_losses(rpn_toy, tmp_path):
    trainer = make_joint_trainer(rpn_toy, tmp_path)
    results = [trainer.step([0, 1]) for _ in range(40)]
    first, last = results[:5], results[-5:]
    for term in ("cls", "reg"):  # the RPN's two terms
        assert np.mean([getattr(r.rpn_losses, term) for r in last]) < np.mean(
            [getattr(r.rpn_losses, term) for r in first]
        )
    assert np.mean([r.losses.cls for r in last]) < np.mean([r.losses.cls for r in first])


def test_joint_resume_matches_a_straight_run(rpn_toy, tmp_path):
    straight = make_joint_trainer(rpn_toy, tmp_path / "a", epochs=2)
    straight.run(progress=False)
    first = make_joint_trainer(rpn_toy, tmp_path / "b", epochs=1)
    first.run(progress=False)
    second = make_joint_trainer(rpn_toy, tmp_path / "b", epochs=2, seed=99)
    second.resume(tmp_path / "b" / "checkpoint.npz")
    second.run(progress=False)
    for name, value in straight.model.params().items():
        np.testing.assert_array_equal(second.model.params()[name], value, err_msg=name)
    assert "loss_rpn_cls" in straight.log[0]


def test_rpn_proposals_become_candidates_in_original_pixels(rpn_toy):
    """A view mirrored and scaled by 1.5: proposals given in its input pixels are mapped
    back (unscaled, unmirrored), matched to the ground truth and sampled as usual, so a
    proposal that is a ground-truth box comes back as a foreground RoI at the same input
    position with zero regression targets."""
    rng = np.random.default_rng(0)
    config = SamplerConfig(rois_per_batch=512, jittered_per_gt=0)  # the proposals alone
    sampler = HierarchicalSampler(rpn_toy, None, config, PRE, rng)
    item = rpn_toy[0]
    scale = 1.5
    view = ImageView(0, np.zeros((3, 10, 10), np.float32), scale, True, item.boxes, item.labels)
    gt_input = flip_boxes(item.boxes, item.width) * scale  # the mirrored objects, scaled
    np.testing.assert_allclose(sampler.gt_boxes(view), gt_input, rtol=1e-6)
    shifted = gt_input + np.array([3.0, 0.0, 3.0, 0.0])  # same size, 3 input px right
    given = np.vstack([gt_input, shifted])
    rois = np.column_stack([np.zeros(len(given)), given]).astype(np.float32)
    batch = sampler.batch_from_proposals([view], rois)
    fg = batch.labels > 0
    # every ground truth appears twice among the candidates (itself, and the proposal on it)
    assert fg.sum() >= len(item.boxes)
    for box, label in zip(gt_input, item.labels, strict=True):
        hits = np.flatnonzero(np.all(np.abs(batch.rois[:, 1:] - box) < 1e-3, axis=1))
        assert len(hits) == 2  # the ground truth and the identical proposal
        for r in hits:
            assert batch.labels[r] == label
            np.testing.assert_allclose(
                batch.bbox_targets[r, 4 * label : 4 * label + 4], 0, atol=1e-5
            )
    # the shifted proposals: regression towards the left (dx < 0) in the mirrored image
    for box, label in zip(shifted, item.labels, strict=True):
        hits = np.flatnonzero(np.all(np.abs(batch.rois[:, 1:] - box) < 1e-3, axis=1))
        if len(hits) and batch.labels[hits[0]] > 0:
            assert batch.bbox_targets[hits[0], 4 * label] < 0


def test_jittered_ground_truth_joins_the_rpn_candidates(rpn_toy):
    """With no proposals at all, ``jittered_per_gt`` copies of each ground-truth box still
    give foreground RoIs beyond the ground truth itself: inside the image, each one
    overlapping its object by IoU >= 0.5 and labelled with its class; without them only
    the ground-truth boxes are foreground."""
    item = rpn_toy[0]
    view = ImageView(0, np.zeros((3, 10, 10), np.float32), 1.0, False, item.boxes, item.labels)
    no_rois = np.zeros((0, 5), np.float32)
    counts = {}
    for n in (0, 30):
        config = SamplerConfig(rois_per_batch=4096, jittered_per_gt=n)
        sampler = HierarchicalSampler(rpn_toy, None, config, PRE, np.random.default_rng(0))
        batch = sampler.batch_from_proposals([view], no_rois)
        fg = batch.labels > 0
        boxes = batch.rois[fg, 1:]
        iou = box_iou(boxes, item.boxes)
        assert (iou.max(axis=1) >= 0.5).all()
        np.testing.assert_array_equal(batch.labels[fg], item.labels[iou.argmax(axis=1)])
        assert (boxes >= 0).all() and (boxes[:, 2] <= item.width - 1).all()
        assert (boxes[:, 3] <= item.height - 1).all()
        counts[n] = int(fg.sum())
    assert counts[0] == len(item.boxes)
    # about half of a box's jittered copies overlap it by >= 0.5 (copy_paste.jitter_boxes)
    assert counts[30] >= len(item.boxes) * (1 + 5)


def test_batch_anchor_targets_stack_per_image_targets():
    anchors = np.array([[0, 0, 9, 9], [10, 0, 19, 9], [0, 10, 9, 19]], np.float32)
    gt = [np.array([[0, 0, 9, 9]], np.float32), np.zeros((0, 4), np.float32)]
    labels, targets, weights = batch_anchor_targets(
        anchors, gt, [(20, 20), (20, 20)], np.random.default_rng(0)
    )
    assert labels.shape == (2, 3) and targets.shape == weights.shape == (2, 3, 4)
    np.testing.assert_array_equal(labels, [[1, 0, 0], [0, 0, 0]])  # image 2: no objects
    np.testing.assert_array_equal(weights[0, 0], 1.0)
    assert weights[1].sum() == 0


def tiny_faster_detector():
    rng = np.random.default_rng(0)
    model = FasterRCNN(SMALL, SMALL_RPN, rng)
    return Detector(model.eval(), ("a", "b", "c", "d", "e"), PRE)


def test_checkpoint_records_the_rpn_and_round_trips(tmp_path):
    detector = tiny_faster_detector()
    path = save_checkpoint(tmp_path / "c.npz", detector.model, {"classes": list("abcde")})
    model, header = load_model(path)
    assert isinstance(model, FasterRCNN) and header["proposals"] == "rpn"
    assert model.rpn_config == SMALL_RPN
    for name, value in detector.model.params().items():
        np.testing.assert_array_equal(model.params()[name], value)
    _, fast_header = load_model(save_checkpoint(tmp_path / "f.npz", FastRCNN(SMALL), {}))
    assert fast_header["proposals"] == "selective_search" and "rpn" not in fast_header


def test_checkpoint_without_a_dilation_loads_adjacent_taps(tmp_path):
    # written before RPNConfig had a dilation: its RPN conv's taps were adjacent (1), not
    # the default's 2
    assert RPNConfig().dilation == 2
    old_config = replace(SMALL_RPN, dilation=1)
    old_header = {k: v for k, v in asdict(old_config).items() if k != "dilation"}
    model = FasterRCNN(SMALL, old_config, np.random.default_rng(0))
    path = save_checkpoint(tmp_path / "old.npz", model, {"rpn": old_header})
    loaded, header = load_model(path)
    assert "dilation" not in header["rpn"]
    assert loaded.rpn_config == old_config and loaded.rpn.conv.dilation == 1


def test_detection_with_the_models_own_proposals():
    detector = tiny_faster_detector()
    image = np.random.default_rng(1).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    dets = detect(detector, image, score_threshold=0.0, max_per_image=50)
    assert dets.boxes.shape[1] == 4 and len(dets.boxes) <= 50
    assert np.all(dets.boxes[:, 2] <= 119) and np.all(dets.boxes[:, 3] <= 89)
    assert np.all(np.diff(dets.scores) <= 0)
    compressed = detect(detector.compressed(0.5), image, score_threshold=0.0)
    assert len(compressed.boxes) > 0
    with pytest.raises(ValueError, match="multi-scale"):
        detect(detector, image, scales=[96, 128])
    # refinement: on by default with the model's own proposals, off with given ones
    refined = detect(detector, image, score_threshold=0.0, max_per_image=50, refine=True)
    np.testing.assert_array_equal(dets.boxes, refined.boxes)
    plain = detect(detector, image, score_threshold=0.0, max_per_image=50, refine=False)
    assert not np.array_equal(dets.boxes, plain.boxes)  # box voting moved some
    given = np.array([[10, 10, 60, 50], [30, 20, 90, 70]], np.float32)
    np.testing.assert_array_equal(
        detect(detector, image, given).boxes, detect(detector, image, given, refine=False).boxes
    )
    fast = Detector(FastRCNN(SMALL).eval(), detector.classes, PRE)
    with pytest.raises(ValueError, match="needs proposals"):
        detect(fast, image)


def test_compare_helpers_on_tiny_models(rpn_toy):
    rpn = tiny_faster_detector()
    proposals = rpn_proposals(rpn, rpn_toy, post_nms_top_n=40)
    assert len(proposals) == len(rpn_toy)
    for item, boxes in zip(rpn_toy, proposals, strict=True):
        assert 0 < len(boxes) <= 40
        assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= item.width - 1 + 1e-3
    assert rpn.model.rpn_config == SMALL_RPN  # the detector itself is left as it was
    fast = Detector(FastRCNN(SMALL).eval(), rpn.classes, PRE)
    timing = time_per_image(fast, rpn, [rpn_toy.load_image(0)], repeats=1)
    stages = timing["stages_ms"]
    assert set(stages) == {"selective_search", "fast_rcnn", "faster_rcnn", "rcnn"}
    totals = timing["total_ms"]
    assert totals["Fast R-CNN + selective search"] == pytest.approx(
        stages["selective_search"] + stages["fast_rcnn"]
    )
    assert totals["Faster R-CNN (RPN)"] == stages["faster_rcnn"]


def test_resume_refuses_another_rpn_configuration(rpn_toy, tmp_path):
    first = make_joint_trainer(rpn_toy, tmp_path, epochs=1)
    first.run(progress=False)
    other = make_joint_trainer(rpn_toy, tmp_path, epochs=2)
    other.model.rpn_config = replace(SMALL_RPN, loss_weight=1.0)
    with pytest.raises(CheckpointError, match="rpn"):
        other.resume(tmp_path / "checkpoint.npz")


def test_no_proposal_left_gives_no_detection():
    detector = tiny_faster_detector()
    detector.model.rpn_config = replace(
        SMALL_RPN, proposals=replace(SMALL_RPN.proposals, min_size=1e6)
    )
    image = np.zeros((90, 120, 3), np.uint8)
    dets = detect(detector, image, score_threshold=0.0)
    assert len(dets.boxes) == len(dets.scores) == 0
