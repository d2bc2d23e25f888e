"""The Trainer: one Fast R-CNN iteration in ``Trainer.step``, epochs, checkpoints, resume."""

import csv
import json
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minircnn.checkpoint import (
    CheckpointError,
    checkpoint_config,
    read_checkpoint,
    recorded_rpn,
    save_checkpoint,
    with_prefix,
)
from minircnn.data.sampling import HierarchicalSampler
from minircnn.faster_rcnn import FasterRCNN
from minircnn.layers.losses import LossTuple, MultiTaskLoss
from minircnn.model import FastRCNN, ModelConfig
from minircnn.optim import SGD, SGDConfig
from minircnn.progress import ProgressBar
from minircnn.rpn import RPNLossTuple
from minircnn.timing import StageTimer, instrument_fast_rcnn, time_calls

CHECKPOINT_NAME = "checkpoint.npz"  # in the run folder


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning schedule; comments give the paper's values."""

    # paper: 40k iterations of N = 2 on VOC07 (~16 epochs). Chosen on val as an iteration
    # count, with models trained on the 100-image train split: 1600 iterations, lr / 10
    # after 1400, which is 16 and 14 epochs of the 200-image trainval split. Val mAP@0.5
    # with the command line's test-time augmentation, seeds 0 to 4: 1200 iterations (drop
    # after 900) 0.879, 1600 (drop after 1200) 0.883, 1600 (drop after 1400) 0.890 (higher
    # on every seed), 2000 (drop after 1500) 0.888. Earlier, in one pass and without
    # copy-paste, 3 seeds: 800 (drop after 600) 0.782, 1200 0.806, 1600 0.813; 400 gave
    # 0.69, and lr 0.03 or 0.04 did worse. Faster R-CNN has its own, shorter schedule
    # (``faster_rcnn_schedule``).
    epochs: int = 16
    lr_step_epochs: tuple[int, ...] = (14,)  # paper: lr / 10 after 30k iterations
    seed: int = 0
    # paper: lr 0.001 for VGG16 from ImageNet; our small net from scratch needs more.
    # Its ``steps`` are filled in from lr_step_epochs.
    sgd: SGDConfig = SGDConfig(lr=0.02)


def faster_rcnn_schedule() -> TrainConfig:
    """Faster R-CNN's fine-tuning schedule: 1200 iterations on trainval, lr / 10 after 900
    (12 and 9 epochs). A joint step costs about 1.8 Fast R-CNN steps (79 against 44 ms in
    back-to-back runs), and ``train --tiny --proposals rpn`` has the same 3 minutes. Chosen
    on val (approximate joint training, seeds 0 to 4, one pass with refinement): 1000
    iterations (drop after 800) 0.846, 1200 (drop after 900) 0.852, and 0.857 with the
    RPN's dilated window (``RPNConfig.dilation``)."""
    return replace(TrainConfig(), epochs=12, lr_step_epochs=(9,))


def scaled_schedule(config: TrainConfig, length: float) -> TrainConfig:
    """``config`` with ``length`` times its epochs and learning-rate drop epochs (rounded,
    at least 1); ``config`` itself for a length of 1."""
    if length == 1:
        return config
    drops = tuple(max(1, round(e * length)) for e in config.lr_step_epochs)
    return replace(config, epochs=max(1, round(config.epochs * length)), lr_step_epochs=drops)


