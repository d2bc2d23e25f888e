"""compile_ahead's helper process: it must compile exactly what training loads.

Both halves run in fresh processes that share an empty Numba cache directory: the first
starts the helper and waits for it; the second runs a classifier (pre-training) step, a
Fast R-CNN training step and a Faster R-CNN's anchor targets and proposals, and checks,
kernel by kernel, that each was loaded from the cache, i.e. that the helper's tiny calls
had training's argument types.
"""

import json
import os
import subprocess
import sys

START_HELPER = """
from minircnn.layers.warmup import compile_ahead
helper = compile_ahead()
assert helper is not None, "empty cache, yet no helper started"
assert helper.wait() == 0, f"helper failed with status {helper.returncode}"
"""

TRAIN_AND_REPORT = """
import importlib, json
import numpy as np
from minircnn.bench.pipeline import fixed_batch_trainer, training_batch
from minircnn.layers.warmup import compile_ahead
from minircnn.faster_rcnn import FasterRCNN, RPNConfig
from minircnn.model import Classifier, FastRCNN, ModelConfig
from minircnn.pretrain import _warp
from minircnn.rpn import batch_anchor_targets

rng = np.random.default_rng(0)
config = ModelConfig(num_classes=3)
started = compile_ahead() is not None  # the cache is warm now: expect no helper
crops = np.stack([_warp(np.zeros((20, 20, 3), np.uint8), (1, 1, 10, 10), config.crop_size)] * 2)
classifier = Classifier(config, rng)
classifier.forward(np.ascontiguousarray(crops.transpose(0, 3, 1, 2)))
classifier.backward(np.ones((2, config.num_classes + 1), np.float32))
model = FastRCNN(config, rng)
fixed_batch_trainer(model, training_batch(rng, config.num_classes)).step([0, 1])
faster = FasterRCNN(config, RPNConfig(), rng)  # the RPN's anchor targets and proposals
_, scores, deltas = faster.forward_rpn(np.zeros((1, 3, 64, 80), np.float32))
anchors = faster.anchors(*scores.shape[2:])
gt = [np.array([[10, 10, 40, 30]], np.float32)]
batch_anchor_targets(anchors, gt, [(64, 80)], rng, faster.rpn_config.targets)
faster.proposals(scores, deltas, [(64, 80)], [1.0], training=True)
used = {}
for name in ("layers.conv", "layers.linear", "layers.losses", "layers.pool", "layers.roi_pool",
             "ops.boxes", "ops.nms"):
    module = importlib.import_module("minircnn." + name)
    used.update({k: v for k, v in vars(module).items() if getattr(v, "signatures", None)})
image = importlib.import_module("minircnn.data.image")
used["_resize_bilinear_kernel"] = image._resize_bilinear_kernel
print(json.dumps({
    "started": started,
    "compiled_here": sorted(k for k, v in used.items() if v.stats.cache_misses),
    "used": sorted(used),
}))
"""


def test_helper_compiles_what_training_loads(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    subprocess.run([sys.executable, "-c", START_HELPER], env=env, check=True, timeout=600)
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_AND_REPORT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["started"]
    assert {"im2col", "_roi_pool_backward_kernel", "_greedy_nms"} <= set(report["used"])
    # every kernel training used came from the cache the helper filled: one that
    # KERNEL_CALLS misses, or calls with other argument types, is compiled here and fails
    assert report["compiled_here"] == []
