"""The networks: a small VGG-style backbone, the pre-training classifier, and Fast R-CNN.

Fast R-CNN (Girshick 2015, section 2, figure 1):

    image [N, 3, H, W] -> backbone convs -> feature map [N, C, H/s, W/s]      (once per image)
    RoIs [R, 5] -> RoI max pooling P x P -> [R, C*P*P] -> fc6 -> fc7         (per RoI)
         -> cls_score [R, K+1] (softmax over K classes + background)
         -> bbox_pred [R, 4(K+1)] (class-specific box regression)

The backbone is pre-trained as a ``Classifier`` (backbone + last max-pool + fc6 + fc7 +
softmax) and converted as in section 2.2: the last max-pool becomes RoI pooling whose
P x P output matches what fc6 was trained on, and the last FC + softmax are replaced by
the two sibling heads. The math here is pure: no timers, logs or file handling
(``minircnn.timing`` wraps stages from outside; ``minircnn.checkpoint`` saves and loads).
"""

from dataclasses import dataclass

import numpy as np

from minircnn.layers import Conv2d, Dropout, Linear, MaxPool2d, ReLU, RoIPool


@dataclass(frozen=True)
class ModelConfig:
    """Network shape; comments give what the paper's VGG16 uses."""

    num_classes: int  # K object classes, background not counted (VOC: 20)
    # block widths; a 2x2 max-pool follows every block but the last (VGG16: 64..512, 5 blocks)
    conv_channels: tuple[int, ...] = (16, 32, 64)
    convs_per_block: tuple[int, ...] = (1, 1, 2)  # 3x3 conv+ReLU layers (VGG16: 2, 2, 3, 3, 3)
    roi_size: int = 4  # P: RoI pooling output P x P (VGG16: 7)
    fc_dims: tuple[int, int] = (256, 256)  # fc6, fc7 widths (VGG16: 4096, 4096)
    # after fc6 and fc7 (VGG16: 0.5); 0 here: our narrow FC layers underfit the toy set with
    # it (measured mAP@0.5 0.60 with 0.5, 0.64 without)
    dropout: float = 0.0
    freeze_blocks: int = 1  # leading conv blocks kept fixed when fine-tuning (VGG16: conv1-2)

    def __post_init__(self) -> None:
        for name in ("conv_channels", "convs_per_block", "fc_dims"):  # lists (JSON) -> tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.convs_per_block) != len(self.conv_channels):
            raise ValueError(
                f"ModelConfig: convs_per_block {self.convs_per_block} needs one entry per "
                f"block of conv_channels {self.conv_channels}"
            )

    @property
    def stride(self) -> int:
        """Feature-map stride: a 2x2 max-pool after every block but the last."""
        return 2 ** (len(self.conv_channels) - 1)

    @property
    def crop_size(self) -> int:
        """Classifier input size: the last max-pool halves the map to roi_size."""
        return 2 * self.stride * self.roi_size

    @property
    def min_short_side(self) -> int:
        """Smallest shorter image side (px) to detect at: a whole-image RoI then spans at
        least one feature-map cell per RoI-pooling bin. (Below ``stride`` px the max-pools
        have nothing left to pool.)"""
        return self.stride * self.roi_size