class StepResult(NamedTuple):
    """What one iteration reports: the loss terms (None in a step that trains the RPN
    alone), the gradient norm, the RoI accuracy, and (Faster R-CNN) the RPN's loss terms."""

    losses: LossTuple | None
    grad_norm: float
    accuracy: float
    rpn_losses: RPNLossTuple | None = None


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint (if any) is kept."""


class Trainer:
    """Runs epochs of hierarchical mini-batches; owns the optimizer, log and checkpoints."""

    def __init__(
        self,
        model: FastRCNN | FasterRCNN,
        sampler: HierarchicalSampler,
        config: TrainConfig,
        run_dir: str | Path,
        header: dict,
        rng: np.random.Generator,
    ) -> None:
        """``header``: what the checkpoint declares beside the weights (class names and
        the Preprocessing detection needs)."""
        self.model, self.sampler, self.config, self.rng = model, sampler, config, rng
        self.run_dir = Path(run_dir)
        self.header = header
        self.iters_per_epoch = len(sampler.usable) // (sampler.config.images_per_batch)
        steps = tuple(e * self.iters_per_epoch for e in config.lr_step_epochs)
        self.optimizer = SGD(self.trained_params(), replace(config.sgd, steps=steps))
        self.loss = MultiTaskLoss(loc_weight=1.0)
        self.iteration, self.epoch, self.log = 0, 0, []
        self._saved = False  # whether checkpoint_path holds this run's state
        self.steps_done = 0  # iterations run by this process
        # per-stage wall time and arithmetic of the timed iterations (``timed_steps``),
        # for report_timing; the stages are timed by wrapping them from outside
        self.flops = 0.0
        self.timer = instrument_fast_rcnn(model, StageTimer())
        time_calls(self.timer, "sampling", sampler, "batch")
        time_calls(self.timer, "loss", self.loss, "forward", "backward")
        time_calls(self.timer, "sgd", self.optimizer, "step")

    def trained_params(self) -> dict[str, np.ndarray]:
        """The parameters SGD updates: the model's trainable ones."""
        return self.model.params(trainable_only=True)

    @property
    def timed_steps(self) -> int:
        """The iterations the stage times cover: all this trainer ran but its first, which
        includes Numba's compilation."""
        return max(self.steps_done - 1, 0)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def step(self, image_indices) -> StepResult:
        """One SGD iteration of Fast R-CNN (section 2.3) on the images ``image_indices``."""
        batch = self.sampler.batch(image_indices)  # N images, R RoIs with labels, targets
        cls_score, bbox_pred = self.model.train().forward(batch.images, batch.rois)
        losses = self.loss.forward(  # eq. 1: L_cls + lambda [u >= 1] L_loc
            cls_score, bbox_pred, batch.labels, batch.bbox_targets, batch.bbox_weights
        )
        self._stop_if_diverged(losses)
        self.model.backward(*self.loss.backward())  # heads -> fc -> RoI pool -> convs
        grad_norm = self.optimizer.step(self.model.grads(), self.iteration)  # momentum SGD
        self.flops += self.model.train_flops(batch.images.shape, len(batch.rois))
        self.iteration += 1
        accuracy = float(np.mean(cls_score.argmax(axis=1) == batch.labels))
        return StepResult(losses, grad_norm, accuracy)

    def _stop_if_diverged(self, *losses) -> None:
        """Raise TrainingDiverged unless every loss tuple's total is finite."""
        if all(np.isfinite(term.total) for term in losses):
            return
        total = sum(term.total for term in losses)
        kept = (
            f"the last good checkpoint is kept at {self.checkpoint_path}"
            if self._saved
            else "no checkpoint had been written yet (one is written after each epoch)"
        )
        raise TrainingDiverged(f"loss is {total} at iteration {self.iteration}; stopped, {kept}")

    def run(self, progress: bool = True) -> list[dict]:
        """Train from the current epoch to ``config.epochs``; returns the log rows."""
        for epoch in range(self.epoch, self.config.epochs):
            batches = self.sampler.epoch()
            bar = ProgressBar(
                batches, desc=f"epoch {epoch + 1}/{self.config.epochs}", enabled=progress
            )
            t_epoch = time.perf_counter()
            for done, indices in enumerate(bar, start=1):
                lr = self.optimizer.lr_at(self.iteration)
                result = self.step(indices)
                self.steps_done += 1
                if self.steps_done == 1:  # it compiled the kernels: not a typical iteration
                    self.timer.totals.clear()
                    self.flops = 0.0
                self.log.append(_log_row(self.iteration - 1, epoch, result, lr))
                rate = done * len(indices) / max(time.perf_counter() - t_epoch, 1e-9)
                shown = {}
                if result.rpn_losses is not None:
                    shown["rpn"] = f"{result.rpn_losses.total:.3f}"
                if result.losses is not None:
                    shown.update(cls=f"{result.losses.cls:.3f}", loc=f"{result.losses.loc:.3f}")
                bar.set_postfix(**shown, img_s=f"{rate:.1f}")
            self.epoch = epoch + 1
            self.save()
        return self.log

    def save(self) -> None:
        """log.csv, the atomic checkpoint and loss.png for the run so far."""
        from minircnn.viz import plot_losses

        state = {
            "iteration": self.iteration,
            "epoch": self.epoch,
            "rng_state": self.rng.bit_generator.state,
            "train_config": asdict(self.config),
            "sampler_config": asdict(self.sampler.config),
        }
        momentum = {f"momentum/{k}": v for k, v in self.optimizer.state_dict().items()}
        header = {**self.header, "train_state": state}
        # the log first: a crash before the checkpoint leaves extra rows, which a resume
        # drops, never a gap
        _write_log(self.run_dir / "log.csv", self.log)
        save_checkpoint(self.checkpoint_path, self.model, header, momentum)
        self._saved = True
        plot_losses(self.log, self.run_dir / "loss.png")

    def resume(self, path: str | Path) -> None:
        """Restore parameters, momentum, iteration, schedule position and random state."""
        header, arrays = read_resume_state(path, self.model.config, self.header.get("classes"))
        self._refuse_another_run(header, path)
        try:
            self.model.load_params(with_prefix(arrays, "param/"), source=str(path))
        except ValueError as err:  # names and shapes differ: say so in one line
            raise CheckpointError(str(err)) from err
        self.optimizer.load_state_dict(with_prefix(arrays, "momentum/"))
        state = header["train_state"]
        self.iteration, self.epoch = state["iteration"], state["epoch"]
        self.rng.bit_generator.state = state["rng_state"]
        self._saved = True  # the checkpoint there is this run's
        log_path = self.run_dir / "log.csv"
        if log_path.exists():
            with open(log_path) as f:
                rows = [
                    {k: int(v) if k in ("iteration", "epoch") else float(v) for k, v in row.items()}
                    for row in csv.DictReader(f)
                ]
            self.log = [r for r in rows if r["iteration"] < self.iteration]

    def _refuse_another_run(self, header: dict, path) -> None:
        """An exact resume needs the same run: the same schedule (only ``epochs`` may
        grow), sampling and preprocessing; anything else is refused, naming what differs."""
        if header.get("kind") != self.model.kind:
            raise CheckpointError(
                f"{path}: a {header.get('kind')} checkpoint, this run trains a {self.model.kind}"
            )
        state = header["train_state"]
        ours = {
            "train_config": {k: v for k, v in asdict(self.config).items() if k != "epochs"},
            "sampler_config": asdict(self.sampler.config),
        }
        theirs = {
            "train_config": {k: v for k, v in state["train_config"].items() if k != "epochs"},
            "sampler_config": state["sampler_config"],
        }
        ours["preprocessing"] = self.header.get("preprocessing")
        theirs["preprocessing"] = header.get("preprocessing")
        if hasattr(self.model, "rpn_config"):  # Faster R-CNN: the same anchors and top-N
            ours["rpn"] = asdict(self.model.rpn_config)
            theirs["rpn"] = recorded_rpn(header) if "rpn" in header else None
            # and joint training (alternating training is never resumed)
            ours["rpn_training"] = self.header.get("rpn_training", "joint")
            theirs["rpn_training"] = header.get("rpn_training", "joint")
        differ = [_difference(k, ours[k], theirs[k]) for k in ours]
        differ = [d for d in differ if d]
        if differ:
            raise CheckpointError(
                f"{path}: made by a run with another {'; '.join(differ)} (resume continues "
                "the same run; start a new one with another --name)"
            )


