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

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minircnn.bench import sgemm_gflops
from minircnn.data.sampling import HierarchicalSampler, SamplerConfig, pixel_statistics
from minircnn.data.voc import VOCDataset
from minircnn.layers.losses import MultiTaskLoss
from minircnn.model import (
    FastRCNN,
    ModelConfig,
    StageTimer,
    checkpoint_config,
    read_checkpoint,
    save_checkpoint,
    with_prefix,
)
from minircnn.ops.boxes import TARGET_MEANS, TARGET_STDS
from minircnn.optim import SGD, SGDConfig
from minircnn.pretrain import PretrainConfig, load_or_pretrain
from minircnn.proposals.cache import ProposalConfig, load_or_compute


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning schedule; comments give the paper's values."""

    epochs: int = 8  # paper: 40k iterations of N = 2 on VOC07 (~16 epochs)
    lr: float = 0.02  # paper: 0.001 (VGG16 from ImageNet; our small net from scratch needs more)
    lr_step_epochs: tuple[int, ...] = (6,)  # paper: lr / 10 after 30k iterations
    momentum: float = 0.9  # paper: 0.9
    weight_decay: float = 5e-4  # paper: 0.0005
    seed: int = 0


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Trainer:
    """Runs epochs of hierarchical mini-batches; owns the optimizer, log and checkpoints."""

    def __init__(
        self,
        model: FastRCNN,
        sampler: HierarchicalSampler,
        config: TrainConfig,
        run_dir: str | Path,
        meta: dict,
        rng: np.random.Generator,
    ) -> None:
        self.model, self.sampler, self.config, self.rng = model, sampler, config, rng
        self.run_dir = Path(run_dir)
        self.meta = meta
        self.iters_per_epoch = len(sampler.dataset) // sampler.config.images_per_batch
        steps = tuple(e * self.iters_per_epoch for e in config.lr_step_epochs)
        sgd = SGDConfig(
            lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, steps=steps
        )
        self.optimizer = SGD(model.params(trainable_only=True), sgd)
        self.loss = MultiTaskLoss(loc_weight=1.0)
        self.timer = StageTimer()
        self.iteration, self.epoch, self.log = 0, 0, []
        self.flops, self.steps_done = 0.0, 0  # work done in this process (for the report)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.npz"

    def step(self, batch) -> tuple:
        """One SGD iteration on a MiniBatch -> (LossTuple, gradient norm, fg accuracy)."""
        model = self.model.train()
        cls_score, bbox_pred = model.forward(batch.images, batch.rois)
        with self.timer("loss"):
            losses = self.loss.forward(
                cls_score, bbox_pred, batch.labels, batch.bbox_targets, batch.bbox_weights
            )
            if not np.isfinite(losses.total):
                raise TrainingDiverged(
                    f"loss is {losses.total} at iteration {self.iteration}; stopped, the last "
                    f"good checkpoint is kept at {self.checkpoint_path}"
                )
            dcls, dbbox = self.loss.backward()
        model.backward(dcls, dbbox)
        with self.timer("sgd"):
            grad_norm = self.optimizer.step(model.grads(), self.iteration)
        accuracy = float(np.mean(cls_score.argmax(axis=1) == batch.labels))
        return losses, grad_norm, accuracy

    def run(self, progress: bool = True) -> list[dict]:
        """Train from the current epoch to ``config.epochs``; returns the log rows."""
        for epoch in range(self.epoch, self.config.epochs):
            batches = self.sampler.epoch()
            bar = tqdm(
                batches, desc=f"epoch {epoch + 1}/{self.config.epochs}", disable=not progress
            )
            t_epoch = time.perf_counter()
            for indices in bar:
                with self.timer("sampling"):
                    batch = self.sampler.batch(indices)
                self.flops += self.model.train_flops(batch.images.shape, len(batch.rois))
                losses, grad_norm, accuracy = self.step(batch)
                self.steps_done += 1
                self.log.append(
                    {
                        "iteration": self.iteration,
                        "epoch": epoch,
                        "loss": losses.total,
                        "loss_cls": losses.cls,
                        "loss_loc": losses.loc,
                        "accuracy": accuracy,
                        "grad_norm": grad_norm,
                        "lr": self.optimizer.lr_at(self.iteration),
                    }
                )
                self.iteration += 1
                rate = bar.n * len(indices) / max(time.perf_counter() - t_epoch, 1e-9)
                bar.set_postfix(
                    cls=f"{losses.cls:.3f}", loc=f"{losses.loc:.3f}", img_s=f"{rate:.1f}"
                )
            self.epoch = epoch + 1
            self.save()
        return self.log

    def save(self) -> None:
        """Atomic checkpoint + log.csv + loss.png for the run so far."""
        state = {
            "iteration": self.iteration,
            "epoch": self.epoch,
            "rng_state": self.rng.bit_generator.state,
            "train_config": asdict(self.config),
            "sampler_config": asdict(self.sampler.config),
        }
        extra = {f"momentum/{k}": v for k, v in self.optimizer.state_dict().items()}
        save_checkpoint(
            self.checkpoint_path, self.model, {**self.meta, "train_state": state}, extra
        )
        _write_log(self.run_dir / "log.csv", self.log)
        plot_losses(self.log, self.run_dir / "loss.png")

    def resume(self, path: str | Path) -> None:
        """Restore parameters, momentum, iteration, schedule position and random state."""
        header, arrays = read_checkpoint(path)
        checkpoint_config(header, path, expected=self.model.config)
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