class Backbone:
    """Blocks of conv3x3+ReLU layers (``convs_per_block[b]`` in block b, named like VGG's
    ``conv3_1``) with a 2x2 max-pool between blocks (none after the last).

    ``frozen_blocks`` leading blocks are left out of backward: no gradient is computed for
    them or for their inputs (section 4.5: the first layers are generic and cheap to keep).
    """

    def __init__(self, channels, convs_per_block, dtype, rng, frozen_blocks: int = 0) -> None:
        self.blocks = []  # [(layers [(name, conv, relu)], pool or None)]
        c_in = 3
        for b, (c_out, n_convs) in enumerate(zip(channels, convs_per_block, strict=True)):
            layers = []
            for j in range(n_convs):
                conv = Conv2d(c_in, c_out, 3, padding=1, dtype=dtype, rng=rng)
                layers.append((f"conv{b + 1}_{j + 1}", conv, ReLU()))
                c_in = c_out
            self.blocks.append((layers, MaxPool2d(2) if b < len(channels) - 1 else None))
        self.out_channels = c_in
        self.set_frozen(frozen_blocks)

    def set_frozen(self, n: int) -> None:
        """Leave the first ``n`` blocks out of backward (all of them: no conv is trained)."""
        if not 0 <= n <= len(self.blocks):
            raise ValueError(f"freeze_blocks must be in [0, {len(self.blocks)}], got {n}")
        self.frozen_blocks = n
        for b, (layers, _) in enumerate(self.blocks):
            for j, (_, conv, _) in enumerate(layers):
                # the first conv of the lowest trained block needs no input gradient
                conv.need_input_grad = b > n or (b == n and j > 0)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """images [N, 3, H, W] -> feature map [N, C, H/s, W/s] (s = 2^(blocks - 1))."""
        for layers, pool in self.blocks:
            for _, conv, relu in layers:
                x = relu.forward(conv.forward(x))
            if pool is not None:
                x = pool.forward(x)
        return x

    def backward(self, dy: np.ndarray) -> None:
        """Gradient of the feature map -> parameter gradients of the trained blocks (the
        frozen ones are skipped: nothing below them needs a gradient)."""
        for layers, pool in reversed(self.blocks[self.frozen_blocks :]):
            if pool is not None:
                dy = pool.backward(dy)
            for _, conv, relu in reversed(layers):
                dy = conv.backward(relu.backward(dy))

    def named_layers(self):
        return [(name, conv) for layers, _ in self.blocks for name, conv, _ in layers]

    def train_flops(self, n_images: int, height: int, width: int, backward: bool = True) -> float:
        """Multiply-add FLOPs (x2) of one forward+backward over ``[n, 3, height, width]``:
        forward for every conv, plus dW for trained ones, plus dx where it is needed
        (``backward=False``: the forward alone, as in detection)."""
        total = 0.0
        for b, (layers, pool) in enumerate(self.blocks):
            for _, conv, _ in layers:
                f, c = conv.out_channels, conv.in_channels
                passes = 1 + backward * ((b >= self.frozen_blocks) + conv.need_input_grad)
                total += passes * 2 * f * c * 9 * n_images * height * width
            if pool is not None:
                height, width = height // 2, width // 2
        return total

    def trainable_names(self):
        return [name for layers, _ in self.blocks[self.frozen_blocks :] for name, _, _ in layers]


class FCHead:
    """fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout, on flattened pooled features."""

    def __init__(self, in_features, dims, dropout, dtype, rng) -> None:
        self.fc6 = Linear(in_features, dims[0], dtype=dtype, rng=rng)
        self.fc7 = Linear(dims[0], dims[1], dtype=dtype, rng=rng)
        self.seq = [
            self.fc6,
            ReLU(),
            Dropout(dropout, rng),
            self.fc7,
            ReLU(),
            Dropout(dropout, rng),
        ]

    def forward(self, x):
        for layer in self.seq:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.seq):
            dy = layer.backward(dy)
        return dy


class _Network:
    """What both networks share: named parameters, gradients, train/eval."""

    kind = ""

    def named_layers(self) -> list[tuple[str, object]]:
        raise NotImplementedError

    def trainable_names(self) -> list[str]:
        raise NotImplementedError

    def params(self, trainable_only: bool = False) -> dict[str, np.ndarray]:
        """``{"conv1.weight": array, ...}``; the arrays are the layers' own (updated in place)."""
        keep = set(self.trainable_names()) if trainable_only else None
        return {
            f"{name}.{key}": value
            for name, layer in self.named_layers()
            if keep is None or name in keep
            for key, value in layer.params.items()
        }

    def grads(self) -> dict[str, np.ndarray]:
        """Gradients of the trainable parameters from the last backward."""
        keep = set(self.trainable_names())
        return {
            f"{name}.{key}": value
            for name, layer in self.named_layers()
            if name in keep
            for key, value in layer.grads.items()
        }

    def load_params(self, arrays: dict[str, np.ndarray], source: str = "checkpoint") -> None:
        """Copy arrays into the parameters; names and shapes must match exactly."""
        own = self.params()
        if set(own) != set(arrays):
            missing, extra = sorted(set(own) - set(arrays)), sorted(set(arrays) - set(own))
            raise ValueError(
                f"{source} does not match the model: missing {missing}, unexpected {extra}"
            )
        for name, p in own.items():
            if p.shape != arrays[name].shape:
                raise ValueError(
                    f"{source} does not match the model: {name} has shape "
                    f"{arrays[name].shape}, the model expects {p.shape}"
                )
            p[...] = arrays[name]

    def _mode_layers(self):
        """The layers whose forward differs in training and in eval mode: dropout, and RoI
        pooling (which keeps its argmax only for a backward pass)."""
        return [layer for layer in self.head.seq if isinstance(layer, Dropout)]

    def train(self):
        for layer in self._mode_layers():
            layer.train()
        return self

    def eval(self):
        for layer in self._mode_layers():
            layer.eval()
        return self


