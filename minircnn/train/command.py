"""The command line of `python -m minircnn.train` (see the package docstring)."""

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from minircnn import cli
from minircnn.data.sampling import SamplerConfig
from minircnn.data.voc import UnknownClassError, VOCDataset
from minircnn.faster_rcnn import RPNConfig
from minircnn.model import ModelConfig
from minircnn.pretrain import PretrainConfig
from minircnn.train.fit import fit
from minircnn.train.trainer import (
    CHECKPOINT_NAME,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    faster_rcnn_schedule,
    read_resume_state,
)


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
    data.add_argument(
        "--proposals",
        choices=("selective-search", "rpn"),
        default="selective-search",
        help="selective-search: Fast R-CNN on cached selective-search proposals (default); "
        "rpn: Faster R-CNN, whose region proposal network is trained with it",
    )
    data.add_argument(
        "--rpn-training",
        choices=("joint", "alternating"),
        help="with --proposals rpn: approximate joint training (default) or the paper's "
        "4-step alternating training (no --resume)",
    )
    data.add_argument(
        "--copy-paste",
        type=cli.probability,
        metavar="P",
        help="copy-paste augmentation: the probability that a training image gets 1-"
        f"{SamplerConfig.copy_paste_objects} objects of other training images pasted in "
        "(default "
        f"{SamplerConfig.copy_paste} where the images have SegmentationObject masks, as the "
        "toy set has, else off; 0: off, and no pasted pre-training crops either)",
    )
    data.add_argument(
        "--rpn-window",
        type=cli.positive_int,
        help=f"with --proposals rpn: n of the RPN's n x n conv, odd (default {RPNConfig.window})",
    )
    data.add_argument(
        "--rpn-dilation",
        type=cli.positive_int,
        help="with --proposals rpn: the spacing of that conv's taps, in cells (default "
        f"{RPNConfig.dilation}; 1: adjacent, as in the paper)",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--name",
        help="run folder under runs/ (default: tiny or voc, -rpn added with rpn, -rpn-alt with "
        "alternating training)",
    )
    run.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    faster = faster_rcnn_schedule()
    run.add_argument(
        "--epochs",
        type=cli.positive_int,
        help=f"default {TrainConfig.epochs} ({faster.epochs} with --proposals rpn)",
    )
    run.add_argument(
        "--lr-drop",
        type=cli.positive_int,
        help="epoch after which the learning rate drops 10x (default "
        f"{TrainConfig.lr_step_epochs[0]}; {faster.lr_step_epochs[0]} with --proposals rpn; "
        "with --epochs alone, at the same fraction of the epochs)",
    )
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


def scaled_drop(defaults: TrainConfig, epochs: int) -> int:
    """The learning-rate drop epoch for ``epochs`` when only they are given: at the same
    fraction of the schedule as the default drop (rounded, at least 1), so that a shorter
    or longer run still drops."""
    return max(1, round(defaults.lr_step_epochs[0] * epochs / defaults.epochs))


