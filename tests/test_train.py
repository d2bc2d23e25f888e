"""Training: SGD lowers the loss, overfitting, exact resume, refusal, NaN stop, sampling."""

from dataclasses import replace

import numpy as np
import pytest

from minircnn.data import toyvoc
from minircnn.data.sampling import HierarchicalSampler, SamplerConfig, sample_rois
from minircnn.data.voc import VOCDataset
from minircnn.layers.losses import MultiTaskLoss
from minircnn.model import Classifier, FastRCNN, ModelConfig, load_model, save_checkpoint
from minircnn.optim import SGD, SGDConfig
from minircnn.proposals.cache import ProposalConfig, load_or_compute
from minircnn.train import TrainConfig, Trainer, TrainingDiverged

SMALL = ModelConfig(
    num_classes=5,
    conv_channels=(8, 16),
    convs_per_block=(1, 2),
    roi_size=2,
    fc_dims=(32, 32),
    dropout=0.0,
    freeze_blocks=0,
)
SAMPLER = SamplerConfig(rois_per_batch=32, short_side=96, max_side=128)


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


def make_trainer(toy, run_dir, config=SMALL, epochs=2, seed=0):
    ds, proposals = toy
    rng = np.random.default_rng(seed)
    model = FastRCNN(config, rng)
    sampler = HierarchicalSampler(ds, proposals, SAMPLER, np.full(3, 110.0), np.full(3, 60.0), rng)
    meta = {"classes": list(ds.classes)}
    return Trainer(model, sampler, TrainConfig(epochs=epochs, lr=0.01), run_dir, meta, rng)


def step_loss(model, batch):
    cls, bbox = model.forward(batch.images, batch.rois)
    return MultiTaskLoss().forward(cls, bbox, batch.labels, batch.bbox_targets, batch.bbox_weights)


def test_one_sgd_step_lowers_the_loss(toy, tmp_path):
    trainer = make_trainer(toy, tmp_path)
    batch = trainer.sampler.batch([0, 1])
    before = step_loss(trainer.model, batch).total
    trainer.step(batch)
    assert step_loss(trainer.model, batch).total < before


def test_overfits_two_images(toy, tmp_path):
    trainer = make_trainer(toy, tmp_path)
    batch = trainer.sampler.batch([0, 1])
    first = step_loss(trainer.model, batch)
    for _ in range(300):
        losses, _, _ = trainer.step(batch)
        trainer.iteration += 1
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
    with pytest.raises(TrainingDiverged, match=r"loss is nan at iteration 2; .*checkpoint.npz"):
        trainer.run(progress=False)
    assert trainer.checkpoint_path.read_bytes() == saved


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
    trainer.step(trainer.sampler.batch([0, 1]))
    assert "conv1_1.weight" not in trainer.model.grads()
    np.testing.assert_array_equal(trainer.model.params()["conv1_1.weight"], before)


def test_sgd_bias_rules_by_hand():
    params = {"w.weight": np.array([1.0]), "w.bias": np.array([1.0])}
    opt = SGD(params, SGDConfig(lr=0.1, momentum=0.9, weight_decay=0.5, steps=(1,)))
    opt.step({"w.weight": np.array([2.0]), "w.bias": np.array([2.0])}, iteration=0)
    # weight: v = 0.1 * (2 + 0.5 * 1) = 0.25; bias: v = 0.2 * 2 = 0.4 (2x lr, no decay)
    np.testing.assert_allclose(params["w.weight"], [0.75])
    np.testing.assert_allclose(params["w.bias"], [0.6])
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


def test_sampling_fills_from_what_exists():
    rng = np.random.default_rng(1)
    cfg = SamplerConfig()
    only_fg = np.array([1.0, 0.9, 0.8])  # gt boxes only: no background in range
    keep, is_fg = sample_rois(only_fg, 8, cfg, rng)
    assert len(keep) == 8 and is_fg.all()
    no_fg = np.array([0.0, 0.05, 0.3])  # no foreground (e.g. an image without objects)
    keep, is_fg = sample_rois(no_fg, 8, cfg, rng)
    assert len(keep) == 8 and not is_fg.any()


def test_batch_targets_and_weights(toy):
    ds, proposals = toy
    sampler = HierarchicalSampler(
        ds, proposals, SAMPLER, np.zeros(3), np.ones(3), np.random.default_rng(0)
    )
    batch = sampler.batch([0, 1])
    k1 = ds.num_classes + 1
    assert batch.images.shape[:2] == (2, 3) and batch.rois.shape == (32, 5)
    assert batch.bbox_targets.shape == batch.bbox_weights.shape == (32, 4 * k1)
    for label, w in zip(batch.labels, batch.bbox_weights, strict=True):
        expected = np.zeros(4 * k1)
        if label > 0:
            expected[4 * label : 4 * label + 4] = 1
        np.testing.assert_array_equal(w, expected)
    assert (batch.labels > 0).any()  # every image has foreground: its gt boxes are candidates
    assert set(np.unique(batch.rois[:, 0])) == {0.0, 1.0}


def test_multi_scale_training_draws_from_the_scales(toy):
    ds, proposals = toy
    config = replace(SAMPLER, train_scales=(64, 128), flip=False)
    sampler = HierarchicalSampler(
        ds, proposals, config, np.zeros(3), np.ones(3), np.random.default_rng(0)
    )
    for _ in range(12):
        sampler.batch([0, 1])
    sizes = {min(im.shape[1:]) for im, _ in sampler._images.values()}
    assert sizes == {64, 128}  # both scales were used and cached
