"""Faster R-CNN (Ren et al., NIPS 2015): Fast R-CNN whose proposals come from a region
proposal network on its own feature map: a few more conv layers on features computed
anyway, instead of a separate algorithm per image.

    image [N, 3, H, W] -> backbone convs -> feature map [N, C, H/s, W/s]      (once)
        -> RPN head -> objectness [N, 2A, H/s, W/s], deltas [N, 4A, H/s, W/s]
           -> proposals: top-N, decode at the anchors, clip, NMS 0.7   (no gradient)
        -> RoI pooling of the proposals -> fc6 -> fc7 -> the two heads  (Fast R-CNN)

The backbone, RoI pooling and heads are a ``FastRCNN``'s (``self.fast``); the RPN
(``minircnn.rpn``) adds a 3x3 conv (dilated: its taps 2 cells apart) and two 1x1 convs.
Trained by approximate joint training (section 3.2): the RPN loss and the Fast R-CNN loss
both flow into the shared convs, and the proposals are treated as constants
(``minircnn.train.joint``); or by the 4-step alternating scheme of the same section
(``minircnn.train.alternating``).
"""

from dataclasses import dataclass

import numpy as np

from minircnn.model import Classifier, FastRCNN, ModelConfig, _Network
from minircnn.rpn import (
    AnchorConfig,
    AnchorTargetConfig,
    RPNHead,
    RPNProposalConfig,
    grid_anchors,
    propose_batch,
)


@dataclass(frozen=True)
class RPNConfig:
    """Everything about the RPN that a checkpoint must remember; comments give the paper's.

    Defaults chosen on the toy val split (trained on train for 800 iterations, the learning
    rate dropped after 300 in these comparisons; mAP@0.5 0.629 with these, 0.648 with the
    defaults' drop after 600, against 0.815 for the selective-search Fast R-CNN):
    loss weight 3 gave 0.612, 512 anchors per image 0.619, a positive IoU of 0.6 was worse
    too (with the later defaults, 0.6 and 0.5 both beat 0.7: see ``AnchorTargetConfig``);
    anchors and top-N: see their classes. ``mid_channels``: see its comment.
    """

    anchors: AnchorConfig = AnchorConfig()  # 3 scales x 3 ratios (here 6 x 3, see there)
    targets: AnchorTargetConfig = AnchorTargetConfig()  # IoU 0.5 (paper 0.7) / 0.3, 256 per image
    proposals: RPNProposalConfig = RPNProposalConfig()  # NMS 0.7, top-N before and after
    loss_weight: float = 10.0  # lambda of the RPN's eq. 1 (paper: 10)
    # the n x n conv's width (paper: the backbone's, here 64; None takes it). 32 halves
    # the RPN head's arithmetic, at 64 about a third of a joint step's. On val (trained on
    # train for 1200 iterations, seeds 0, 1, 2): mAP@0.5 0.831 against 0.830 with 64 (in
    # the first measurements, 800 iterations with an early drop, 32 lost: 0.596 against
    # 0.629); the time saved pays for a longer schedule.
    mid_channels: int | None = 32
    window: int = 3  # n of the n x n sliding window (paper: 3)
    # the window's taps are this many cells apart (paper: 1, adjacent cells). With 2 the
    # 3 x 3 window spans 5 x 5 cells: every cell's scores and deltas see 42 px instead of
    # 34 for the same arithmetic, where objects reach 90 px (VGG16's RPN sees 228 px at
    # stride 16). On val (trained on train for 1200 iterations, seeds 0 to 4): mAP@0.5
    # 0.857 against 0.852 with 1, by area 0.896 against 0.887 (AP@[.5:.95] 0.596 against
    # 0.581); with 1000 iterations (seeds 0, 1, 2) 0.848 both ways; with 3, 0.838.
    dilation: int = 2