@cli.command
def main(argv: list[str] | None = None) -> int:
    """Train as the command line says. Everything the user gave (numbers, data set,
    classes, the checkpoint to resume) is checked before proposals or pre-training run.
    Exit status 0 trained, 1 the loss diverged, 2 bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tiny == bool(args.voc_root):
        parser.error("give exactly one of --tiny or --voc-root")
    rpn = args.proposals == "rpn"
    defaults = faster_rcnn_schedule() if rpn else TrainConfig()
    epochs = args.epochs or defaults.epochs
    lr_drop = args.lr_drop or scaled_drop(defaults, epochs)
    if args.lr_drop is not None and args.lr_drop > epochs:
        parser.error(f"argument --lr-drop: {args.lr_drop} is after the last epoch ({epochs})")
    sampler_config = SamplerConfig()
    if args.copy_paste is not None:
        sampler_config = replace(sampler_config, copy_paste=args.copy_paste)
    if args.max_images is not None and args.max_images < sampler_config.images_per_batch:
        parser.error(
            f"argument --max-images: {args.max_images} is fewer than the "
            f"{sampler_config.images_per_batch} images of one mini-batch"
        )
    if args.rpn_training and not rpn:
        parser.error("argument --rpn-training: only with --proposals rpn")
    alternating = args.rpn_training == "alternating"
    if args.rpn_window is not None and (not rpn or args.rpn_window % 2 == 0):
        parser.error(
            f"argument --rpn-window: an odd size, with --proposals rpn; got {args.rpn_window}"
        )
    if args.rpn_dilation is not None and not rpn:
        parser.error("argument --rpn-dilation: only with --proposals rpn")
    if alternating and args.resume:
        parser.error("argument --resume: alternating training cannot be resumed")
    default_name = ("tiny" if args.tiny else "voc") + ("-rpn" if rpn else "")
    default_name += "-alt" if alternating else ""
    run_dir = Path("runs") / (args.name or default_name)
    if args.resume:  # fail before generating or reading any data
        if not (run_dir / CHECKPOINT_NAME).exists():
            raise cli.UsageError(f"--resume: no checkpoint at {run_dir / CHECKPOINT_NAME}")
        header, _ = read_resume_state(run_dir / CHECKPOINT_NAME)
        if header.get("rpn_training") == "alternating":
            raise cli.UsageError(
                f"--resume: {run_dir / CHECKPOINT_NAME} was made by alternating training, "
                "which cannot be resumed"
            )
    t_start = time.perf_counter()
    root = args.voc_root or "data/toyvoc"
    voc = Path(root) / "VOC2007"  # a toy set from before object masks is made again (same images)
    if args.tiny and not all(
        (voc / p).exists() for p in ("ImageSets/Main/test.txt", "SegmentationObject")
    ):
        from minircnn.data.toyvoc import TINY, generate

        print(f"generating the toy set in {root}")
        generate(root, seed=0, counts=TINY)
    try:
        dataset = VOCDataset(
            root, args.year, args.split, classes=args.classes, max_images=args.max_images
        )
    except UnknownClassError as err:
        raise cli.UsageError(f"--classes {','.join(args.classes)}: {err}") from err
    # only images with an object can be sampled (background RoIs need an object to
    # overlap): count them now, before proposals and pre-training
    with_objects = sum(len(item.boxes) > 0 for item in dataset)
    if with_objects < sampler_config.images_per_batch:
        of_classes = f" of {', '.join(args.classes)}" if args.classes else ""
        raise cli.InputError(
            f"{dataset.root}: {with_objects} {args.split} image(s) with objects{of_classes}, "
            f"fewer than the {sampler_config.images_per_batch} of one mini-batch"
        )
    asked = args.copy_paste  # given > 0 on the command line: the masks must be there
    if asked and not dataset.with_masks():
        raise cli.InputError(
            f"{dataset.root}: --copy-paste needs object masks (SegmentationObject/<id>.png), "
            f"and no {args.split} image has one"
        )
    model_config = ModelConfig(num_classes=dataset.num_classes)
    if args.resume:  # now that the classes are known
        read_resume_state(run_dir / CHECKPOINT_NAME, model_config, dataset.classes)
    t_data = time.perf_counter() - t_start
    train_config = replace(
        defaults,
        epochs=epochs,
        lr_step_epochs=(lr_drop,),
        seed=args.seed,
        sgd=replace(defaults.sgd, lr=args.lr or defaults.sgd.lr),
    )
    pre_config = replace(
        PretrainConfig(),
        iterations=args.pretrain_iterations or PretrainConfig.iterations,
        seed=args.seed,
    )
    if args.copy_paste == 0:  # no masks read at all: no pasted pre-training crops either
        pre_config = replace(pre_config, pasted_per_object=0)
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
            rpn_config=RPNConfig(
                window=args.rpn_window or RPNConfig.window,
                dilation=args.rpn_dilation or RPNConfig.dilation,
            )
            if rpn
            else None,
            alternating=alternating,
        )
    except TrainingDiverged as err:  # not bad input: status 1
        print(f"error: {err}", file=sys.stderr)
        return 1
    steps = "4 steps of " if alternating else ""
    print(f"\ntrained {steps}{trainer.iteration} iterations; checkpoint {trainer.checkpoint_path}")
    phases = {"data": t_data, **trainer.wall}
    print(
        "wall time: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
        + f", total {time.perf_counter() - t_start:.1f} s"
    )
    report_timing(trainer)
    return 0


def report_timing(trainer: Trainer) -> None:
    """Per-stage time per iteration, the arithmetic rate, and the recent loss terms.

    The times leave out the trainer's first iteration (Numba compiles the kernels there,
    or loads them from its cache)."""
    stages, n = trainer.timer.totals, trainer.timed_steps
    if n == 0:  # a run of one iteration (say, a resume with one left)
        print("time per iteration: not timed (only the first iteration ran)")
    else:
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
