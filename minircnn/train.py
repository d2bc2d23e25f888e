"""`python -m minircnn.train`: pre-train, convert and fine-tune Fast R-CNN end to end.

    python -m minircnn.train --tiny                      # toy set: data, proposals, training
    python -m minircnn.train --voc-root VOCdevkit --classes car,cat,dog --max-images 300
    python -m minircnn.train --tiny --resume             # continue from runs/tiny/checkpoint.npz

Each step (section 2.3): sample N = 2 images and R = 128 RoIs, forward, multi-task loss
(eq. 1), backward through RoI pooling into the convs, momentum SGD. A checkpoint is written
atomically after every epoch with everything needed to resume exactly (momentum buffers,
iteration, random state) and to detect (config, classes, pixel statistics, box-target
normalisation). A NaN or infinite loss stops the run and leaves the last good checkpoint.
"""

import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minircnn import cli
from minircnn.checkpoint import (
    CheckpointError,
    checkpoint_config,
    read_checkpoint,
    save_checkpoint,
    with_prefix,
)
from minircnn.data.image import Preprocessing, pixel_statistics
from minircnn.data.sampling import HierarchicalSampler, SamplerConfig
from minircnn.data.voc import UnknownClassError, VOCDataset
from minircnn.layers.losses import LossTuple, MultiTaskLoss
from minircnn.model import FastRCNN, ModelConfig
from minircnn.optim import SGD, SGDConfig
from minircnn.pretrain import PretrainConfig, load_or_pretrain
from minircnn.progress import ProgressBar
from minircnn.proposals.cache import ProposalConfig, load_or_compute
from minircnn.timing import StageTimer, instrument_fast_rcnn, time_calls

CHECKPOINT_NAME = "checkpoint.npz"  # in the run folder


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning schedule; comments give the paper's values."""

    epochs: int = 8  # paper: 40k iterations of N = 2 on VOC07 (~16 epochs)
    lr_step_epochs: tuple[int, ...] = (6,)  # paper: lr / 10 after 30k iterations
    seed: int = 0
    # paper: lr 0.001 for VGG16 from ImageNet; our small net from scratch needs more.
    # Its ``steps`` are filled in from lr_step_epochs.
    sgd: SGDConfig = SGDConfig(lr=0.02)


