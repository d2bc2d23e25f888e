"""Training: SGD lowers the loss, overfitting, exact resume, refusal, NaN stop, sampling."""

import re
from dataclasses import replace

import numpy as np
import pytest

from minircnn.checkpoint import CheckpointError, load_model, save_checkpoint
from minircnn.data import toyvoc
from minircnn.data.image import Preprocessing
from minircnn.data.sampling import HierarchicalSampler, SamplerConfig, sample_rois
from minircnn.data.voc import VOCDataset
from minircnn.layers.losses import MultiTaskLoss
from minircnn.model import Classifier, FastRCNN, ModelConfig
from minircnn.optim import SGD, SGDConfig
from minircnn.proposals.cache import ProposalConfig, load_or_compute
from minircnn.train import (
    TrainConfig,
    Trainer,
    TrainingDiverged,
    faster_rcnn_schedule,
    report_timing,
)

SMALL = ModelConfig(
    num_classes=5,
    conv_channels=(8, 16),
    convs_per_block=(1, 2),
    roi_size=2,
    fc_dims=(32, 32),
    dropout=0.0,
    freeze_blocks=0,
)
SAMPLER = SamplerConfig(rois_per_batch=32)
PRE = Preprocessing((110.0,) * 3, (60.0,) * 3, short_side=96, max_side=128)
UNIT = Preprocessing((0.0,) * 3, (1.0,) * 3, short_side=96, max_side=128)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toytrain")
    toyvoc.generate(
        root / "toy", seed=2, counts={"train": 4, "val": 0, "test": 0}, min_size=96, max_size=120
    )
    ds = VOCDataset(root / "toy", split="train")
    proposals = load_or_compute(
        ds, ProposalConfig(mode="single", max_proposals=100), root / "cache", jobs=1, progress=False
    )
    return ds, proposals


def make_trainer(toy, run_dir, config=SMALL, epochs=2, seed=0, sampler_config=SAMPLER):
    ds, proposals = toy
    rng = np.random.default_rng(seed)
    model = FastRCNN(config, rng)
    sampler = HierarchicalSampler(ds, proposals, sampler_config, PRE, rng)
    header = {"classes": list(ds.classes)}
    train_config = TrainConfig(epochs=epochs, sgd=SGDConfig(lr=0.01))
    return Trainer(model, sampler, train_config, run_dir, header, rng)


def step_loss(model, batch):
    cls, bbox = model.forward(batch.images, batch.rois)
    return MultiTaskLoss().forward(cls, bbox, batch.labels, batch.bbox_targets, batch.bbox_weights)


def fixed_batch(trainer, indices=(0, 1)):
    """Make the trainer's sampler return one mini-batch every time."""
    batch = trainer.sampler.batch(list(indices))
    trainer.sampler.batch = lambda _: batch
    return batch


def test_one_sgd_step_lowers_the_loss(toy, tmp_path):
    trainer = make_trainer(toy, tmp_path)
    batch = fixed_batch(trainer)
    before = step_loss(trainer.model, batch).total
    trainer.step([0, 1])
    assert step_loss(trainer.model, batch).total < before
    assert trainer.iteration == 1


def test_overfits_two_images(toy, tmp_path):
    trainer = make_trainer(toy, tmp_path)
    batch = fixed_batch(trainer)
    first = step_loss(trainer.model, batch)
    for _ in range(300):
        losses = trainer.step([0, 1]).losses
    assert losses.total < 0.05 * first.total, (first, losses)
    assert losses.cls < 0.05 and losses.loc < 0.05


def test_resume_matches_a_straight_run(toy, tmp_path):
    straight = make_trainer(toy, tmp_path / "a", epochs=2)
    straight.run(progress=False)
    interrupted = make_trainer(toy, tmp_path / "b", epochs=1)
    interrupted.run(progress=False)
    resumed = make_trainer(toy, tmp_path / "b", epochs=2, seed=123)  # other init and stream
    resumed.resume(tmp_path / "b" / "checkpoint.npz")
    assert resumed.iteration == interrupted.iteration and resumed.epoch == 1
    resumed.run(progress=False)
    for name, p in straight.model.params().items():
        np.testing.assert_array_equal(resumed.model.params()[name], p, err_msg=name)
    assert len(resumed.log) == len(straight.log)


