"""Every command refuses bad input in one line (``error: ...``, status 2), before any work.

Each case runs ``python -m minircnn.<command>`` as a subprocess in a scratch folder and
checks: exit status 2, no traceback, stderr's last line ``error: ...`` naming the
offending argument or path. The cases run concurrently (each mostly waits for Python and
Numba to import); bad files are made once per module.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from minircnn import cli
from minircnn.checkpoint import save_checkpoint
from minircnn.data import toyvoc
from minircnn.data.image import Preprocessing
from minircnn.faster_rcnn import FasterRCNN
from minircnn.model import Classifier, FastRCNN, ModelConfig

REPO = Path(__file__).resolve().parents[1]
# stride 2, RoI pooling 2x2: the smallest detection scale is 4 px
CONFIG = ModelConfig(
    num_classes=len(toyvoc.CLASSES),
    conv_channels=(4, 8),
    convs_per_block=(1, 1),
    roi_size=2,
    fc_dims=(8, 8),
)
HEADER = {
    "classes": list(toyvoc.CLASSES),
    "preprocessing": asdict(Preprocessing((100.0,) * 3, (50.0,) * 3, short_side=64, max_side=96)),
}

# (command, arguments, what the error line must name); paths are relative to the scratch
# folder the fixture fills: toy/ (a devkit), good.npz and the bad checkpoints, img.jpg
CASES = [
    # train: numbers are checked before any data is generated (--tiny would generate it)
    ("train", "--tiny --epochs -1", "--epochs"),
    ("train", "--tiny --lr nan", "--lr"),
    ("train", "--tiny --epochs 4 --lr-drop 5", "--lr-drop"),
    ("train", "--tiny --lr-drop 0", "--lr-drop"),
    # the default schedules: Fast R-CNN's 16 epochs, Faster R-CNN's 12 (faster_rcnn_schedule)
    ("train", "--tiny --lr-drop 17", "--lr-drop: 17 is after the last epoch (16)"),
    ("train", "--tiny --proposals rpn --lr-drop 13", "--lr-drop: 13 is after the last epoch (12)"),
    ("train", "--tiny --copy-paste 1.5", "--copy-paste"),
    ("train", "--tiny --max-images 0", "--max-images"),
    ("train", "--tiny --max-images 1", "--max-images"),
    ("train", "--tiny --jobs 0", "--jobs"),
    ("train", "--tiny --pretrain-iterations -5", "--pretrain-iterations"),
    ("train", "--tiny --resume --name fresh", "--resume"),
    ("train", "--epochs 2", "--tiny or --voc-root"),
    ("train", "--voc-root nowhere", "nowhere/VOC2007"),
    ("train", "--voc-root toy --split nope", "nope.txt"),
    ("train", "--voc-root toy --classes disc,plane", "--classes disc,plane"),
    ("train", "--voc-root toy --name other --resume", "runs/other/checkpoint.npz"),
    ("train", "--tiny --proposals edge-boxes", "--proposals"),
    ("train", "--tiny --rpn-training alternating", "--rpn-training"),
    ("train", "--tiny --proposals rpn --rpn-window 4", "--rpn-window"),
    ("train", "--tiny --rpn-window 5", "--rpn-window"),
    ("train", "--tiny --proposals rpn --rpn-dilation 0", "--rpn-dilation"),
    ("train", "--tiny --rpn-dilation 1", "--rpn-dilation: only with --proposals rpn"),
    ("train", "--tiny --proposals rpn --rpn-training alternating --resume", "--resume"),
    ("train", "--voc-root toy --proposals rpn --name alt --resume", "runs/alt/checkpoint.npz"),
    # evaluate: arguments, then each kind of bad checkpoint, then the data set
    ("evaluate", "--checkpoint good.npz --root toy --svd-rank 2.5", "--svd-rank"),
    ("evaluate", "--checkpoint good.npz --root toy --scales 0,-5", "--scales"),
    ("evaluate", "--checkpoint good.npz --root toy --scales a,b", "--scales"),
    ("evaluate", "--checkpoint good.npz --root toy --scales 3,64", "--scales 3,64"),
    ("evaluate", "--checkpoint good.npz --root toy --scales 64,96 --refine on", "--refine on"),
    ("evaluate", "--checkpoint good.npz --root toy --refine always", "--refine"),
    ("evaluate", "--checkpoint good.npz --root toy --tta sometimes", "--tta"),
    ("evaluate", "--checkpoint good.npz --root toy --tta on --refine on", "--tta on"),
    ("evaluate", "--checkpoint rpn.npz --root toy --tta on", "--tta on"),
    ("evaluate", "--checkpoint missing.npz --root toy", "missing.npz"),
    ("evaluate", "--checkpoint toy --root toy", "toy"),
    ("evaluate", "--checkpoint truncated.npz --root toy", "truncated.npz"),
    ("evaluate", "--checkpoint notes.txt --root toy", "notes.txt"),
    ("evaluate", "--checkpoint array.npy --root toy", "array.npy"),
    ("evaluate", "--checkpoint version1.npz --root toy", "version1.npz"),
    ("evaluate", "--checkpoint otherclasses.npz --root toy", "otherclasses.npz"),
    ("evaluate", "--checkpoint rpn.npz --root toy --scales 64,96", "--scales"),
    # detect
    ("detect", "--checkpoint missing.npz img.jpg", "missing.npz"),
    ("detect", "--checkpoint classifier.npz img.jpg", "classifier.npz"),
    ("detect", "--checkpoint good.npz nothere.jpg", "nothere.jpg"),
    ("detect", "--checkpoint good.npz img.jpg --score-threshold 1.5", "--score-threshold"),
    ("detect", "--checkpoint good.npz img.jpg --refine yes", "--refine"),
    ("detect", "--checkpoint rpn.npz img.jpg --tta on", "--tta on"),
    # the other commands
    ("proposals", "--root toy --jobs 0", "--jobs"),
    ("bench", "--sections nope", "--sections"),
    ("rpn.compare", "--ss rpn.npz --rpn good.npz --root toy", "--ss rpn.npz"),
    ("rpn.compare", "--ss good.npz --rpn missing.npz --root toy", "missing.npz"),
    ("data.voc", "--check nowhere", "--check nowhere"),
    ("data.toyvoc", "--out gen --train -3", "--train"),
    ("data.toyvoc", "--out gen --min-size 300", "--max-size 256"),
    ("data.convert", "--from coco nowhere.json --out conv", "nowhere.json"),
]


def make_inputs(work: Path) -> None:
    """The toy devkit, an image, a good checkpoint and one of each kind of bad one."""
    toyvoc.generate(work / "toy", seed=0, counts={"train": 2, "test": 2}, min_size=64, max_size=72)
    (work / "img.jpg").write_bytes(next((work / "toy/VOC2007/JPEGImages").iterdir()).read_bytes())
    good = save_checkpoint(work / "good.npz", FastRCNN(CONFIG), HEADER)
    (work / "truncated.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (work / "notes.txt").write_text("not a checkpoint\n")
    np.save(work / "array.npy", np.zeros(3))
    np.savez(work / "version1.npz", header=np.array(json.dumps({"version": 1})))
    save_checkpoint(work / "classifier.npz", Classifier(CONFIG), HEADER)
    save_checkpoint(work / "rpn.npz", FasterRCNN(CONFIG), HEADER)
    other = {**HEADER, "classes": ["cat", "dog", "car", "bus", "cow"]}
    save_checkpoint(work / "otherclasses.npz", FastRCNN(CONFIG), other)
    # a run to --resume whose model is not the one train builds (ModelConfig defaults)
    save_checkpoint(
        work / "runs/other/checkpoint.npz", FastRCNN(CONFIG), {**HEADER, "train_state": {}}
    )
    alternating = {**HEADER, "train_state": {}, "rpn_training": "alternating"}
    save_checkpoint(work / "runs/alt/checkpoint.npz", FasterRCNN(CONFIG), alternating)


def run_command(command: str, args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m minircnn.<command> <args>`` in ``cwd``, this checkout importable."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", f"minircnn.{command}", *args.split()],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The scratch folder and every case's CompletedProcess, run four at a time."""
    work = tmp_path_factory.mktemp("cli")
    make_inputs(work)
    before = {p for p in work.rglob("*")}
    with ThreadPoolExecutor(4) as pool:
        futures = {(c, a): pool.submit(run_command, c, a, work) for c, a, _ in CASES}
        done = {key: f.result() for key, f in futures.items()}
    return work, before, done