class Classifier(_Network):
    """Pre-training network: backbone -> 2x2 max-pool -> fc6 -> fc7 -> (K+1)-way scores.

    Input crops ``[B, 3, S, S]`` with ``S = config.crop_size``; output scores ``[B, K+1]``
    (class 0 = background). Stands in for ImageNet pre-training (section 2.2).
    """

    kind = "classifier"

    def __init__(self, config: ModelConfig, rng=None, dtype=np.float32) -> None:
        rng = rng if rng is not None else np.random.default_rng(0)
        self.config = config
        self.backbone = Backbone(config.conv_channels, config.convs_per_block, dtype, rng, 0)
        self.pool5 = MaxPool2d(2)  # the layer that RoI pooling replaces after conversion
        flat = self.backbone.out_channels * config.roi_size**2
        self.head = FCHead(flat, config.fc_dims, config.dropout, dtype, rng)
        self.cls = Linear(config.fc_dims[1], config.num_classes + 1, dtype, rng, weight_std=0.01)

    def forward(self, crops: np.ndarray) -> np.ndarray:
        """crops [B, 3, S, S] -> scores [B, K+1]."""
        pooled = self.pool5.forward(self.backbone.forward(crops))  # [B, C, P, P]
        self._pooled_shape = pooled.shape
        return self.cls.forward(self.head.forward(pooled.reshape(len(crops), -1)))

    def backward(self, dscores: np.ndarray) -> None:
        dflat = self.head.backward(self.cls.backward(dscores))
        dpooled = dflat.reshape(self._pooled_shape)  # [B, C*P*P] -> [B, C, P, P]
        self.backbone.backward(self.pool5.backward(dpooled))

    def named_layers(self):
        return [
            *self.backbone.named_layers(),
            ("fc6", self.head.fc6),
            ("fc7", self.head.fc7),
            ("cls", self.cls),
        ]

    def trainable_names(self):
        return [name for name, _ in self.named_layers()]

    def summary(self, n_crops: int = 1, show: bool = True) -> list:
        """The layer table for ``n_crops`` crops: see ``minircnn.summary.classifier_rows``."""
        from minircnn.summary import classifier_rows, show_rows

        return show_rows(classifier_rows(self, n_crops), show)


