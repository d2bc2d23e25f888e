"""4-step alternating training: which parameters each step moves, and that the four
steps leave one network whose convs are step 2's, RPN head step 3's and Fast R-CNN
layers step 4's."""

import numpy as np
from test_faster_rcnn import PRE, SMALL, SMALL_RPN

from minircnn.checkpoint import read_checkpoint
from minircnn.data.sampling import HierarchicalSampler, SamplerConfig
from minircnn.faster_rcnn import FasterRCNN
from minircnn.model import FastRCNN
from minircnn.optim import SGDConfig
from minircnn.train import TrainConfig
from minircnn.train.alternating import FixedRPNTrainer, RPNTrainer, train_alternating
from minircnn.train.trainer import scaled_schedule

BACKBONE = ("conv1_1", "conv2_1", "conv2_2")
RPN = ("rpn_conv", "rpn_cls_score", "rpn_bbox_pred")
FAST = ("fc6", "fc7", "cls_score", "bbox_pred")


def _make_trainer(ds, rng, epochs=1):
    sampler = HierarchicalSampler(ds, None, SamplerConfig(rois_per_batch=32), PRE, rng)
    config = TrainConfig(epochs=epochs, sgd=SGDConfig(lr=0.01))

    def make(cls, net, folder, length=1.0, *extra):
        step_config = scaled_schedule(config, length)
        return cls(net, *extra, sampler, step_config, folder, {"classes": list(ds.classes)}, rng)

    return make


def _moved(before: dict, model) -> set[str]:
    """The layers whose bias changed. Biases, not weights: SGD's weight decay moves every
    weight it holds, so only a bias shows that a gradient reached the layer."""
    params = model.params()
    return {
        k.split(".")[0]
        for k, v in before.items()
        if k.endswith(".bias") and not np.array_equal(params[k], v)
    }


def _snapshot(model) -> dict:
    return {k: v.copy() for k, v in model.params().items()}


def test_rpn_step_moves_the_rpn_and_trained_convs_only(rpn_toy, tmp_path):
    rng = np.random.default_rng(0)
    model = FasterRCNN(SMALL, SMALL_RPN, rng)  # block 1 frozen by default
    trainer = _make_trainer(rpn_toy, rng)(RPNTrainer, model, tmp_path)
    before = _snapshot(model)
    result = trainer.step([0, 1])
    assert result.losses is None and np.isfinite(result.rpn_losses.total)
    assert _moved(before, model) == {"conv2_1", "conv2_2", *RPN}
    model.fast.backbone.set_frozen(2)  # step 3: all convs fixed
    trainer = _make_trainer(rpn_toy, rng)(RPNTrainer, model, tmp_path)
    before = _snapshot(model)
    trainer.step([0, 1])
    assert _moved(before, model) == set(RPN)


def test_fixed_rpn_step_moves_fast_rcnn_only(rpn_toy, tmp_path):
    rng = np.random.default_rng(1)
    proposer = FasterRCNN(SMALL, SMALL_RPN, rng)
    model = FasterRCNN(SMALL, SMALL_RPN, rng)
    trainer = _make_trainer(rpn_toy, rng)(FixedRPNTrainer, model, tmp_path, 1.0, proposer)
    before, proposer_before = _snapshot(model), _snapshot(proposer)
    result = trainer.step([0, 1])
    assert np.isfinite(result.losses.total) and result.rpn_losses is None
    assert _moved(before, model) == {"conv2_1", "conv2_2", *FAST}
    assert _moved(proposer_before, proposer) == set()
    model.fast.backbone.set_frozen(2)  # step 4: the model proposes for itself
    trainer = _make_trainer(rpn_toy, rng)(FixedRPNTrainer, model, tmp_path, 1.0, model)
    before = _snapshot(model)
    trainer.step([0, 1])
    assert _moved(before, model) == set(FAST)


def test_four_steps_share_step_twos_convs(rpn_toy, tmp_path):
    rng = np.random.default_rng(2)
    first = FasterRCNN(SMALL, SMALL_RPN, rng)
    fresh = FastRCNN(SMALL, rng)
    first_start, fresh_start = _snapshot(first), _snapshot(fresh)
    trainer, wall = train_alternating(first, fresh, tmp_path, _make_trainer(rpn_toy, rng), False)
    assert list(wall) == [
        "step 1 (RPN)",
        "step 2 (Fast R-CNN)",
        "step 3 (RPN head)",
        "step 4 (Fast R-CNN head)",
    ]
    final = trainer.model
    assert final.fast is fresh and final.rpn is first.rpn
    assert final.fast.backbone.frozen_blocks == SMALL.freeze_blocks  # restored
    steps = {
        k: read_checkpoint(tmp_path / "alternating" / f"step{k}" / "checkpoint.npz")[1]
        for k in (1, 2, 3)
    }
    steps[4] = read_checkpoint(tmp_path / "checkpoint.npz")[1]

    def layer_params(k, names) -> dict:  # {"conv2_1.bias": array, ...} after step k
        return {
            p[len("param/") :]: v
            for p, v in steps[k].items()
            if p.startswith("param/") and p[len("param/") :].split(".")[0] in names
        }

    def same(a, b, names):  # every parameter of these layers equal after steps a and b
        after_b = layer_params(b, names)
        return all(np.array_equal(v, after_b[p]) for p, v in layer_params(a, names).items())

    def trained(before: dict, k, names):  # each layer's bias moved (see _moved)
        after = layer_params(k, names)
        return all(not np.array_equal(before[f"{n}.bias"], after[f"{n}.bias"]) for n in names)

    assert trained(first_start, 1, RPN)  # step 1 trained the RPN
    assert trained(fresh_start, 2, ["conv2_1", "conv2_2", *FAST])  # step 2 a new Fast R-CNN
    assert same(1, 2, RPN)  # the RPN head as step 1 left it until step 3 trained it
    assert trained(layer_params(2, RPN), 3, RPN)
    assert same(2, 3, BACKBONE) and same(3, 4, BACKBONE)  # convs fixed after step 2
    assert same(3, 4, RPN) and same(2, 3, FAST)
    assert trained(layer_params(3, FAST), 4, FAST)  # step 4 trained Fast R-CNN's layers


def test_scaled_schedule():
    config = TrainConfig(epochs=16, lr_step_epochs=(12,))
    assert scaled_schedule(config, 1) is config
    half, quarter = scaled_schedule(config, 0.5), scaled_schedule(config, 0.25)
    assert (half.epochs, half.lr_step_epochs) == (8, (6,))
    assert (quarter.epochs, quarter.lr_step_epochs) == (4, (3,))
    assert scaled_schedule(config, 0.01).epochs == 1  # never below one epoch
