"""The bench command's sections run to the end whether or not the bench extra is installed."""

import json
from importlib.util import find_spec

import numpy as np

from minircnn.bench.__main__ import main
from minircnn.bench.harness import random_rois
from minircnn.bench.pipeline import rcnn_bound
from minircnn.data.image import Preprocessing
from minircnn.detect import Detector
from minircnn.model import FastRCNN, ModelConfig


def test_vs_torch_quick(tmp_path, capsys):
    out = tmp_path / "b.json"
    results = main(["--quick", "--sections", "vs_torch", "--out", str(out)])
    printed = capsys.readouterr().out
    section = results["sections"]["vs_torch"]
    if find_spec("torch") is None or find_spec("torchvision") is None:
        assert section == {}
        assert (
            "vs_torch: skipped, needs torch and torchvision: pip install -e '.[bench]'" in printed
        )
    else:  # with the bench extra: the same computation on both sides, then the timings
        assert section["agreement"]["outputs"] < 1e-3
        assert [r["what"] for r in section["rows"]][0].startswith("train step")
    assert json.loads(out.read_text())["sections"]["vs_torch"] == section


def test_cold_start_quick(tmp_path, capsys):
    """--quick runs the child process once with the ordinary Numba cache (which the rest
    of the suite fills anyway): the child's script and its JSON line stay in working order."""
    results = main(["--quick", "--sections", "cold_start", "--out", str(tmp_path / "b.json")])
    (row,) = results["sections"]["cold_start"]["rows"]
    assert row["to_first_step_s"] > row["first_step_s"] > 0
    assert "first training step" in capsys.readouterr().out


def test_layers_quick_times_the_default_networks_convs(tmp_path):
    """Each conv of the default network, doing what a training step asks of it."""
    results = main(["--quick", "--sections", "layers", "--out", str(tmp_path / "b.json")])
    ops = [r["op"] for r in results["sections"]["layers"]["default_convs"]]
    assert ops == [
        "conv1_1 3->16 @48x64 forward",  # the frozen first block
        "conv2_1 16->32 @24x32 forward + dW",  # the first trained conv needs no input grad
        "conv3_1 32->64 @12x16 forward + dW + dx",
        "conv3_2 64->64 @12x16 forward + dW + dx",
    ]


def test_rcnn_bound_follows_its_timings_and_refuses_noise():
    rng = np.random.default_rng(0)
    config = ModelConfig(
        num_classes=2, conv_channels=(8, 16), convs_per_block=(1, 1), roi_size=2, fc_dims=(16, 16)
    )
    pre = Preprocessing((100.0,) * 3, (50.0,) * 3, short_side=64, max_side=96)
    detector = Detector(FastRCNN(config, rng).eval(), ("a", "b"), pre)
    image = rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)
    boxes = random_rois(rng, 400, 1, 60, 90)[:, 1:]
    # R-CNN at 10 ms per crop: far above both the 8 px conv and Fast R-CNN's cost per RoI
    row = {"proposals": 400, "rcnn_ms": 4000.0, "fast_ms": 20.0, "speedup": 200.0}
    out = rcnn_bound(detector, [image], [boxes], row, quick=True)
    crops = out["crops"]
    assert [c["crop_px"] for c in crops] == [8, 16, 32, 224]  # crop_size = 2 * stride * P
    assert out["rcnn_ms_per_crop"] == 10.0 and out["fast_ms_per_roi"] > 0
    assert np.isclose(out["bound"], 10.0 / out["fast_ms_per_roi"])
    assert np.isclose(crops[0]["bound"], out["bound"])  # our own crop size: as measured
    assert crops[-1]["conv_ms_per_crop"] > crops[0]["conv_ms_per_crop"]  # 784x the pixels
    shares = [c["conv_share"] for c in crops]
    assert all(0 < s < 1 for s in shares) and shares[-1] > shares[0]
    # R-CNN "faster" per crop than the conv alone: the timings are noise, no bound given
    noisy = rcnn_bound(detector, [image], [boxes], {**row, "rcnn_ms": 0.0}, quick=True)
    assert np.isnan(noisy["bound"]) and all(np.isnan(c["bound"]) for c in noisy["crops"])
