"""Bench section ``vs_torch``: the whole default network beside the same network in PyTorch.

The default ``FastRCNN`` (``ModelConfig(num_classes=5)``) is rebuilt with ``torch.nn`` and
``torchvision.ops.roi_pool`` under the same layer names, with minircnn's weights copied in
and the same blocks frozen; torch's SGD is set up as minircnn's (momentum, weight decay,
bias learning-rate multiplier). Both then run (a) one training step on a synthetic batch
of the training shapes (N = 2 images of 192 x 256, R = 128 RoIs): forward, multi-task
loss, backward, SGD update; and (b) the detection forward of one 192 x 256 image with 2000
RoIs. The torch side runs in a child process with torch's own OpenMP settings; before it
times torch, it checks on one forward and one training step that both sides compute the
same thing.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np

from minircnn.bench.harness import (
    compare,
    fixed_batch_trainer,
    print_table,
    random_rois,
    section,
    torchvision_op,
    training_batch,
    try_import_torch,
)
from minircnn.model import FastRCNN, ModelConfig
from minircnn.optim import SGDConfig
from minircnn.timing import best_time, sgemm_gflops

HEIGHT, WIDTH = 192, 256  # the training scale's input for the toy set's 4:3 images
DETECT_ROIS = 2000  # proposals per image at test time (section 3)


def torch_fast_rcnn(torch, tv_roi_pool, model: FastRCNN):
    """``model``'s network as a ``torch.nn.Module`` with its weights copied and the same
    parameters frozen (``requires_grad`` False outside ``model.trainable_names()``).

    Its ``forward(images [N, 3, H, W], rois [R, 5])`` returns (cls_score ``[R, K+1]``,
    bbox_pred ``[R, 4(K+1)]``), as ``FastRCNN.forward`` does. The layers are registered
    under minircnn's names (``conv1_1``, ..., ``fc6``, ``cls_score``), so the state dict
    and ``model.params()`` share their keys.
    """
    nn, F = torch.nn, torch.nn.functional
    roi = model.roi_pool

    class TorchFastRCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.plan = []  # [(conv names of the block, max-pool after it?)]
            for layers, pool in model.backbone.blocks:
                for name, conv, _ in layers:
                    args = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride)
                    kw = {"padding": conv.padding, "dilation": conv.dilation}
                    self.add_module(name, nn.Conv2d(*args, **kw))
                self.plan.append(([name for name, _, _ in layers], pool is not None))
            n_convs = len(model.backbone.named_layers())
            for name, layer in model.named_layers()[n_convs:]:  # fc6, fc7 and the heads
                self.add_module(name, nn.Linear(layer.in_features, layer.out_features))
            self.dropout = model.config.dropout

        def forward(self, images, rois):
            x = images
            for names, pool in self.plan:
                for name in names:
                    x = F.relu(getattr(self, name)(x))
                if pool:
                    x = F.max_pool2d(x, 2)
            x = tv_roi_pool(x, rois, roi.output_size, roi.spatial_scale).flatten(1)
            for fc in (self.fc6, self.fc7):
                x = F.relu(fc(x))
                if self.dropout:  # 0 by default: skipped, as minircnn's Dropout does
                    x = F.dropout(x, self.dropout, self.training)
            return self.cls_score(x), self.bbox_pred(x)

    net = TorchFastRCNN()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.params().items()})
    trainable = set(model.trainable_names())
    for name, module in net.named_children():
        module.requires_grad_(name in trainable)
    return net


def torch_sgd(torch, net, config: SGDConfig):
    """torch's SGD doing minircnn's update. Caffe's ``v <- m v + lr (g + wd w); w <- w - v``
    is torch's ``v <- m v + g + wd w; w <- w - lr v`` scaled by lr, so both give the same
    weights at a constant learning rate; biases get ``bias_lr_mult`` and no decay."""
    trained = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for n, p in trained if not n.endswith("bias")],
            "weight_decay": config.weight_decay,
        },
        {
            "params": [p for n, p in trained if n.endswith("bias")],
            "lr": config.lr * config.bias_lr_mult,
            "weight_decay": 0.0,
        },
    ]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def torch_multitask_loss(torch, cls_score, bbox_pred, labels, targets, weights, loc_weight):
    """``MultiTaskLoss`` in torch: mean cross-entropy over the R RoIs plus ``loc_weight``
    times the weighted smooth-L1 sum (beta 1) divided by R (the weights select each
    foreground RoI's 4 class columns: eq. 1's ``[u >= 1]``). Returns a scalar tensor."""
    F = torch.nn.functional
    loc = F.smooth_l1_loss(bbox_pred, targets, reduction="none", beta=1.0)
    return F.cross_entropy(cls_score, labels) + loc_weight * (weights * loc).sum() / len(labels)


def default_network_inputs():
    """The default ``FastRCNN`` (seed 0) with a synthetic training batch of the training
    shapes and one detection input: (model, batch, det_images ``[1, 3, H, W]`` float32,
    det_rois ``[DETECT_ROIS, 5]`` float32). Deterministic, so the parent process and the
    torch child build the same weights and data."""
    rng = np.random.default_rng(0)
    model = FastRCNN(ModelConfig(num_classes=5), rng)
    batch = training_batch(rng, model.config.num_classes, 2, HEIGHT, WIDTH, 128)
    det_images = rng.standard_normal((1, 3, HEIGHT, WIDTH), dtype=np.float32)
    det_rois = random_rois(rng, DETECT_ROIS, 1, HEIGHT, WIDTH)
    return model, batch, det_images, det_rois


# The torch side runs in its own process, importing torch before minircnn: minircnn sets
# OMP_WAIT_POLICY=PASSIVE for its own Numba threads (see minircnn/__init__.py), and in one
# process that setting would also put torch's OpenMP threads to sleep after every op,
# which is not how a PyTorch user runs it. The child gets the parent's environment
# without that variable (minircnn's default or a value set by hand), so torch runs with
# its own defaults.
_TORCH_CHILD_SCRIPT = """import json, sys
import torch, torchvision.ops  # first: their OpenMP reads its settings as it loads
from minircnn.bench.vs_torch import torch_side
print(json.dumps(torch_side(int(sys.argv[1]), int(sys.argv[2]))))
"""


def torch_side(threads: int, repeats: int) -> dict:
    """The torch child's work: check on one forward and one training step that minircnn and
    torch compute the same thing (max absolute differences), then time torch's training
    step and detection forward, each in its own block (best of ``repeats``, seconds)."""
    torch = try_import_torch(threads)
    model, batch, det_images, det_rois = default_network_inputs()
    net = torch_fast_rcnn(torch, torchvision_op("roi_pool"), model)  # the same weights
    trainer = fixed_batch_trainer(model, batch)  # Trainer.step = our step minus sampling
    optimizer = torch_sgd(torch, net, trainer.optimizer.config)
    t_images, t_rois, t_labels, t_targets, t_weights = (
        torch.from_numpy(a)
        for a in (batch.images, batch.rois, batch.labels, batch.bbox_targets, batch.bbox_weights)
    )

    def torch_step():
        cls_score, bbox_pred = net(t_images, t_rois)
        loss = torch_multitask_loss(
            torch, cls_score, bbox_pred, t_labels, t_targets, t_weights, trainer.loss.loc_weight
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    # is it the same computation? one forward, then one step, on both sides
    net.train()
    with torch.no_grad():
        t_out = net(t_images, t_rois)
    ours_out = model.train().forward(batch.images, batch.rois)
    ours_loss = trainer.step(list(range(len(batch.images)))).losses.total
    torch_loss = torch_step().item()
    params = dict(net.named_parameters())

    def max_diff(arrays, tensors):
        return max(
            float(np.abs(a - t.detach().numpy()).max())
            for a, t in zip(arrays, tensors, strict=True)
        )

    grads, weights = model.grads(), model.params()
    agreement = {
        "outputs": max_diff(ours_out, t_out),
        "loss": abs(ours_loss - torch_loss),
        # relative to the largest gradient (~10, cls_score's): float32 sums over a batch
        "gradients_rel": max_diff(grads.values(), (params[n].grad for n in grads))
        / max(float(np.abs(g).max()) for g in grads.values()),
        "params_after_step": max_diff(weights.values(), (params[n] for n in weights)),
    }
    train_s = best_time(torch_step, repeats)
    net.eval()
    t_det_images, t_det_rois = torch.from_numpy(det_images), torch.from_numpy(det_rois)
    with torch.no_grad():
        detect_s = best_time(lambda: net(t_det_images, t_det_rois), repeats)
    return {
        "version": torch.__version__,
        "agreement": agreement,
        "train_s": train_s,
        "detect_s": detect_s,
    }


def run_torch_side(threads: int, repeats: int) -> dict:
    """``torch_side`` in a fresh process with torch's own OpenMP settings; its result."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    child = subprocess.run(
        [sys.executable, "-c", _TORCH_CHILD_SCRIPT, str(threads), str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"vs_torch's torch process failed:\n{child.stderr[-2000:]}")
    return json.loads(lines[-1])