@pytest.mark.parametrize(("command", "args", "named"), CASES, ids=[f"{c} {a}" for c, a, _ in CASES])
def test_bad_input_is_refused_in_one_line(results, command, args, named):
    _, _, done = results
    run = done[(command, args)]
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert lines and lines[-1].startswith("error: "), run.stderr
    assert named in lines[-1], run.stderr


def test_nothing_was_generated_or_written(results):
    work, before, _ = results
    assert {p for p in work.rglob("*")} == before  # no data/, runs/, gen/ or conv/


def test_debug_shows_the_traceback(tmp_path):
    run = run_command("train", "--voc-root nowhere --debug", tmp_path)
    assert run.returncode != 0 and "Traceback" in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("FileNotFoundError: nowhere/VOC2007")


def failing_main(error: Exception):
    """A command whose main raises ``error``."""

    @cli.command
    def main(argv=None):
        raise error

    return main


def test_command_prints_input_errors_and_lets_bugs_through(capsys):
    assert failing_main(cli.UsageError("--x 3: too big"))([]) == 2
    assert capsys.readouterr().err == "error: --x 3: too big\n"
    assert failing_main(FileNotFoundError(2, "No such file or directory", "a.jpg"))([]) == 2
    assert capsys.readouterr().err == "error: a.jpg: No such file or directory\n"
    with pytest.raises(ValueError, match="a bug"):  # a plain ValueError is not the user's
        failing_main(ValueError("a bug"))([])
    with pytest.raises(cli.UsageError):  # --debug: the traceback
        failing_main(cli.UsageError("--x 3: too big"))(["--debug"])


@pytest.mark.parametrize(
    ("validator", "text", "value"),
    [
        (cli.svd_rank, "64", 64),
        (cli.svd_rank, "0.25", 0.25),
        (cli.svd_rank, "1.0", None),
        (cli.svd_rank, "2.5", None),
        (cli.svd_rank, "0", None),
        (cli.int_at_least(16), "8", None),
        (cli.scales, "160,192", [160, 192]),
        (cli.scales, "160,", None),
        (cli.jobs, "-1", -1),
        (cli.jobs, "0", None),
        (cli.probability, "1", 1.0),
        (cli.probability, "nan", None),
        (cli.positive_finite_float, "inf", None),
        (cli.name_list, " car, dog ,", ["car", "dog"]),
        (cli.name_list, ",", None),
    ],
)
def test_validators(validator, text, value):
    if value is None:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"got '{text}'")):
            validator(text)
    else:
        assert validator(text) == value
