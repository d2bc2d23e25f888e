"""The whole Fast R-CNN in float64: every trainable parameter's gradient from
``FastRCNN.backward`` against finite differences of the multi-task loss (eq. 1)."""

import numpy as np
import pytest

from minircnn.gradcheck import gradcheck
from minircnn.layers.losses import MultiTaskLoss
from minircnn.model import FastRCNN, ModelConfig

TINY = ModelConfig(
    num_classes=2,
    conv_channels=(3, 4),
    convs_per_block=(1, 2),
    roi_size=2,
    fc_dims=(6, 5),
    dropout=0.0,
)


@pytest.mark.parametrize("frozen", [0, 1])
def test_whole_model_gradcheck_float64(frozen):
    rng = np.random.default_rng(0)
    config = ModelConfig(**{**TINY.__dict__, "freeze_blocks": frozen})
    model = FastRCNN(config, rng, dtype=np.float64).train()
    for p in model.params().values():  # larger heads, so every term matters
        p[...] = rng.standard_normal(p.shape) * 0.5
    images = rng.standard_normal((2, 3, 12, 14))
    rois = np.array(
        [[0, 0, 0, 13, 11], [0, 2, 3, 9, 10], [1, 4, 1, 12, 8], [1, 0, 5, 7, 11]], np.float64
    )
    labels = np.array([1, 0, 2, 1])
    targets = rng.standard_normal((4, 12))
    weights = np.zeros((4, 12))
    for r, k in enumerate(labels):
        weights[r, 4 * k : 4 * k + 4] = 1.0 if k else 0.0
    loss = MultiTaskLoss()

    def f():
        return loss.forward(*model.forward(images, rois), labels, targets, weights).total

    f()
    model.backward(*loss.backward())
    grads = {k: v.copy() for k, v in model.grads().items()}
    expected = {f"{name}.{p}" for name in model.trainable_names() for p in ("weight", "bias")}
    assert set(grads) == expected
    assert ("conv1_1.weight" in grads) == (frozen == 0)
    params = model.params()
    for name, g in grads.items():
        err = gradcheck(f, params[name], g, num_checks=20)
        assert err < 1e-6, (name, err)