@section("vs_torch")
def bench_vs_torch(quick: bool, threads: int) -> dict:
    """The default network's training step and detection forward, minircnn against the
    same network and weights in PyTorch (timed in a child process, see above); minircnn's
    training step split by stage."""
    if not all(importlib.util.find_spec(m) for m in ("torch", "torchvision")):
        print("\n== vs_torch: skipped, needs torch and torchvision: pip install -e '.[bench]'")
        return {}
    repeats, rounds = (3, 1) if quick else (20, 3)
    peak = sgemm_gflops(1024)
    model, batch, det_images, det_rois = default_network_inputs()
    trainer = fixed_batch_trainer(model, batch)
    indices = list(range(len(batch.images)))
    trainer.step(indices)  # one step first, as the torch child does before its timing
    train_totals, n_steps = {}, 0  # the stages of the training blocks (warm-up calls too)
    # Each side in its own blocks of consecutive calls (see bench/__main__.py), the two
    # sides taking turns for a few rounds: a shared machine has slow spells lasting
    # seconds, and the best call over the rounds is the side's time.
    ours_train = ours_detect = torch_train = torch_detect = float("inf")
    for _ in range(rounds):
        model.train()
        trainer.timer.totals.clear()
        steps_before = trainer.iteration
        ours_train = min(ours_train, best_time(lambda: trainer.step(indices), repeats))
        n_steps += trainer.iteration - steps_before
        for k, v in trainer.timer.totals.items():
            train_totals[k] = train_totals.get(k, 0.0) + v
        model.eval()
        ours_detect = min(
            ours_detect, best_time(lambda: model.forward(det_images, det_rois), repeats)
        )
        torch_result = run_torch_side(threads, repeats)
        torch_train = min(torch_train, torch_result["train_s"])
        torch_detect = min(torch_detect, torch_result["detect_s"])
    stages = {k: v / n_steps for k, v in train_totals.items() if k != "sampling"}
    agreement = torch_result["agreement"]
    print(
        "\nsame weights, same batch: max |minircnn - torch| "
        + ", ".join(f"{k} {v:.1e}" for k, v in agreement.items())
    )
    if agreement["outputs"] > 1e-3:
        print("WARNING: the two networks' outputs differ: the comparison below is not fair")

    # FLOPs: the step's (train_flops), the convs' forward alone, and the FC layers' rest
    backbone = model.backbone
    step_flops = model.train_flops(batch.images.shape, len(batch.rois))
    conv_fwd = backbone.train_flops(len(batch.images), HEIGHT, WIDTH, backward=False)
    conv_all = backbone.train_flops(len(batch.images), HEIGHT, WIDTH)
    fc_fwd_per_roi = (step_flops - conv_all) / 3 / len(batch.rois)  # 3 products per layer
    detect_flops = backbone.train_flops(1, HEIGHT, WIDTH, backward=False)
    detect_flops += fc_fwd_per_roi * DETECT_ROIS

    cases = [
        ("train step (N=2, R=128)", ours_train, torch_train, step_flops),
        (f"detect (1 image, {DETECT_ROIS} RoIs)", ours_detect, torch_detect, detect_flops),
    ]
    rows = []
    for what, ours, theirs, flops in cases:
        row = compare({"what": what}, ours, theirs, flops)
        row["ours_%peak"] = 100 * row["ours_GFLOPs"] / peak
        rows.append(row)
    columns = ["what", "ours_ms", "ours_GFLOPs", "ours_%peak", "torch_ms", "torch_GFLOPs", "ratio"]
    print_table(
        f"default network, minircnn vs torch {torch_result['version']}, {threads} threads, "
        f"{HEIGHT}x{WIDTH} images (SGEMM 1024 peak {peak:.0f} GFLOP/s)",
        rows,
        columns,
    )

    stage_flops = {
        "conv_forward": conv_fwd,
        "conv_backward": conv_all - conv_fwd,
        "fc": step_flops - conv_all,
    }
    stage_rows = []
    for name, seconds in [*stages.items(), ("sum of stages", sum(stages.values()))]:
        row = {"stage": name, "ms": 1e3 * seconds}
        if name in stage_flops:
            row["GFLOPs"] = stage_flops[name] / seconds / 1e9
            row["%peak"] = 100 * row["GFLOPs"] / peak
        stage_rows.append(row)
    print_table(
        f"minircnn training step by stage (mean of {n_steps} steps)",
        stage_rows,
        ["stage", "ms", "GFLOPs", "%peak"],
    )
    return {"rows": rows, "stages": stage_rows, "agreement": agreement, "sgemm_gflops": peak}