def test_stage_times_leave_out_the_first_iteration(toy, tmp_path, capsys):
    """The first iteration in a process compiles the Numba kernels: report_timing's
    per-iteration times must not include it."""
    trainer = make_trainer(toy, tmp_path, epochs=2)
    step = trainer.step

    def first_step_slow(indices):
        result = step(indices)
        if trainer.steps_done == 0:  # as if compiling took 100 s in this iteration
            trainer.timer.totals["conv_forward"] += 100.0
        return result

    trainer.step = first_step_slow
    trainer.run(progress=False)
    assert trainer.steps_done == trainer.iteration >= 2
    assert trainer.timed_steps == trainer.steps_done - 1
    assert 0 < sum(trainer.timer.totals.values()) < 100.0
    assert trainer.flops > 0
    report_timing(trainer)  # per timed iteration
    total = float(re.search(r"\(total ([\d.]+) ms\)", capsys.readouterr().out).group(1))
    expected = 1e3 * sum(trainer.timer.totals.values()) / trainer.timed_steps
    assert total == pytest.approx(expected, abs=0.051)
    trainer.steps_done = 1  # one iteration only: nothing to divide by
    report_timing(trainer)
    assert "not timed" in capsys.readouterr().out


def test_checkpoint_from_another_config_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", FastRCNN(SMALL), {"classes": []})
    other = replace(SMALL, fc_dims=(16, 32))
    with pytest.raises(ValueError, match=r"different model configuration \(fc_dims"):
        load_model(path, expected_config=other)
    model, header = load_model(path, expected_config=SMALL)
    assert header["kind"] == "fast_rcnn" and isinstance(model, FastRCNN)


def test_nan_loss_stops_and_keeps_the_checkpoint(toy, tmp_path):
    trainer = make_trainer(toy, tmp_path, epochs=1)
    trainer.run(progress=False)
    saved = trainer.checkpoint_path.read_bytes()
    trainer.config = replace(trainer.config, epochs=2)
    trainer.model.params()["fc7.weight"][0, 0] = np.nan  # poison: the loss turns NaN
    with pytest.raises(TrainingDiverged, match=r"loss is nan at iteration 2; .*kept at .*\.npz"):
        trainer.run(progress=False)
    assert trainer.checkpoint_path.read_bytes() == saved


def test_resume_refuses_another_run_but_may_add_epochs(toy, tmp_path):
    first = make_trainer(toy, tmp_path, epochs=1)
    first.run(progress=False)
    longer = make_trainer(toy, tmp_path, epochs=3)  # more epochs: the same run, continued
    longer.resume(first.checkpoint_path)
    assert longer.epoch == 1
    other = make_trainer(toy, tmp_path, sampler_config=replace(SAMPLER, rois_per_batch=16))
    with pytest.raises(
        CheckpointError,
        match=r"another sampler_config \(rois_per_batch: 32 in the checkpoint, 16 here\)",
    ):
        other.resume(first.checkpoint_path)