def plot_losses(log: list[dict], path) -> None:
    """Loss terms against iteration (a moving average over 20 iterations)."""
    from minircnn.viz import plt, save_figure

    if not log:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    its = np.array([r["iteration"] for r in log])
    for key, label in (("loss", "total"), ("loss_cls", "L_cls"), ("loss_loc", "L_loc")):
        values = np.array([r[key] for r in log])
        k = min(20, len(values))
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(its[k - 1 :], smooth, label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def _write_log(path, rows) -> None:
    if rows:
        tmp = Path(path).with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)


def _config_from(cls, overrides: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in overrides.items() if k in names and v is not None})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minircnn.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--tiny",
        action="store_true",
        help="train on the toy set in data/toyvoc (generated, with its proposals, when missing)",
    )
    data.add_argument("--voc-root", help="a VOCdevkit folder (instead of --tiny)")
    data.add_argument("--year", default="2007", help="VOC year (default 2007)")
    data.add_argument("--split", default="trainval", help="image set to train on")
    data.add_argument("--classes", help="comma-separated subset of classes, e.g. car,cat,dog")
    data.add_argument("--max-images", type=int, help="use at most this many images")
    data.add_argument("--jobs", type=int, default=-1, help="selective-search workers")
    run = p.add_argument_group("run")
    run.add_argument("--name", help="run folder under runs/ (default: tiny or voc)")
    run.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    run.add_argument("--epochs", type=int, help=f"default {TrainConfig.epochs}")
    run.add_argument("--lr", type=float, help=f"default {TrainConfig.lr}")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument(
        "--pretrain-iterations",
        type=int,
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
    proposal_cache: str | Path = "data/proposals",
    pretrain_cache: str | Path = "data/pretrained",
    resume: bool = False,
    jobs: int = -1,
    progress: bool = True,
) -> Trainer:
    """The whole training procedure on ``dataset``: proposals (cached), pixel statistics,
    classifier pre-training (cached) and conversion, then fine-tuning into ``run_dir``.
    Configs left at None take their defaults. Returns the Trainer (its ``model`` is the
    trained FastRCNN, with ``meta`` set);
    ``trainer.wall`` holds the seconds each phase took. Raises TrainingDiverged."""
    pretrain_config = pretrain_config or PretrainConfig()
    sampler_config = sampler_config or SamplerConfig()
    proposal_config = proposal_config or ProposalConfig()
    wall, t0 = {}, time.perf_counter()
    proposals = load_or_compute(dataset, proposal_config, proposal_cache, jobs, progress=progress)
    wall["proposals"], t0 = time.perf_counter() - t0, time.perf_counter()
    mean, std = pixel_statistics(dataset)
    model_config = model_config or ModelConfig(num_classes=dataset.num_classes)
    rng = np.random.default_rng(train_config.seed)
    classifier = load_or_pretrain(
        dataset, model_config, mean, std, pretrain_config, pretrain_cache, progress
    )
    model = FastRCNN.from_classifier(classifier, model_config, rng)
    wall["pre-training"], t0 = time.perf_counter() - t0, time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.meta = {
        "classes": list(dataset.classes),
        "pixel_mean": mean.tolist(),
        "pixel_std": std.tolist(),
        "bbox_means": list(TARGET_MEANS),
        "bbox_stds": list(TARGET_STDS),
        "sampler": asdict(sampler_config),
    }
    config = {
        "model": asdict(model_config),
        "train": asdict(train_config),
        "pretrain": asdict(pretrain_config),
        "sampler": asdict(sampler_config),
        "proposals": asdict(proposal_config),
        "data": {
            "root": str(dataset.root),
            "split": dataset.split,
            "classes": list(dataset.classes),
            "images": len(dataset),
        },
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    sampler = HierarchicalSampler(dataset, proposals, sampler_config, mean, std, rng)
    trainer = Trainer(model, sampler, train_config, run_dir, model.meta, rng)
    if resume:
        trainer.resume(trainer.checkpoint_path)
        print(f"resumed from {trainer.checkpoint_path} at epoch {trainer.epoch}")
    trainer.run(progress=progress)
    wall["fine-tuning"] = time.perf_counter() - t0
    trainer.wall = wall
    return trainer


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tiny == bool(args.voc_root):
        build_parser().error("give exactly one of --tiny or --voc-root")
    t_start = time.perf_counter()
    root = args.voc_root or "data/toyvoc"
    if args.tiny and not (Path(root) / "VOC2007" / "ImageSets" / "Main" / "test.txt").exists():
        from minircnn.data.toyvoc import TINY, generate

        print(f"generating the toy set in {root}")
        generate(root, seed=0, counts=TINY)
    classes = args.classes.split(",") if args.classes else None
    dataset = VOCDataset(root, args.year, args.split, classes=classes, max_images=args.max_images)
    t_data = time.perf_counter() - t_start
    train_config = _config_from(
        TrainConfig, {"epochs": args.epochs, "lr": args.lr, "seed": args.seed}
    )
    pre_config = _config_from(
        PretrainConfig, {"iterations": args.pretrain_iterations, "seed": args.seed}
    )
    run_dir = Path("runs") / (args.name or ("tiny" if args.tiny else "voc"))
    try:
        trainer = fit(
            dataset,
            run_dir,
            train_config=train_config,
            pretrain_config=pre_config,
            resume=args.resume,
            jobs=args.jobs,
            progress=not args.quiet,
        )
    except TrainingDiverged as err:
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
    """Per-stage time per iteration (model and trainer stage timers), the arithmetic rate
    and its fraction of this machine's SGEMM peak, and the recent loss terms."""
    stages = {**trainer.model.timer.totals, **trainer.timer.totals}
    n = max(trainer.steps_done, 1)
    per_stage = ", ".join(f"{k} {1e3 * v / n:.1f} ms" for k, v in stages.items())
    print(f"time per iteration: {per_stage} (total {1e3 * sum(stages.values()) / n:.1f} ms)")
    achieved = trainer.flops / max(sum(stages.values()), 1e-9) / 1e9
    peak = sgemm_gflops()
    print(
        f"arithmetic: {trainer.flops / n / 1e9:.2f} GFLOP per iteration at {achieved:.1f} "
        f"GFLOP/s, {100 * achieved / peak:.0f}% of NumPy's SGEMM peak here ({peak:.0f} GFLOP/s)"
    )
    tail = trainer.log[-50:]
    if tail:
        terms = ("loss", "loss_cls", "loss_loc", "accuracy")
        print(
            "last 50 iterations: "
            + ", ".join(f"{k} {np.mean([r[k] for r in tail]):.3f}" for k in terms)
        )


if __name__ == "__main__":
    sys.exit(main())
