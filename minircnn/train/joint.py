"""Faster R-CNN by approximate joint training (Ren et al. 2015, section 3.2).

One network, one SGD step on the sum of two losses: the RPN's (eq. 1 of Faster R-CNN) on
its anchors, and Fast R-CNN's (eq. 1 of Fast R-CNN) on RoIs sampled from the proposals
the RPN has just made. Both gradients reach the shared convs. The proposals are treated
as constants: their coordinates depend on the RPN's outputs, but that derivative is
ignored ("approximate"), which the paper finds works as well as the 4-step alternating
scheme while training 25-50% faster.
"""

import numpy as np

from minircnn.data.image import pad_batch
from minircnn.faster_rcnn import FasterRCNN
from minircnn.rpn import RPNLoss, batch_anchor_targets
from minircnn.timing import time_calls
from minircnn.train.trainer import StepResult, Trainer


class JointTrainer(Trainer):
    """A Trainer whose step trains a ``FasterRCNN``: everything else (epochs, the
    learning-rate schedule, checkpoints, resume, the divergence stop) is the Trainer's."""

    def __init__(self, model: FasterRCNN, *args, **kwargs) -> None:
        super().__init__(model, *args, **kwargs)
        self.rpn_loss = RPNLoss(model.rpn_config.loss_weight)
        time_calls(self.timer, "sampling", self.sampler, "view", "batch_from_proposals")
        time_calls(self.timer, "rpn_targets", self, "_anchor_targets")
        time_calls(self.timer, "proposals", model, "proposals")
        time_calls(self.timer, "loss", self.rpn_loss, "forward", "backward")

    def step(self, image_indices) -> StepResult:
        """One SGD iteration of Faster R-CNN on the images ``image_indices``."""
        views, images, sizes = self._views(image_indices)
        features, rpn_scores, rpn_deltas = self.model.train().forward_rpn(images)
        targets = self._anchor_targets(views, sizes, rpn_scores.shape)  # section 3.1.2
        rpn_losses = self.rpn_loss.forward(rpn_scores, rpn_deltas, *targets)  # RPN eq. 1
        self._stop_if_diverged(rpn_losses)  # before non-finite scores reach the proposals
        rois, _ = self.model.proposals(  # constants from here on (section 3.2)
            rpn_scores, rpn_deltas, sizes, [v.scale for v in views], training=True
        )
        batch = self.sampler.batch_from_proposals(views, rois)  # Fast R-CNN section 2.3
        cls_score, bbox_pred = self.model.forward_head(features, batch.rois)
        losses = self.loss.forward(  # Fast R-CNN eq. 1
            cls_score, bbox_pred, batch.labels, batch.bbox_targets, batch.bbox_weights
        )
        self._stop_if_diverged(losses, rpn_losses)
        self.model.backward(*self.loss.backward(), *self.rpn_loss.backward())
        grad_norm = self.optimizer.step(self.model.grads(), self.iteration)  # momentum SGD
        self.flops += self.model.train_flops(images.shape, len(batch.rois))
        self.iteration += 1
        accuracy = float(np.mean(cls_score.argmax(axis=1) == batch.labels))
        return StepResult(losses, grad_norm, accuracy, rpn_losses)

    def _views(self, image_indices):
        """The images as this step sees them (mirrored, rescaled), their padded batch
        ``[N, 3, H, W]`` and each one's (height, width) before padding."""
        views = [self.sampler.view(i) for i in image_indices]
        return views, pad_batch([v.image for v in views]), [v.image.shape[1:] for v in views]

    def _anchor_targets(self, views, sizes, rpn_shape):
        """Labels and regression targets of every anchor of the batch's feature map."""
        anchors = self.model.anchors(*rpn_shape[2:])
        gt = [self.sampler.gt_boxes(v) for v in views]
        return batch_anchor_targets(anchors, gt, sizes, self.rng, self.model.rpn_config.targets)