class FastRCNN(_Network):
    """Fast R-CNN: forward(images [N, 3, H, W], rois [R, 5]) -> (cls_score [R, K+1],
    bbox_pred [R, 4(K+1)]); backward(dcls, dbbox) runs end to end through RoI pooling
    into the trainable convs."""

    kind = "fast_rcnn"
    proposal_method = "selective_search"  # external proposals (FasterRCNN: "rpn")

    def __init__(self, config: ModelConfig, rng=None, dtype=np.float32) -> None:
        rng = rng if rng is not None else np.random.default_rng(0)
        self.config = config
        self.backbone = Backbone(
            config.conv_channels, config.convs_per_block, dtype, rng, config.freeze_blocks
        )
        self.roi_pool = RoIPool(config.roi_size, 1.0 / config.stride)
        flat = self.backbone.out_channels * config.roi_size**2
        self.head = FCHead(flat, config.fc_dims, config.dropout, dtype, rng)
        k1 = config.num_classes + 1
        # section 2.2: the new layers start from zero-mean Gaussians, std 0.01 and 0.001
        self.cls_score = Linear(config.fc_dims[1], k1, dtype, rng, weight_std=0.01)
        self.bbox_pred = Linear(config.fc_dims[1], 4 * k1, dtype, rng, weight_std=0.001)

    @property
    def fast(self) -> "FastRCNN":
        """The Fast R-CNN part of this network: itself (a FasterRCNN's is its ``fast``), so
        code that needs the detection head reads ``model.fast`` for either kind."""
        return self

    @classmethod
    def from_classifier(cls, classifier: Classifier, config: ModelConfig, rng=None) -> "FastRCNN":
        """Section 2.2 conversion: keep the backbone, fc6 and fc7 of a pre-trained classifier;
        its last max-pool becomes RoI pooling and its classifier gives way to new heads."""
        shape_fields = ("conv_channels", "convs_per_block", "roi_size", "fc_dims")
        if any(getattr(config, f) != getattr(classifier.config, f) for f in shape_fields):
            raise ValueError("from_classifier: the classifier's shape differs from the config's")
        model = cls(config, rng)
        kept = {k: v for k, v in classifier.params().items() if not k.startswith("cls.")}
        own = model.params()
        for name, value in kept.items():
            own[name][...] = value
        return model

    def forward(self, images: np.ndarray, rois: np.ndarray):
        """Figure 1, left to right: images ``[N, 3, H, W]``, rois ``[R, 5]`` (batch index,
        x1, y1, x2, y2 in input pixels) -> (cls_score ``[R, K+1]``, bbox_pred ``[R, 4(K+1)]``).
        """
        features = self.backbone.forward(images)  # [N, C, H/s, W/s], once per image
        return self.forward_head(features, rois)

    def forward_head(self, features: np.ndarray, rois: np.ndarray):
        """The part after the convs: RoI pooling of ``rois [R, 5]`` on ``features [N, C,
        H/s, W/s]`` -> fc6, fc7 -> (cls_score ``[R, K+1]``, bbox_pred ``[R, 4(K+1)]``)."""
        pooled = self.roi_pool.forward(features, rois)  # [R, C, P, P], per RoI
        return self.classify(pooled)

    def classify(self, pooled: np.ndarray):
        """Pooled features ``[R, C, P, P]`` -> fc6, fc7 -> the two sibling heads:
        (cls_score ``[R, K+1]``, bbox_pred ``[R, 4(K+1)]``). R-CNN reuses this on warped crops.
        """
        self._pooled_shape = pooled.shape
        x = self.head.forward(pooled.reshape(len(pooled), -1))  # [R, C*P*P] -> [R, fc7]
        return self.cls_score.forward(x), self.bbox_pred.forward(x)

    def backward(self, dcls: np.ndarray, dbbox: np.ndarray) -> None:
        """Figure 1, right to left: the gradients of the two heads' outputs flow into fc7,
        fc6, back through RoI pooling's argmax (section 2.3) into the trainable convs; with
        every conv fixed, it stops at the pooled features, which nothing below needs."""
        if not self.backbone.trainable_names():
            self.backward_to_head(dcls, dbbox)
            return
        self.backbone.backward(self.backward_to_features(dcls, dbbox))

    def backward_to_features(self, dcls: np.ndarray, dbbox: np.ndarray) -> np.ndarray:
        """The heads' gradients -> the feature map's gradient ``[N, C, H/s, W/s]`` (through
        fc7, fc6 and RoI pooling), without the backbone: Faster R-CNN adds the RPN's."""
        return self.roi_pool.backward(self.backward_to_head(dcls, dbbox))  # [N, C, H/s, W/s]

    def backward_to_head(self, dcls: np.ndarray, dbbox: np.ndarray) -> np.ndarray:
        """The heads' gradients -> the pooled features' gradient ``[R, C, P, P]`` (through
        fc7 and fc6): all that training the fc layers and heads alone needs."""
        dx = self.cls_score.backward(dcls) + self.bbox_pred.backward(dbbox)  # [R, fc7]
        return self.head.backward(dx).reshape(self._pooled_shape)

    def _mode_layers(self):
        return [*super()._mode_layers(), self.roi_pool]

    def named_layers(self):
        return [
            *self.backbone.named_layers(),
            ("fc6", self.head.fc6),
            ("fc7", self.head.fc7),
            ("cls_score", self.cls_score),
            ("bbox_pred", self.bbox_pred),
        ]

    def train_flops(self, images_shape: tuple, n_rois: int) -> float:
        """FLOPs of one training step (forward + backward) on images ``[N, 3, H, W]`` with
        ``n_rois`` RoIs: the backbone's plus 3 products per FC layer per RoI."""
        n, _, height, width = images_shape
        fc = [self.head.fc6, self.head.fc7, self.cls_score, self.bbox_pred]
        return self.backbone.train_flops(n, height, width) + sum(
            3 * 2 * n_rois * layer.in_features * layer.out_features for layer in fc
        )

    def trainable_names(self):
        return [*self.backbone.trainable_names(), "fc6", "fc7", "cls_score", "bbox_pred"]

    def summary(
        self, height: int = 192, width: int = 256, n_rois: int = 128, show: bool = True
    ) -> list:
        """The layer table (name, output shape, stride, receptive field, parameters, FLOPs)
        for one ``height x width`` image and ``n_rois`` RoIs, printed when ``show``: see
        ``minircnn.summary.fast_rcnn_rows``. The last conv's stride s gives RoI pooling's
        ``spatial_scale = 1 / s``."""
        from minircnn.summary import fast_rcnn_rows, show_rows

        return show_rows(fast_rcnn_rows(self, height, width, n_rois), show)
