"""``fit``: the whole training procedure, from a data set to a trained Fast R-CNN."""

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from minircnn.data.image import Preprocessing, pixel_statistics
from minircnn.data.sampling import HierarchicalSampler, SamplerConfig
from minircnn.data.voc import VOCDataset
from minircnn.faster_rcnn import FasterRCNN, RPNConfig
from minircnn.layers.warmup import compile_ahead
from minircnn.model import FastRCNN, ModelConfig
from minircnn.pretrain import PretrainConfig, load_or_pretrain
from minircnn.proposals.cache import ProposalConfig, load_or_compute
from minircnn.train.alternating import train_alternating
from minircnn.train.joint import JointTrainer
from minircnn.train.trainer import TrainConfig, Trainer, faster_rcnn_schedule, scaled_schedule


def fit(
    dataset: VOCDataset,
    run_dir: str | Path,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
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
    rpn_config: RPNConfig | None = None,
    alternating: bool = False,
) -> Trainer:
    """The whole training procedure on ``dataset``: proposals (cached), pixel statistics,
    classifier pre-training (cached) and conversion (section 2.2), then fine-tuning into
    ``run_dir``. Configs left at None take their defaults (the schedule: ``TrainConfig()``,
    or ``faster_rcnn_schedule()`` with an ``rpn_config``); ``image_sizes`` may set
    Preprocessing's ``short_side`` / ``max_side``. Returns the Trainer (its ``model`` is
    the trained FastRCNN or FasterRCNN); ``trainer.wall`` holds the seconds each phase
    took. ``jobs`` and ``scheduler`` say where selective search runs
    (``proposals.cache.load_or_compute``).
    With an ``rpn_config``, trains a Faster R-CNN instead (its RPN makes the proposals):
    no selective search at all; by approximate joint training (``train.joint``), or with
    ``alternating`` by the 4-step alternating scheme (``train.alternating``; no resume).
    Raises TrainingDiverged, or SchedulerError for an unusable ``scheduler``."""
    if train_config is None:  # each network's default schedule
        train_config = TrainConfig() if rpn_config is None else faster_rcnn_schedule()
    pretrain_config = pretrain_config or PretrainConfig()
    sampler_config = sampler_config or SamplerConfig()
    proposal_config = proposal_config or ProposalConfig()
    wall, t0 = {}, time.perf_counter()
    proposals = None  # Faster R-CNN makes its own during training
    if rpn_config is None:
        proposals = load_or_compute(
            dataset, proposal_config, proposal_cache, jobs, scheduler, progress=progress
        )
        wall["proposals"], t0 = time.perf_counter() - t0, time.perf_counter()
    # on a first run a helper process compiles the kernels while this one starts on them;
    # not before the proposals, whose workers keep every core busy
    compile_ahead()
    mean, std = pixel_statistics(dataset)
    preprocessing = Preprocessing(tuple(mean), tuple(std), **(image_sizes or {}))
    model_config = model_config or ModelConfig(num_classes=dataset.num_classes)
    rng = np.random.default_rng(train_config.seed)
    classifier = load_or_pretrain(
        dataset, model_config, preprocessing, pretrain_config, pretrain_cache, progress
    )
    if rpn_config is None:
        model = FastRCNN.from_classifier(classifier, model_config, rng)
    else:
        model = FasterRCNN.from_classifier(classifier, model_config, rpn_config, rng)
    wall["pre-training"], t0 = time.perf_counter() - t0, time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    header = {"classes": list(dataset.classes), "preprocessing": asdict(preprocessing)}
    if rpn_config is not None:  # so that a resume can refuse an alternating run
        header["rpn_training"] = "alternating" if alternating else "joint"
    config = {
        "model": asdict(model_config),
        "train": asdict(train_config),
        "pretrain": asdict(pretrain_config),
        "sampler": asdict(sampler_config),
        "proposals": asdict(proposal_config) if rpn_config is None else "rpn",
        "rpn": asdict(rpn_config) if rpn_config is not None else None,
        "rpn_training": None if rpn_config is None else ("alternating" if alternating else "joint"),
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

    def make_trainer(trainer_class, net, folder, length=1.0, *extra):
        config = scaled_schedule(train_config, length)
        return trainer_class(net, *extra, sampler, config, folder, header, rng)

    if rpn_config is not None and alternating:
        fresh = FastRCNN.from_classifier(classifier, model_config, rng)  # step 2's start
        trainer, steps = train_alternating(model, fresh, run_dir, make_trainer, progress)
        trainer.wall = {**wall, **steps}
        return trainer
    trainer = make_trainer(Trainer if rpn_config is None else JointTrainer, model, run_dir)
    if resume:
        trainer.resume(trainer.checkpoint_path)
        print(f"resumed from {trainer.checkpoint_path} at epoch {trainer.epoch}")
    trainer.run(progress=progress)
    wall["fine-tuning"] = time.perf_counter() - t0
    trainer.wall = wall
    return trainer
