"""`python -m minircnn.report`: the README's results table, measured.

    python -m minircnn.report                      # seeds 0, 1, 2 on the toy set (~5 min)
    python -m minircnn.report --data-seed 1        # a toy set drawn with another seed

The protocol (Fast R-CNN's, and every detection benchmark's): defaults were chosen on the
``val`` split with models trained on ``train``; here the defaults are trained on
``trainval`` once per seed and evaluated on ``test``, which nothing was tuned on, as
``python -m minircnn.evaluate`` does by default (with test-time augmentation). Writes
``runs/report/results_data<data seed>.json`` and ``.md`` (the table the README quotes).
"""

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from minircnn import cli
from minircnn.data import toyvoc
from minircnn.data.voc import VOCDataset
from minircnn.detect import load_detector, tta_options
from minircnn.evaluate import evaluate_model, evaluation_dataset
from minircnn.pretrain import PretrainConfig
from minircnn.proposals.cache import load_or_compute
from minircnn.train import TrainConfig, fit

SIZES = ("small", "medium", "large")


def train_and_test(root: str, seed: int, run_dir: Path) -> tuple[dict, dict]:
    """Train the defaults on ``root``'s trainval with ``seed``, evaluate on test ->
    ({"map07", "map", "map_50_95", "small", "medium", "large", "train_s", "ms_per_image"},
    the test-time options used: ``detect.tta_options``, the command line's default)."""
    t0 = time.perf_counter()
    trainer = fit(
        VOCDataset(root, split="trainval"),
        run_dir,
        train_config=replace(TrainConfig(), seed=seed),
        pretrain_config=replace(PretrainConfig(), seed=seed),
        progress=False,
    )
    train_s = time.perf_counter() - t0
    test = evaluation_dataset(root, split="test")
    detector = load_detector(trainer.checkpoint_path)
    proposals = load_or_compute(test, progress=False)
    options = tta_options(detector)
    results, _ = evaluate_model(detector, test, proposals, False, **options)
    return {
        "map07": results["map07"],
        "map": results["map"],
        "map_50_95": results["map_50_95"],
        **{size: results["map_by_size"][size] for size in SIZES},
        "train_s": train_s,
        "ms_per_image": 1e3 * results["seconds_per_image"],
    }, options


def markdown(rows: dict[int, dict]) -> str:
    """One row per seed and a mean +/- standard deviation row (sample std, ddof=1)."""
    keys = ("map07", "map", "map_50_95", *SIZES)
    head = (
        "| seed | mAP@0.5 (VOC07) | mAP@0.5 (area) | mAP@[.5:.95] "
        "| AP small | AP medium | AP large |"
    )
    lines = [head, "|" + " --- |" * (len(keys) + 1)]
    for seed, r in rows.items():
        lines.append(f"| {seed} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    if len(rows) > 1:
        stats = [np.array([r[k] for r in rows.values()]) for k in keys]
        cells = " | ".join(f"**{v.mean():.3f} ± {v.std(ddof=1):.3f}**" for v in stats)
        lines.append(f"| **mean ± std** | {cells} |")
    return "\n".join(lines) + "\n"


def seed_list(text: str) -> list[int]:
    """Validator: comma-separated seeds >= 0, e.g. "0,1,2"."""
    try:
        seeds = [int(v) for v in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected seeds >= 0 separated by commas, got {text!r}")
    return seeds


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m minircnn.report", description=__doc__)
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="default 0,1,2")
    p.add_argument(
        "--data-seed", type=cli.non_negative_int, default=0, help="toy set seed (default 0)"
    )
    p.add_argument("--out", default="runs/report", help="output folder")
    return p


@cli.command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = "data/toyvoc" if args.data_seed == 0 else f"data/toyvoc_seed{args.data_seed}"
    if not (Path(root) / "VOC2007" / "ImageSets" / "Main" / "test.txt").exists():
        toyvoc.generate(root, seed=args.data_seed, counts=toyvoc.TINY)
    out = Path(args.out)
    rows, options = {}, {}
    for seed in args.seeds:
        rows[seed], options = train_and_test(root, seed, out / f"data{args.data_seed}_seed{seed}")
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[seed].items()))
    out.mkdir(parents=True, exist_ok=True)
    name = f"results_data{args.data_seed}"
    summary = {"root": root, "test_time": options, "seeds": rows}
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1))
    (out / f"{name}.md").write_text(markdown(rows))
    print(markdown(rows) + f"wrote {out}/{name}.json and {name}.md")
    return 0


if __name__ == "__main__":
    cli.run(main)