class StepResult(NamedTuple):
    """What one iteration reports: the loss terms, the gradient norm, the RoI accuracy."""

    losses: LossTuple
    grad_norm: float
    accuracy: float


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint (if any) is kept."""


class Trainer:
    """Runs epochs of hierarchical mini-batches; owns the optimizer, log and checkpoints."""

    def __init__(
        self,
        model: FastRCNN,
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
        self.optimizer = SGD(model.params(trainable_only=True), replace(config.sgd, steps=steps))
        self.loss = MultiTaskLoss(loc_weight=1.0)
        self.iteration, self.epoch, self.log = 0, 0, []
        self.flops, self.steps_done = 0.0, 0  # work done in this process (for the report)
        # per-stage wall time, measured by wrapping the stages from outside
        self.timer = instrument_fast_rcnn(model, StageTimer())
        time_calls(self.timer, "sampling", sampler, "batch")
        time_calls(self.timer, "loss", self.loss, "forward", "backward")
        time_calls(self.timer, "sgd", self.optimizer, "step")

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

    def _stop_if_diverged(self, losses: LossTuple) -> None:
        if np.isfinite(losses.total):
            return
        kept = (
            f"the last good checkpoint is kept at {self.checkpoint_path}"
            if self.checkpoint_path.exists()
            else "no checkpoint had been written yet (one is written after each epoch)"
        )
        raise TrainingDiverged(
            f"loss is {losses.total} at iteration {self.iteration}; stopped, {kept}"
        )

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
                self.log.append(_log_row(self.iteration - 1, epoch, result, lr))
                rate = done * len(indices) / max(time.perf_counter() - t_epoch, 1e-9)
                losses = result.losses
                bar.set_postfix(
                    cls=f"{losses.cls:.3f}", loc=f"{losses.loc:.3f}", img_s=f"{rate:.1f}"
                )
            self.epoch = epoch + 1
            self.save()
        return self.log

    def save(self) -> None:
        """Atomic checkpoint + log.csv + loss.png for the run so far."""
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
        save_checkpoint(self.checkpoint_path, self.model, header, momentum)
        _write_log(self.run_dir / "log.csv", self.log)
        plot_losses(self.log, self.run_dir / "loss.png")

    def resume(self, path: str | Path) -> None:
        """Restore parameters, momentum, iteration, schedule position and random state."""
        header, arrays = read_resume_state(path, self.model.config, self.header.get("classes"))
        self.model.load_params(with_prefix(arrays, "param/"), source=str(path))
        self.optimizer.load_state_dict(with_prefix(arrays, "momentum/"))
        state = header["train_state"]
        self.iteration, self.epoch = state["iteration"], state["epoch"]
        self.rng.bit_generator.state = state["rng_state"]
        log_path = self.run_dir / "log.csv"
        if log_path.exists():
            with open(log_path) as f:
                rows = [
                    {k: int(v) if k in ("iteration", "epoch") else float(v) for k, v in row.items()}
                    for row in csv.DictReader(f)
                ]
            self.log = [r for r in rows if r["iteration"] < self.iteration]


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
    losses = result.losses
    return {
        "iteration": iteration,
        "epoch": epoch,
        "loss": losses.total,
        "loss_cls": losses.cls,
        "loss_loc": losses.loc,
        "accuracy": result.accuracy,
        "grad_norm": result.grad_norm,
        "lr": lr,
    }


def _write_log(path, rows) -> None:
    if rows:
        tmp = Path(path).with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)


def build_parser() -> cli.ArgumentParser:
    """The command line; numbers are checked as they are parsed."""
    p = cli.ArgumentParser(prog="python -m minircnn.train", description=__doc__)
    data = p.add_argument_group("data")
    data.add_argument(
        "--tiny",
        action="store_true",
        help="train on the toy set in data/toyvoc (generated, with its proposals, when missing)",
    )
    data.add_argument("--voc-root", help="a VOCdevkit folder (instead of --tiny)")
    data.add_argument("--year", default="2007", help="VOC year (default 2007)")
    data.add_argument("--split", default="trainval", help="image set to train on")
    data.add_argument(
        "--classes", type=cli.name_list, help="comma-separated subset of classes, e.g. car,cat,dog"
    )
    data.add_argument("--max-images", type=cli.positive_int, help="use at most this many images")
    data.add_argument("--jobs", type=cli.jobs, default=-1, help="selective-search workers")
    data.add_argument(
        "--scheduler",
        metavar="local|tcp://HOST:8786",
        help="selective search on Dask (see python -m minircnn.proposals --help)",
    )
    run = p.add_argument_group("run")
    run.add_argument("--name", help="run folder under runs/ (default: tiny or voc)")
    run.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    run.add_argument("--epochs", type=cli.positive_int, help=f"default {TrainConfig.epochs}")
    run.add_argument(
        "--lr", type=cli.positive_finite_float, help=f"learning rate (default {TrainConfig.sgd.lr})"
    )
    run.add_argument("--seed", type=cli.non_negative_int, default=0, help="random seed (default 0)")
    run.add_argument(
        "--pretrain-iterations",
        type=cli.positive_int,
        help=f"classifier pre-training steps (default {PretrainConfig.iterations})",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def fit(
    dataset: VOCDataset,
    run_dir: str | Path,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig = TrainConfig(),
    pretrain_config: PretrainConfig | None = None,
    sampler_config: SamplerConfig | None = None,
    proposal_config: ProposalConfig | None = None,
    image_sizes: dict | None = None,
    proposal_cache: str | Path = "data/proposals",
    pretrain_cache: str | Path = "data/pretrained",
    resume: bool = False,
    jobs: int = -1,
    progress: bool = True,
    scheduler: str | None = None,
) -> Trainer:
    """The whole training procedure on ``dataset``: proposals (cached), pixel statistics,
    classifier pre-training (cached) and conversion (section 2.2), then fine-tuning into
    ``run_dir``. Configs left at None take their defaults; ``image_sizes`` may set
    Preprocessing's ``short_side`` / ``max_side``. Returns the Trainer (its ``model`` is
    the trained FastRCNN); ``trainer.wall`` holds the seconds each phase took. ``jobs`` and
    ``scheduler`` say where selective search runs (``proposals.cache.load_or_compute``).
    Raises TrainingDiverged, or SchedulerError for an unusable ``scheduler``."""
    pretrain_config = pretrain_config or PretrainConfig()
    sampler_config = sampler_config or SamplerConfig()
    proposal_config = proposal_config or ProposalConfig()
    wall, t0 = {}, time.perf_counter()
    proposals = load_or_compute(
        dataset, proposal_config, proposal_cache, jobs, scheduler, progress=progress
    )
    wall["proposals"], t0 = time.perf_counter() - t0, time.perf_counter()
    mean, std = pixel_statistics(dataset)
    preprocessing = Preprocessing(tuple(mean), tuple(std), **(image_sizes or {}))
    model_config = model_config or ModelConfig(num_classes=dataset.num_classes)
    rng = np.random.default_rng(train_config.seed)
    classifier = load_or_pretrain(
        dataset, model_config, preprocessing, pretrain_config, pretrain_cache, progress
    )
    model = FastRCNN.from_classifier(classifier, model_config, rng)
    wall["pre-training"], t0 = time.perf_counter() - t0, time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    header = {"classes": list(dataset.classes), "preprocessing": asdict(preprocessing)}
    config = {
        "model": asdict(model_config),
        "train": asdict(train_config),
        "pretrain": asdict(pretrain_config),
        "sampler": asdict(sampler_config),
        "proposals": asdict(proposal_config),
        "preprocessing": asdict(preprocessing),
        "data": {
            "root": str(dataset.root),
            "split": dataset.split,
            "classes": list(dataset.classes),
            "images": len(dataset),
        },
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    sampler = HierarchicalSampler(dataset, proposals, sampler_config, preprocessing, rng)
    trainer = Trainer(model, sampler, train_config, run_dir, header, rng)
    if resume:
        trainer.resume(trainer.checkpoint_path)
        print(f"resumed from {trainer.checkpoint_path} at epoch {trainer.epoch}")
    trainer.run(progress=progress)
    wall["fine-tuning"] = time.perf_counter() - t0
    trainer.wall = wall
    return trainer


@cli.command
def main(argv: list[str] | None = None) -> int:
    """Train as the command line says. Everything the user gave (numbers, data set,
    classes, the checkpoint to resume) is checked before proposals or pre-training run.
    Exit status 0 trained, 1 the loss diverged, 2 bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tiny == bool(args.voc_root):
        parser.error("give exactly one of --tiny or --voc-root")
    sampler_config = SamplerConfig()
    if args.max_images is not None and args.max_images < sampler_config.images_per_batch:
        parser.error(
            f"argument --max-images: {args.max_images} is fewer than the "
            f"{sampler_config.images_per_batch} images of one mini-batch"
        )
    run_dir = Path("runs") / (args.name or ("tiny" if args.tiny else "voc"))
    if args.resume:  # fail before generating or reading any data
        if not (run_dir / CHECKPOINT_NAME).exists():
            raise cli.UsageError(f"--resume: no checkpoint at {run_dir / CHECKPOINT_NAME}")
        read_resume_state(run_dir / CHECKPOINT_NAME)
    t_start = time.perf_counter()
    root = args.voc_root or "data/toyvoc"
    if args.tiny and not (Path(root) / "VOC2007" / "ImageSets" / "Main" / "test.txt").exists():
        from minircnn.data.toyvoc import TINY, generate

        print(f"generating the toy set in {root}")
        generate(root, seed=0, counts=TINY)
    try:
        dataset = VOCDataset(
            root, args.year, args.split, classes=args.classes, max_images=args.max_images
        )
    except UnknownClassError as err:
        raise cli.UsageError(f"--classes {','.join(args.classes)}: {err}") from err
    if len(dataset) < sampler_config.images_per_batch:
        with_classes = f" with {', '.join(args.classes)}" if args.classes else ""
        raise cli.InputError(
            f"{dataset.root}: {len(dataset)} {args.split} image(s){with_classes}, fewer than "
            f"the {sampler_config.images_per_batch} of one mini-batch"
        )
    model_config = ModelConfig(num_classes=dataset.num_classes)
    if args.resume:  # now that the classes are known
        read_resume_state(run_dir / CHECKPOINT_NAME, model_config, dataset.classes)
    t_data = time.perf_counter() - t_start
    defaults = TrainConfig()
    train_config = replace(
        defaults,
        epochs=args.epochs or defaults.epochs,
        seed=args.seed,
        sgd=replace(defaults.sgd, lr=args.lr or defaults.sgd.lr),
    )
    pre_config = replace(
        PretrainConfig(),
        iterations=args.pretrain_iterations or PretrainConfig.iterations,
        seed=args.seed,
    )
    try:
        trainer = fit(
            dataset,
            run_dir,
            model_config=model_config,
            train_config=train_config,
            pretrain_config=pre_config,
            sampler_config=sampler_config,
            resume=args.resume,
            jobs=args.jobs,
            progress=not args.quiet,
            scheduler=args.scheduler,
        )
    except TrainingDiverged as err:  # not bad input: status 1
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"\ntrained {trainer.iteration} iterations; checkpoint {trainer.checkpoint_path}")
    phases = {"data": t_data, **trainer.wall}
    print(
        "wall time: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
        + f", total {time.perf_counter() - t_start:.1f} s"
    )
    report_timing(trainer)
    return 0


def report_timing(trainer: Trainer) -> None:
    """Per-stage time per iteration, the arithmetic rate, and the recent loss terms."""
    stages = trainer.timer.totals
    n = max(trainer.steps_done, 1)
    per_stage = ", ".join(f"{k} {1e3 * v / n:.1f} ms" for k, v in stages.items())
    print(f"time per iteration: {per_stage} (total {1e3 * sum(stages.values()) / n:.1f} ms)")
    achieved = trainer.flops / max(sum(stages.values()), 1e-9) / 1e9
    print(
        f"arithmetic: {trainer.flops / n / 1e9:.2f} GFLOP per iteration at {achieved:.1f} "
        "GFLOP/s (compare with the SGEMM peak that `python -m minircnn.bench` prints)"
    )
    tail = trainer.log[-50:]
    if tail:
        terms = ("loss", "loss_cls", "loss_loc", "accuracy")
        print(
            "last 50 iterations: "
            + ", ".join(f"{k} {np.mean([r[k] for r in tail]):.3f}" for k in terms)
        )


if __name__ == "__main__":
    cli.run(main)