def _difference(section: str, ours, theirs) -> str:
    """'' when a section of the run's settings matches the checkpoint's; else its name and,
    for a dict, each differing field with the checkpoint's value and this run's, e.g.
    ``train_config (lr_step_epochs: [6] in the checkpoint, [9] here)``."""
    # JSON turned tuples into lists: compare through JSON as well, whatever the keys' order
    as_json = partial(json.dumps, sort_keys=True)
    if as_json(ours) == as_json(theirs):
        return ""
    if not (isinstance(ours, dict) and isinstance(theirs, dict)):
        return section
    fields = [
        f"{k}: {as_json(theirs.get(k))} in the checkpoint, {as_json(ours.get(k))} here"
        for k in sorted(ours.keys() | theirs.keys())
        if as_json(ours.get(k)) != as_json(theirs.get(k))
    ]
    return f"{section} ({', '.join(fields)})"


def read_resume_state(
    path, config: ModelConfig | None = None, classes=None
) -> tuple[dict, dict[str, np.ndarray]]:
    """The (header, arrays) of a checkpoint to resume training from. Refused with a
    CheckpointError when it holds no training state, or (when given) its ``config`` or
    ``classes`` differ; FileNotFoundError when it is missing."""
    header, arrays = read_checkpoint(path)
    if "train_state" not in header:
        raise CheckpointError(f"{path}: no training state to resume from")
    if config is not None:
        checkpoint_config(header, path, expected=config)
    if classes is not None and header.get("classes") != list(classes):
        raise CheckpointError(
            f"{path}: trained on classes {header.get('classes')}, this run has {list(classes)}"
        )
    return header, arrays


def _log_row(iteration: int, epoch: int, result: StepResult, lr: float) -> dict:
    """One row of log.csv; ``loss`` is the whole objective (with the RPN's, if any)."""
    losses, rpn = result.losses, result.rpn_losses
    row = {"iteration": iteration, "epoch": epoch}
    row["loss"] = sum(term.total for term in (losses, rpn) if term is not None)
    if losses is not None:
        row.update(loss_cls=losses.cls, loss_loc=losses.loc, accuracy=result.accuracy)
    row.update(grad_norm=result.grad_norm, lr=lr)
    if rpn is not None:
        row.update(loss_rpn_cls=rpn.cls, loss_rpn_reg=rpn.reg)
    return row


def _write_log(path, rows) -> None:
    """The log rows as CSV, written atomically (a temporary file, then renamed)."""
    if rows:
        tmp = Path(path).with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)