class FasterRCNN(_Network):
    """Faster R-CNN on minircnn's layers. The stages are separate methods because the
    proposals are made between them (and are constants for what follows):

    - ``forward_rpn(images)`` -> (features, rpn_scores, rpn_deltas)
    - ``proposals(rpn_scores, rpn_deltas, image_sizes, scales, training)`` -> RoIs
    - ``forward_head(features, rois)`` -> (cls_score, bbox_pred), as ``FastRCNN``
    - ``backward(dcls, dbbox, drpn_scores, drpn_deltas)``: both losses into the convs.
    """

    kind = "faster_rcnn"
    proposal_method = "rpn"

    def __init__(
        self, config: ModelConfig, rpn_config: RPNConfig = RPNConfig(), rng=None, dtype=np.float32
    ) -> None:
        rng = rng if rng is not None else np.random.default_rng(0)
        self.config, self.rpn_config = config, rpn_config
        self.fast = FastRCNN(config, rng, dtype)
        self.rpn = RPNHead(
            self.fast.backbone.out_channels,
            rpn_config.anchors.num_anchors,
            rpn_config.mid_channels,
            dtype=dtype,
            rng=rng,
            window=rpn_config.window,
            dilation=rpn_config.dilation,
        )
        self._anchors: dict[tuple[int, int], np.ndarray] = {}

    @classmethod
    def from_classifier(
        cls, classifier: Classifier, config: ModelConfig, rpn_config: RPNConfig, rng=None
    ) -> "FasterRCNN":
        """Fast R-CNN's conversion (section 2.2) of the shared layers; the RPN is new
        (N(0, 0.01^2) weights, Faster R-CNN section 3.1.3)."""
        model = cls(config, rpn_config, rng)
        model.fast = FastRCNN.from_classifier(classifier, config, rng)
        return model

    def anchors(self, height: int, width: int) -> np.ndarray:
        """The anchors ``[height*width*A, 4]`` of a feature map of that size (cached)."""
        key = (height, width)
        if key not in self._anchors:
            self._anchors[key] = grid_anchors(
                height, width, self.config.stride, self.rpn_config.anchors
            )
        return self._anchors[key]

    def forward_rpn(self, images: np.ndarray):
        """images ``[N, 3, H, W]`` -> (features ``[N, C, H/s, W/s]``, rpn_scores
        ``[N, 2A, H/s, W/s]``, rpn_deltas ``[N, 4A, H/s, W/s]``): the one conv pass that
        both the RPN and Fast R-CNN's head use."""
        features = self.fast.backbone.forward(images)
        rpn_scores, rpn_deltas = self.rpn.forward(features)
        return features, rpn_scores, rpn_deltas

    def proposals(self, rpn_scores, rpn_deltas, image_sizes, scales, training: bool):
        """RoIs ``[R, 5]`` (batch index, x1, y1, x2, y2 in input pixels) and their
        objectness ``[R]`` from the RPN's outputs (``rpn.propose_batch``); ``image_sizes``:
        each input's (height, width) before padding; ``scales``: input over original."""
        _, _, h, w = rpn_scores.shape
        return propose_batch(
            rpn_scores,
            rpn_deltas,
            self.anchors(h, w),
            image_sizes,
            scales,
            self.rpn_config.proposals,
            training,
        )

    def forward_head(self, features: np.ndarray, rois: np.ndarray):
        """Fast R-CNN on the shared features: RoI pooling of ``rois [R, 5]`` -> fc6, fc7
        -> (cls_score ``[R, K+1]``, bbox_pred ``[R, 4(K+1)]``)."""
        return self.fast.forward_head(features, rois)

    def backward(self, dcls, dbbox, drpn_scores, drpn_deltas) -> None:
        """Both losses' gradients meet on the shared feature map (approximate joint
        training: nothing flows through the proposals' coordinates) and go into the convs."""
        dfeatures = self.fast.backward_to_features(dcls, dbbox)
        dfeatures += self.rpn.backward(drpn_scores, drpn_deltas)
        self.fast.backbone.backward(dfeatures)

    def backward_rpn(self, drpn_scores, drpn_deltas) -> None:
        """The RPN's loss alone into its head and the convs (alternating training)."""
        self.fast.backbone.backward(self.rpn.backward(drpn_scores, drpn_deltas))

    def named_layers(self):
        return [*self.fast.named_layers(), *self.rpn.named_layers()]

    def trainable_names(self):
        return [*self.fast.trainable_names(), *self.rpn.trainable_names()]

    def _mode_layers(self):
        return self.fast._mode_layers()

    def train_flops(self, images_shape: tuple, n_rois: int) -> float:
        """FLOPs of one joint training step: Fast R-CNN's plus the RPN head's three convs
        (forward, dW and dx) on the feature map."""
        n, _, height, width = images_shape
        h, w = height // self.config.stride, width // self.config.stride
        per_cell = sum(conv.params["weight"].size for _, conv in self.rpn.named_layers())
        return self.fast.train_flops(images_shape, n_rois) + 3 * 2 * n * h * w * per_cell