def test_nan_with_an_older_runs_checkpoint_does_not_claim_it(toy, tmp_path):
    make_trainer(toy, tmp_path, epochs=1).run(progress=False)  # an earlier run, same folder
    trainer = make_trainer(toy, tmp_path, epochs=1)
    trainer.model.params()["fc7.weight"][0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet"):
        trainer.run(progress=False)


def test_nan_before_the_first_checkpoint_says_none_was_written(toy, tmp_path):
    trainer = make_trainer(toy, tmp_path, epochs=1)
    trainer.model.params()["fc7.weight"][0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet"):
        trainer.run(progress=False)
    assert not trainer.checkpoint_path.exists()


def test_conversion_keeps_pretrained_weights():
    rng = np.random.default_rng(0)
    clf = Classifier(SMALL, rng)
    model = FastRCNN.from_classifier(clf, SMALL, rng)
    np.testing.assert_array_equal(model.params()["fc6.weight"], clf.params()["fc6.weight"])
    np.testing.assert_array_equal(model.params()["conv2_1.bias"], clf.params()["conv2_1.bias"])
    assert abs(model.params()["bbox_pred.weight"].std() - 0.001) < 0.0003
    assert abs(model.params()["cls_score.weight"].std() - 0.01) < 0.003


def test_frozen_blocks_get_no_gradient(toy, tmp_path):
    trainer = make_trainer(toy, tmp_path, config=replace(SMALL, freeze_blocks=1))
    before = trainer.model.params()["conv1_1.weight"].copy()
    trainer.step([0, 1])
    assert "conv1_1.weight" not in trainer.model.grads()
    np.testing.assert_array_equal(trainer.model.params()["conv1_1.weight"], before)


def test_sgd_two_steps_by_hand():
    params = {"w.weight": np.array([1.0]), "w.bias": np.array([1.0])}
    opt = SGD(params, SGDConfig(lr=0.1, momentum=0.9, weight_decay=0.5, steps=(1,)))
    grads = {"w.weight": np.array([2.0]), "w.bias": np.array([2.0])}
    opt.step(grads, iteration=0)
    # step 1, lr 0.1. weight: v = 0.1 * (2 + 0.5 * 1) = 0.25, w = 0.75;
    #                 bias (2x lr, no decay): v = 0.2 * 2 = 0.4, b = 0.6
    np.testing.assert_allclose(params["w.weight"], [0.75])
    np.testing.assert_allclose(params["w.bias"], [0.6])
    opt.step(grads, iteration=1)
    # step 2, lr 0.01 after the step at 1. weight: v = 0.9 * 0.25 + 0.01 * (2 + 0.5 * 0.75)
    #   = 0.225 + 0.02375 = 0.24875, w = 0.50125;  bias: v = 0.9 * 0.4 + 0.02 * 2 = 0.4,
    #   b = 0.2. (With momentum 0 the weight would be 0.72625: the test sees momentum.)
    np.testing.assert_allclose(params["w.weight"], [0.50125])
    np.testing.assert_allclose(params["w.bias"], [0.2])
    assert opt.lr_at(0) == 0.1 and np.isclose(opt.lr_at(1), 0.01)


# ---------------------------------------------------------------- sampling
def test_sampling_fraction_and_ranges():
    rng = np.random.default_rng(0)
    max_iou = rng.random(500)
    cfg = SamplerConfig()
    keep, is_fg = sample_rois(max_iou, 64, cfg, rng)
    assert len(keep) == 64 and len(set(keep.tolist())) == 64
    assert is_fg.sum() == 16
    assert np.all(max_iou[keep[is_fg]] >= 0.5)
    assert np.all((max_iou[keep[~is_fg]] >= 0.1) & (max_iou[keep[~is_fg]] < 0.5))


def test_sampling_short_of_candidates_returns_fewer_never_repeats_never_below_0_1():
    rng = np.random.default_rng(1)
    cfg = SamplerConfig()
    only_fg = np.array([1.0, 0.9, 0.8, 0.05, 0.0])  # no background in [0.1, 0.5)
    keep, is_fg = sample_rois(only_fg, 8, cfg, rng)
    assert sorted(keep.tolist()) == [0, 1] and is_fg.all()  # 25% of 8 = 2 foreground
    no_fg = np.array([0.0, 0.05, 0.3, 0.45])  # no foreground
    keep, is_fg = sample_rois(no_fg, 8, cfg, rng)
    assert sorted(keep.tolist()) == [2, 3] and not is_fg.any()
    keep, _ = sample_rois(np.array([0.0, 0.09]), 8, cfg, rng)
    assert len(keep) == 0


def test_image_without_usable_rois_is_left_out_with_a_warning(toy):
    ds, proposals = toy
    useless = [np.zeros((0, 4), np.float32)] + list(proposals[1:])
    empty = replace(ds.items[0], boxes=np.zeros((0, 4), np.float32))
    empty = replace(empty, labels=np.zeros(0, np.int64), difficult=np.zeros(0, bool))
    ds_copy = VOCDataset.__new__(VOCDataset)
    ds_copy.__dict__.update(ds.__dict__, items=[empty, *ds.items[1:]])
    with pytest.warns(UserWarning, match=rf"{empty.image_id}"):
        sampler = HierarchicalSampler(ds_copy, useless, SAMPLER, PRE, np.random.default_rng(0))
    assert 0 not in sampler.usable and len(sampler.usable) == len(ds) - 1


def pure_iou(a, b):
    """IoU of two boxes with the +1 convention, in plain Python (independent of box_iou)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return iw * ih / (area(a) + area(b) - iw * ih)


def pure_targets(p, g):
    """R-CNN deltas normalised by stds (0.1, 0.1, 0.2, 0.2), written out by hand."""
    pw, ph, gw, gh = p[2] - p[0] + 1, p[3] - p[1] + 1, g[2] - g[0] + 1, g[3] - g[1] + 1
    px, py, gx, gy = p[0] + pw / 2, p[1] + ph / 2, g[0] + gw / 2, g[1] + gh / 2
    return [
        (gx - px) / pw / 0.1,
        (gy - py) / ph / 0.1,
        np.log(gw / pw) / 0.2,
        np.log(gh / ph) / 0.2,
    ]


@pytest.mark.parametrize("flip", [False, True])
def test_batch_labels_targets_and_flips_against_hand_formulas(toy, flip):
    ds, proposals = toy
    config = replace(SAMPLER, flip=flip, copy_paste=0.0)  # the images as they are
    sampler = HierarchicalSampler(ds, proposals, config, UNIT, np.random.default_rng(0))
    k1 = ds.num_classes + 1
    for _ in range(3):  # flip=True: each image is mirrored with probability 0.5
        batch = sampler.batch([0, 1])
        assert batch.bbox_targets.shape == batch.bbox_weights.shape == (len(batch.rois), 4 * k1)
        for b, i in enumerate([0, 1]):
            item, image = ds[i], ds.load_image(i)
            scale = UNIT.scale(item.height, item.width)
            x = batch.images[b, :, : round(item.height * scale), : round(item.width * scale)]
            mirrored = not np.allclose(x, UNIT.network_input(image, scale))
            if mirrored:
                np.testing.assert_allclose(x, UNIT.network_input(image[:, ::-1], scale))
            assert mirrored is False or flip
            gt = item.boxes.astype(float)
            if mirrored:  # ground truth in the mirrored image: x -> W - 1 - x
                gt = np.column_stack(
                    [item.width - 1 - gt[:, 2], gt[:, 1], item.width - 1 - gt[:, 0], gt[:, 3]]
                )
            rows = np.flatnonzero(batch.rois[:, 0] == b)
            for r in rows:
                box = batch.rois[r, 1:].astype(float) / scale
                ious = [pure_iou(box, g) for g in gt]
                j = int(np.argmax(ious))
                assert ious[j] >= 0.1  # never an easy background RoI
                label = int(item.labels[j]) if ious[j] >= 0.5 else 0
                assert batch.labels[r] == label
                expected_t, expected_w = np.zeros(4 * k1), np.zeros(4 * k1)
                if label:
                    expected_t[4 * label : 4 * label + 4] = pure_targets(box, gt[j])
                    expected_w[4 * label : 4 * label + 4] = 1
                np.testing.assert_allclose(batch.bbox_targets[r], expected_t, atol=2e-3)
                np.testing.assert_array_equal(batch.bbox_weights[r], expected_w)
            fg = batch.labels[rows] > 0
            assert fg.sum() <= round(0.25 * 32 // 2) and fg.any()  # 25% of R/N = 16
            boxes = [tuple(r) for r in batch.rois[rows, 1:]]
            assert len(set(boxes)) == len(boxes)  # no RoI repeated


def test_flipped_roi_covers_the_flipped_object():
    # one bright square on black; at scale 1 the mirrored image's RoI for the square must
    # cut out exactly the bright pixels (an off-by-one flip, W - x instead of W - 1 - x,
    # would not)
    from minircnn.data.sampling import class_specific_targets
    from minircnn.ops.boxes import flip_boxes

    image = np.zeros((20, 30, 3), np.uint8)
    image[5:10, 3:8] = 255  # box (3, 5, 7, 9)
    box = np.array([[3.0, 5.0, 7.0, 9.0]])
    x = UNIT.network_input(image, 1.0, flip=True)
    x1, y1, x2, y2 = flip_boxes(box, 30)[0].astype(int)
    assert (x1, x2) == (22, 26)
    assert np.all(x[:, y1 : y2 + 1, x1 : x2 + 1] == 255) and x.sum() == 255 * 3 * 25
    t, w = class_specific_targets(box, box, np.array([2]), 3, (0,) * 4, (1,) * 4)
    assert w[0].tolist() == [0] * 8 + [1] * 4 + [0] * 4 and np.all(t == 0)


def test_multi_scale_training_draws_from_the_scales(toy):
    ds, proposals = toy
    config = replace(SAMPLER, train_scales=(64, 128), flip=False, copy_paste=0.0)
    sampler = HierarchicalSampler(ds, proposals, config, UNIT, np.random.default_rng(0))
    for _ in range(12):
        sampler.batch([0, 1])
    sizes = {min(im.shape[1:]) for im, _ in sampler._images.values()}
    assert sizes == {64, 128}  # both scales were used and cached


def test_default_schedules_in_iterations_on_the_tiny_trainval():
    # 200 trainval images, N = 2 per mini-batch: 100 iterations an epoch. Fast R-CNN: 1600
    # iterations, the drop after 1400; Faster R-CNN, whose step also runs the RPN: 1200, 900
    per_epoch = 200 // 2
    fast, faster = TrainConfig(), faster_rcnn_schedule()
    assert (fast.epochs * per_epoch, fast.lr_step_epochs[0] * per_epoch) == (1600, 1400)
    assert (faster.epochs * per_epoch, faster.lr_step_epochs[0] * per_epoch) == (1200, 900)
    assert faster.sgd == fast.sgd and faster.seed == fast.seed  # only the length differs


def test_epochs_alone_keep_the_drop_at_its_place_in_the_schedule():
    from minircnn.train.command import scaled_drop

    fast, faster = TrainConfig(), faster_rcnn_schedule()
    assert scaled_drop(fast, fast.epochs) == fast.lr_step_epochs[0]  # 14 of 16
    assert scaled_drop(fast, 8) == 7 and scaled_drop(fast, 32) == 28  # the val protocol's
    assert scaled_drop(faster, 24) == 18 and scaled_drop(fast, 1) == 1
