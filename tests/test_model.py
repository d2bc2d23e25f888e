"""The whole Fast R-CNN in float64: every trainable parameter's gradient from
``FastRCNN.backward`` against finite differences of the multi-task loss (eq. 1)."""

import numpy as np
import pytest

from minircnn.gradcheck import gradcheck
from minircnn.layers.losses import MultiTaskLoss
from minircnn.model import Classifier, FastRCNN, ModelConfig
from minircnn.summary import receptive_fields, spatial_rows

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


def test_summary_matches_hand_computation(capsys):
    """TINY on a 12x14 image with 4 RoIs, worked by hand: output sizes (3x3 convs with
    padding 1 keep the size, 2x2 pools halve it, floor), strides (x2 per pool), receptive
    fields (r += (k - 1) * stride so far), parameters (F*C*k*k + F, in*out + out) and
    FLOPs (2 multiply-adds: 2*F*C*9*H'*W' per conv, 2*R*in*out per FC layer)."""
    model = FastRCNN(TINY)
    rows = model.summary(12, 14, n_rois=4)
    printed = capsys.readouterr().out
    expected = [
        # name, shape, stride, receptive field, params, FLOPs
        ("conv1_1", (1, 3, 12, 14), 1, 3, 3 * 3 * 9 + 3, 2 * 3 * 3 * 9 * 12 * 14),
        ("pool1", (1, 3, 6, 7), 2, 4, 0, 0),  # r = 3 + (2-1)*1
        ("conv2_1", (1, 4, 6, 7), 2, 8, 4 * 3 * 9 + 4, 2 * 4 * 3 * 9 * 6 * 7),  # 4 + 2*2
        ("conv2_2", (1, 4, 6, 7), 2, 12, 4 * 4 * 9 + 4, 2 * 4 * 4 * 9 * 6 * 7),  # 8 + 2*2
        ("roi_pool", (4, 4, 2, 2), None, None, 0, 0),
        ("fc6", (4, 6), None, None, 16 * 6 + 6, 2 * 4 * 16 * 6),  # 16 = C*P*P = 4*2*2
        ("fc7", (4, 5), None, None, 6 * 5 + 5, 2 * 4 * 6 * 5),
        ("cls_score", (4, 3), None, None, 5 * 3 + 3, 2 * 4 * 5 * 3),
        ("bbox_pred", (4, 12), None, None, 5 * 12 + 12, 2 * 4 * 5 * 12),
    ]
    assert [tuple(r) for r in rows] == expected
    assert sum(r.params for r in rows) == sum(p.size for p in model.params().values())
    assert model.roi_pool.spatial_scale == 1 / rows[3].stride == 1 / TINY.stride
    assert printed.splitlines()[0].split()[0] == "layer" and "conv2_2" in printed
    assert "total" in printed.splitlines()[-1]
    # the classifier: the same backbone on a crop_size crop (8 px), then pool5 and 3 FCs
    crop = Classifier(TINY).summary(n_crops=2, show=False)
    assert TINY.crop_size == 8
    assert [(r.name, r.output_shape, r.stride, r.receptive_field) for r in crop[:5]] == [
        ("conv1_1", (1, 3, 8, 8), 1, 3),
        ("pool1", (1, 3, 4, 4), 2, 4),
        ("conv2_1", (1, 4, 4, 4), 2, 8),
        ("conv2_2", (1, 4, 4, 4), 2, 12),
        ("pool5", (1, 4, 2, 2), 4, 14),  # 12 + (2-1)*2
    ]
    assert [(r.name, r.output_shape) for r in crop[5:]] == [
        ("fc6", (2, 6)),
        ("fc7", (2, 5)),
        ("cls", (2, 3)),
    ]


def test_receptive_fields_vgg16():
    """VGG16 up to conv5_3 (13 3x3 convs, 4 2x2 pools): stride 16, receptive field 196 px;
    pool5 212 px; a further 3x3 window on conv5_3 (Faster R-CNN's RPN) 228 px."""
    layers = []
    for b, n in enumerate((2, 2, 3, 3, 3)):
        layers += [(f"conv{b + 1}_{j + 1}", 3, 1) for j in range(n)]
        layers.append((f"pool{b + 1}", 2, 2))
    out = receptive_fields(layers)
    by_name = {name: (j, r) for name, j, r in out}
    assert by_name["conv5_3"] == (16, 196)
    assert by_name["pool5"] == (32, 212)
    assert receptive_fields([*layers[:-1], ("rpn_conv", 3, 1)])[-1][1:] == (16, 228)


def test_spatial_rows_of_a_dilated_conv():
    """A 3x3 conv with dilation 2 and padding 2 keeps a 9 x 10 map's size and sees 5 x 5
    pixels; after a stride-2 pool, the same conv adds 2 * 2 * 2 = 8 pixels of field."""
    from minircnn.layers import Conv2d, MaxPool2d

    layers = [
        ("dilated", Conv2d(3, 4, 3, padding=2, dilation=2)),
        ("pool", MaxPool2d(2)),
        ("dilated2", Conv2d(4, 4, 3, padding=2, dilation=2)),
    ]
    rows = spatial_rows(layers, 9, 10)
    assert [(r.output_shape, r.stride, r.receptive_field) for r in rows] == [
        ((1, 4, 9, 10), 1, 5),
        ((1, 4, 4, 5), 2, 6),
        ((1, 4, 4, 5), 2, 14),
    ]
    assert rows[0].flops == 2 * 4 * 3 * 9 * 9 * 10  # the taps' count, not their extent


def test_eval_and_train_switch_dropout_and_roi_pooling():
    """``eval()`` (detection) puts dropout and RoI pooling in eval mode, Faster R-CNN's
    included; ``train()`` puts them back."""
    from minircnn.faster_rcnn import FasterRCNN
    from minircnn.layers import Dropout

    config = ModelConfig(**{**TINY.__dict__, "dropout": 0.5})
    for model in (FastRCNN(config), FasterRCNN(config)):
        fast = model.fast if isinstance(model, FasterRCNN) else model
        dropouts = [layer for layer in fast.head.seq if isinstance(layer, Dropout)]
        switched = [fast.roi_pool, *dropouts]
        assert len(switched) == 3  # RoI pooling, and dropout after fc6 and after fc7
        model.eval()
        assert not any(layer.training for layer in switched)
        model.train()
        assert all(layer.training for layer in switched)
