"""Faster R-CNN by 4-step alternating training (Ren et al. 2015, section 3.2).

The paper's first way to make the RPN and Fast R-CNN share their convs (approximate joint
training, ``train.joint``, is the other, and our default):

1. Train an RPN, its convs starting from the pre-trained classifier's.
2. Train a separate Fast R-CNN, also from the pre-trained convs, on step 1's proposals.
3. Put step 1's RPN head on step 2's convs, fix the convs, and fine-tune the RPN head.
4. With the convs still fixed, fine-tune Fast R-CNN's own layers (fc6, fc7, the two
   heads) on step 3's proposals.

After step 3 the two networks share step 2's convs, so the result is one ``FasterRCNN``.
Each step runs the whole fine-tuning schedule (by default ``faster_rcnn_schedule()``); the
proposals of steps 2 and 4 come from a fixed RPN (step 1's in step 2, step 3's in step 4)
as each batch is drawn, on the image as the step sees it (scaled, perhaps mirrored), and
are constants, as in joint training.
"""

import time
from pathlib import Path

from minircnn.faster_rcnn import FasterRCNN
from minircnn.model import FastRCNN
from minircnn.train.joint import JointTrainer
from minircnn.train.trainer import StepResult

STEPS = ("step 1 (RPN)", "step 2 (Fast R-CNN)", "step 3 (RPN head)", "step 4 (Fast R-CNN head)")


def _layers_params(model: FasterRCNN, layer_names) -> dict:
    """The parameters of the named layers (``model.params`` keys are ``layer.param``)."""
    keep = set(layer_names)
    return {k: v for k, v in model.params().items() if k.split(".")[0] in keep}


class RPNTrainer(JointTrainer):
    """Steps 1 and 3: SGD on the RPN's loss alone, into the RPN head and the backbone's
    trained blocks (none once they are fixed, in step 3)."""

    def trained_params(self) -> dict:
        backbone = self.model.fast.backbone
        return _layers_params(
            self.model, [*backbone.trainable_names(), *self.model.rpn.trainable_names()]
        )

    def step(self, image_indices) -> StepResult:
        """One SGD iteration of the RPN on the images ``image_indices``."""
        views, images, sizes = self._views(image_indices)
        _, rpn_scores, rpn_deltas = self.model.train().forward_rpn(images)
        targets = self._anchor_targets(views, sizes, rpn_scores.shape)  # section 3.1.2
        rpn_losses = self.rpn_loss.forward(rpn_scores, rpn_deltas, *targets)  # RPN eq. 1
        self._stop_if_diverged(rpn_losses)
        self.model.backward_rpn(*self.rpn_loss.backward())
        grad_norm = self.optimizer.step(self.model.grads(), self.iteration)
        self.flops += self.model.train_flops(images.shape, 0)
        self.iteration += 1
        return StepResult(None, grad_norm, float("nan"), rpn_losses)


class FixedRPNTrainer(JointTrainer):
    """Steps 2 and 4: Fast R-CNN's loss on the proposals of a fixed RPN (``proposer``),
    into Fast R-CNN's layers: its fc layers and heads, and the backbone's trained blocks
    (none once they are fixed, in step 4, where ``proposer`` is the model itself)."""

    def __init__(self, model: FasterRCNN, proposer: FasterRCNN, *args, **kwargs) -> None:
        super().__init__(model, *args, **kwargs)
        self.proposer = proposer

    def trained_params(self) -> dict:
        return _layers_params(self.model, self.model.fast.trainable_names())

    def step(self, image_indices) -> StepResult:
        """One SGD iteration of Fast R-CNN on the images ``image_indices``."""
        views, images, sizes = self._views(image_indices)
        features, rpn_scores, rpn_deltas = self.proposer.eval().forward_rpn(images)
        rois, _ = self.proposer.proposals(  # constants (section 3.2)
            rpn_scores, rpn_deltas, sizes, [v.scale for v in views], training=True
        )
        if self.proposer is not self.model:  # step 2: two networks, two conv passes
            features = self.model.fast.backbone.forward(images)
        batch = self.sampler.batch_from_proposals(views, rois)  # Fast R-CNN section 2.3
        cls_score, bbox_pred = self.model.train().forward_head(features, batch.rois)
        losses = self.loss.forward(
            cls_score, bbox_pred, batch.labels, batch.bbox_targets, batch.bbox_weights
        )
        self._stop_if_diverged(losses)
        self.model.fast.backward(*self.loss.backward())  # step 4: the fc layers and heads
        grad_norm = self.optimizer.step(self.model.grads(), self.iteration)
        self.flops += self.model.fast.train_flops(images.shape, len(batch.rois))
        self.iteration += 1
        accuracy = float((cls_score.argmax(axis=1) == batch.labels).mean())
        return StepResult(losses, grad_norm, accuracy)


def train_alternating(
    first: FasterRCNN, fresh: FastRCNN, run_dir, make_trainer, progress, lengths=(1, 1, 1, 1)
):
    """The four steps. ``first``: a FasterRCNN converted from the pre-trained classifier
    (trained in step 1); ``fresh``: a FastRCNN converted from it too (step 2's).
    ``make_trainer(cls, model, run_dir, length, *extra)`` builds a trainer on the run's
    sampler and header, its schedule ``length`` times the run's (``lengths``: one per
    step). Steps 1-3 write their checkpoints under ``run_dir/alternating``; step 4 writes
    the final FasterRCNN's to ``run_dir``. Returns (step 4's trainer, the seconds of each
    step)."""
    steps_dir, wall = Path(run_dir) / "alternating", {}
    model = FasterRCNN(first.config, first.rpn_config)
    model.fast, model.rpn = fresh, first.rpn  # step 2's network, step 1's RPN head
    frozen_default = fresh.backbone.frozen_blocks
    plan = [
        (RPNTrainer, first, steps_dir / "step1", ()),
        (FixedRPNTrainer, model, steps_dir / "step2", (first,)),
        (RPNTrainer, model, steps_dir / "step3", ()),
        (FixedRPNTrainer, model, run_dir, (model,)),
    ]
    try:
        for k, (cls, net, folder, extra) in enumerate(plan):
            if k == 2:  # from step 3 on, the shared convs stay as step 2 left them
                model.fast.backbone.set_frozen(len(model.fast.backbone.blocks))
                model.rpn.conv.need_input_grad = False  # nothing below it learns now
            t0 = time.perf_counter()
            trainer = make_trainer(cls, net, folder, lengths[k], *extra)
            if progress:
                print(f"alternating training, {STEPS[k]}")
            trainer.run(progress=progress)
            wall[STEPS[k]] = time.perf_counter() - t0
    finally:  # the model as built, also when a step diverged
        model.fast.backbone.set_frozen(frozen_default)
        model.rpn.conv.need_input_grad = True
    return trainer, wall
