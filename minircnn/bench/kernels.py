"""Bench sections for single kernels: conv / max-pool / linear, RoI pooling, NMS."""

import numpy as np

from minircnn.bench.harness import (
    compare,
    print_table,
    random_rois,
    section,
    side_by_side,
    torchvision_op,
    try_import_torch,
)
from minircnn.layers import Conv2d, Linear, MaxPool2d
from minircnn.layers.roi_pool import roi_pool, roi_pool_backward
from minircnn.ops.nms import nms


@section("layers")
def bench_layers(quick: bool, threads: int) -> dict:
    """Conv 3x3 (fwd+bwd), 2x2 max-pool (fwd+bwd) and Linear (fwd+bwd), float32."""
    torch = try_import_torch(threads)
    repeats, rounds = (3, 1) if quick else (10, 3)
    shapes = [(32, 64, 112), (64, 128, 56), (128, 256, 28)]
    if quick:
        shapes = [(c_in, c_out, s // 4) for c_in, c_out, s in shapes]
    rng = np.random.default_rng(0)
    rows = []
    for c_in, c_out, size in shapes:
        x = rng.standard_normal((2, c_in, size, size), dtype=np.float32)
        conv = Conv2d(c_in, c_out, 3, padding=1, rng=rng)
        dy = rng.standard_normal((2, c_out, size, size), dtype=np.float32)

        def ours_conv(conv=conv, x=x, dy=dy):
            conv.forward(x)
            conv.backward(dy)

        flops = 3 * 2 * 2 * c_out * c_in * 9 * size * size  # fwd, dx, dW
        torch_conv = None
        if torch is not None:
            tx = torch.from_numpy(x).requires_grad_()
            tw = torch.from_numpy(conv.params["weight"]).requires_grad_()
            tb = torch.from_numpy(conv.params["bias"]).requires_grad_()
            tdy = torch.from_numpy(dy)

            def torch_conv(tx=tx, tw=tw, tb=tb, tdy=tdy):
                torch.nn.functional.conv2d(tx, tw, tb, padding=1).backward(tdy)

        ours, theirs = side_by_side(ours_conv, torch_conv, repeats, rounds)
        rows.append(compare({"op": f"conv3x3 {c_in}->{c_out} @{size}"}, ours, theirs, flops))

    for _, c_out, size in shapes:
        x = rng.standard_normal((2, c_out, size, size), dtype=np.float32)
        pool = MaxPool2d(2)
        dy = rng.standard_normal((2, c_out, size // 2, size // 2), dtype=np.float32)

        def ours_pool(pool=pool, x=x, dy=dy):
            pool.forward(x)
            pool.backward(dy)

        torch_pool = None
        if torch is not None:
            tx = torch.from_numpy(x).requires_grad_()
            tdy = torch.from_numpy(dy)

            def torch_pool(tx=tx, tdy=tdy):
                torch.nn.functional.max_pool2d(tx, 2).backward(tdy)

        ours, theirs = side_by_side(ours_pool, torch_pool, repeats, rounds)
        rows.append(compare({"op": f"maxpool2x2 {c_out} @{size}"}, ours, theirs))

    n_in, n_out, batch = (12544, 1024, 128) if not quick else (3136, 512, 64)
    fc = Linear(n_in, n_out, rng=rng)
    x = rng.standard_normal((batch, n_in), dtype=np.float32)
    dy = rng.standard_normal((batch, n_out), dtype=np.float32)

    def ours_fc():
        fc.forward(x)
        fc.backward(dy)

    torch_fc = None
    if torch is not None:
        tx = torch.from_numpy(x).requires_grad_()
        tw = torch.from_numpy(fc.params["weight"]).requires_grad_()
        tb = torch.from_numpy(fc.params["bias"]).requires_grad_()
        tdy = torch.from_numpy(dy)

        def torch_fc():
            torch.nn.functional.linear(tx, tw, tb).backward(tdy)

    ours, theirs = side_by_side(ours_fc, torch_fc, repeats, rounds)
    flops = 3 * 2 * batch * n_in * n_out
    rows.append(compare({"op": f"linear {n_in}->{n_out} B{batch}"}, ours, theirs, flops))

    columns = ["op", "ours_ms", "ours_GFLOPs", "torch_ms", "torch_GFLOPs", "ratio"]
    print_table("layers (forward + backward, float32, N=2)", rows, columns)
    default_rows = bench_default_convs(torch, repeats, rounds, quick)
    return {"rows": rows, "default_convs": default_rows}


def bench_default_convs(torch, repeats: int, rounds: int, quick: bool) -> list[dict]:
    """Each conv of the default ``FastRCNN`` timed alone at the shapes a training step gives
    it (N = 2 images of 192 x 256, or 48 x 64 with ``quick``), doing what the step does:
    forward only in the frozen block, forward + dW for the first trained conv (no input
    gradient), forward + dW + dx above. Small C_in and large H x W: not the mid shapes
    above, and where the im2col + GEMM convolution is least efficient (the first conv,
    with 3 input channels, runs the direct kernel instead: see ``layers/conv.py``)."""
    from minircnn.model import FastRCNN, ModelConfig

    rng = np.random.default_rng(0)
    model = FastRCNN(ModelConfig(num_classes=5), rng)
    backbone = model.backbone
    height, width = (48, 64) if quick else (192, 256)
    input_size = f"{height}x{width}"
    rows = []
    for b, (layers, pool) in enumerate(backbone.blocks):
        for name, conv, _ in layers:
            trained, need_dx = b >= backbone.frozen_blocks, conv.need_input_grad
            x = rng.standard_normal((2, conv.in_channels, height, width), dtype=np.float32)
            dy = rng.standard_normal((2, conv.out_channels, height, width), dtype=np.float32)

            def ours(conv=conv, x=x, dy=dy, trained=trained):
                conv.forward(x)
                if trained:
                    conv.backward(dy)

            torch_conv = None
            if torch is not None:
                tx = torch.from_numpy(x).requires_grad_(need_dx)
                tw = torch.from_numpy(conv.params["weight"]).requires_grad_(trained)
                tb = torch.from_numpy(conv.params["bias"]).requires_grad_(trained)
                tdy = torch.from_numpy(dy)

                def torch_conv(tx=tx, tw=tw, tb=tb, tdy=tdy, trained=trained):
                    y = torch.nn.functional.conv2d(tx, tw, tb, padding=1)
                    if trained:
                        y.backward(tdy)

            ours_ms, theirs = side_by_side(ours, torch_conv, repeats, rounds)
            passes = 1 + trained + need_dx
            flops = passes * 2 * 2 * conv.out_channels * conv.in_channels * 9 * height * width
            what = ["forward", "forward + dW", "forward + dW + dx"][passes - 1]
            op = f"{name} {conv.in_channels}->{conv.out_channels} @{height}x{width} {what}"
            rows.append(compare({"op": op}, ours_ms, theirs, flops))
        if pool is not None:
            height, width = height // 2, width // 2
    print_table(
        f"the default network's convs as training runs them (N=2, {input_size} input, float32)",
        rows,
        ["op", "ours_ms", "ours_GFLOPs", "torch_ms", "torch_GFLOPs", "ratio"],
    )
    return rows


# ---------------------------------------------------------------- roi_pool
@section("roi_pool")
def bench_roi_pool(quick: bool, threads: int) -> dict:
    """RoI max pooling 7x7 at scale 1/16, forward and forward+backward."""
    torch = try_import_torch(threads)
    tv_roi_pool = torchvision_op("roi_pool")
    repeats, rounds = (5, 1) if quick else (20, 3)
    rng = np.random.default_rng(0)
    cases = [(256, (2, 256, 14, 14)), (512, (2, 512, 38, 50))]
    rows = []
    for n_rois, shape in cases[:1] if quick else cases:
        features = rng.standard_normal(shape, dtype=np.float32)
        rois = random_rois(rng, n_rois, shape[0], shape[2] * 16, shape[3] * 16)
        out, argmax = roi_pool(features, rois, 7, 1 / 16)
        g = rng.standard_normal(out.shape, dtype=np.float32)

        def fwd(features=features, rois=rois):
            return roi_pool(features, rois, 7, 1 / 16)

        def fwd_bwd(features=features, rois=rois, g=g):
            _, arg = roi_pool(features, rois, 7, 1 / 16)
            roi_pool_backward(g, arg, rois, features.shape)

        t_fwd = t_fwd_bwd = None
        if tv_roi_pool is not None:
            tf = torch.from_numpy(features)
            tfg = torch.from_numpy(features).requires_grad_()
            tr, tg = torch.from_numpy(rois), torch.from_numpy(g)

            def t_fwd(tf=tf, tr=tr):
                with torch.no_grad():
                    tv_roi_pool(tf, tr, 7, 1 / 16)

            def t_fwd_bwd(tfg=tfg, tr=tr, tg=tg):
                tv_roi_pool(tfg, tr, 7, 1 / 16).backward(tg)

        for what, ours_fn, torch_fn in (("fwd", fwd, t_fwd), ("fwd+bwd", fwd_bwd, t_fwd_bwd)):
            ours, theirs = side_by_side(ours_fn, torch_fn, repeats, rounds)
            label = f"{n_rois} RoIs on {'x'.join(map(str, shape))} {what}"
            rows.append(compare({"op": label}, ours, theirs))
    print_table("roi_pool (7x7, scale 1/16, float32)", rows, ["op", "ours_ms", "torch_ms", "ratio"])
    return {"rows": rows}


# ---------------------------------------------------------------- nms
@section("nms")
def bench_nms(quick: bool, threads: int) -> dict:
    """Greedy NMS over 2000 random boxes at IoU 0.3 and 0.7."""
    torch = try_import_torch(threads)
    tv_nms = torchvision_op("nms")
    rounds = 1 if quick else 3
    rng = np.random.default_rng(0)
    boxes = random_rois(rng, 2000, 1, 500, 600)[:, 1:].astype(np.float32)
    scores = rng.random(2000).astype(np.float32)
    rows = []
    for thr in (0.3, 0.7):
        torch_nms = None
        if tv_nms is not None:
            tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)

            def torch_nms(thr=thr, tb=tb, ts=ts):
                return tv_nms(tb, ts, thr)

        ours, theirs = side_by_side(
            lambda thr=thr: nms(boxes, scores, thr), torch_nms, 5 if quick else 20, rounds
        )
        row = compare({"op": f"nms 2000 boxes @IoU {thr}"}, ours, theirs)
        row["kept"] = len(nms(boxes, scores, thr))
        rows.append(row)
    print_table("nms", rows, ["op", "kept", "ours_ms", "torch_ms", "ratio"])
    return {"rows": rows}
