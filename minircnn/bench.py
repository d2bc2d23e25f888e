"""`python -m minircnn.bench`: speed of minircnn's kernels, beside PyTorch when installed.

Each side is timed in a block of consecutive calls (after warm-up) and its best call is
kept; then the other side runs its block. Alternating call by call would wake and park
thread pools (OpenBLAS, Numba, torch) on every switch and skew the ratio. Torch, when
installed (``pip install -e .[bench]``), gets the same thread count as we use.

Figures are printed as tables and written to ``runs/bench/latest.json``.
"""

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

from minircnn.layers import Conv2d, Linear, MaxPool2d
from minircnn.ops.nms import nms
from minircnn.ops.roi_pool import roi_pool, roi_pool_backward

SECTIONS: dict[str, Callable] = {}


def section(name: str):
    """Register a bench section under ``name``."""

    def register(fn):
        SECTIONS[name] = fn
        return fn

    return register


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Best wall time (s) of ``repeats`` consecutive calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def try_import_torch(threads: int):
    """torch with ``threads`` intra-op threads, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def torchvision_op(name: str):
    """``torchvision.ops.<name>``, or None when torchvision is not installed."""
    try:
        import torchvision.ops
    except ImportError:
        return None
    return getattr(torchvision.ops, name)


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """NumPy float32 matrix product GFLOP/s: the practical ceiling for this machine."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / best_time(lambda: a @ b, repeats) / 1e9


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """Print rows (dicts) as an aligned text table; missing values show as '-'."""

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n== {title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))


def compare(row: dict, ours: float, theirs: float | None, flops: float | None = None) -> dict:
    """Fill a table row with times (ms), GFLOP/s and the ours/torch time ratio."""
    row["ours_ms"] = ours * 1e3
    if flops:
        row["ours_GFLOPs"] = flops / ours / 1e9
    if theirs is not None:
        row["torch_ms"] = theirs * 1e3
        row["ratio"] = ours / theirs
        if flops:
            row["torch_GFLOPs"] = flops / theirs / 1e9
    return row


# ---------------------------------------------------------------- layers
@section("layers")
def bench_layers(quick: bool, threads: int) -> dict:
    """Conv 3x3 (fwd+bwd), 2x2 max-pool (fwd+bwd) and Linear (fwd+bwd), float32."""
    torch = try_import_torch(threads)
    repeats = 3 if quick else 10
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
        theirs = None
        if torch is not None:
            tx = torch.from_numpy(x).requires_grad_()
            tw = torch.from_numpy(conv.params["weight"]).requires_grad_()
            tb = torch.from_numpy(conv.params["bias"]).requires_grad_()
            tdy = torch.from_numpy(dy)

            def torch_conv(tx=tx, tw=tw, tb=tb, tdy=tdy):
                torch.nn.functional.conv2d(tx, tw, tb, padding=1).backward(tdy)

            theirs = best_time(torch_conv, repeats)
        ours = best_time(ours_conv, repeats)
        rows.append(compare({"op": f"conv3x3 {c_in}->{c_out} @{size}"}, ours, theirs, flops))

    for _, c_out, size in shapes:
        x = rng.standard_normal((2, c_out, size, size), dtype=np.float32)
        pool = MaxPool2d(2)
        dy = rng.standard_normal((2, c_out, size // 2, size // 2), dtype=np.float32)

        def ours_pool(pool=pool, x=x, dy=dy):
            pool.forward(x)
            pool.backward(dy)

        theirs = None
        if torch is not None:
            tx = torch.from_numpy(x).requires_grad_()
            tdy = torch.from_numpy(dy)

            def torch_pool(tx=tx, tdy=tdy):
                torch.nn.functional.max_pool2d(tx, 2).backward(tdy)

            theirs = best_time(torch_pool, repeats)
        ours = best_time(ours_pool, repeats)
        rows.append(compare({"op": f"maxpool2x2 {c_out} @{size}"}, ours, theirs))

    n_in, n_out, batch = (12544, 1024, 128) if not quick else (3136, 512, 64)
    fc = Linear(n_in, n_out, rng=rng)
    x = rng.standard_normal((batch, n_in), dtype=np.float32)
    dy = rng.standard_normal((batch, n_out), dtype=np.float32)

    def ours_fc():
        fc.forward(x)
        fc.backward(dy)

    theirs = None
    if torch is not None:
        tx = torch.from_numpy(x).requires_grad_()
        tw = torch.from_numpy(fc.params["weight"]).requires_grad_()
        tb = torch.from_numpy(fc.params["bias"]).requires_grad_()
        tdy = torch.from_numpy(dy)

        def torch_fc():
            torch.nn.functional.linear(tx, tw, tb).backward(tdy)

        theirs = best_time(torch_fc, repeats)
    ours = best_time(ours_fc, repeats)
    flops = 3 * 2 * batch * n_in * n_out
    rows.append(compare({"op": f"linear {n_in}->{n_out} B{batch}"}, ours, theirs, flops))

    columns = ["op", "ours_ms", "ours_GFLOPs", "torch_ms", "torch_GFLOPs", "ratio"]
    print_table("layers (forward + backward, float32, N=2)", rows, columns)
    return {"rows": rows}


def random_rois(rng: np.random.Generator, n: int, n_img: int, height: int, width: int):
    """``n`` RoIs ``[n, 5]`` float32 spread over ``n_img`` images of ``height x width`` px."""
    x1 = rng.uniform(0, width * 0.8, n)
    y1 = rng.uniform(0, height * 0.8, n)
    x2 = np.minimum(x1 + rng.uniform(16, width * 0.6, n), width - 1)
    y2 = np.minimum(y1 + rng.uniform(16, height * 0.6, n), height - 1)
    return np.stack([rng.integers(0, n_img, n), x1, y1, x2, y2], axis=1).astype(np.float32)


# ---------------------------------------------------------------- roi_pool
@section("roi_pool")
def bench_roi_pool(quick: bool, threads: int) -> dict:
    """RoI max pooling 7x7 at scale 1/16, forward and forward+backward."""
    torch = try_import_torch(threads)
    tv_roi_pool = torchvision_op("roi_pool")
    repeats = 5 if quick else 20
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

        ours = {"fwd": best_time(fwd, repeats), "fwd+bwd": best_time(fwd_bwd, repeats)}
        theirs = {"fwd": None, "fwd+bwd": None}
        if tv_roi_pool is not None:
            tf = torch.from_numpy(features)
            tfg = torch.from_numpy(features).requires_grad_()
            tr, tg = torch.from_numpy(rois), torch.from_numpy(g)

            def t_fwd(tf=tf, tr=tr):
                with torch.no_grad():
                    tv_roi_pool(tf, tr, 7, 1 / 16)

            def t_fwd_bwd(tfg=tfg, tr=tr, tg=tg):
                tv_roi_pool(tfg, tr, 7, 1 / 16).backward(tg)

            theirs = {"fwd": best_time(t_fwd, repeats), "fwd+bwd": best_time(t_fwd_bwd, repeats)}
        for what in ("fwd", "fwd+bwd"):
            label = f"{n_rois} RoIs on {'x'.join(map(str, shape))} {what}"
            rows.append(compare({"op": label}, ours[what], theirs[what]))
    print_table("roi_pool (7x7, scale 1/16, float32)", rows, ["op", "ours_ms", "torch_ms", "ratio"])
    return {"rows": rows}


# ---------------------------------------------------------------- nms
@section("nms")
def bench_nms(quick: bool, threads: int) -> dict:
    """Greedy NMS over 2000 random boxes at IoU 0.3 and 0.7."""
    torch = try_import_torch(threads)
    tv_nms = torchvision_op("nms")
    rng = np.random.default_rng(0)
    boxes = random_rois(rng, 2000, 1, 500, 600)[:, 1:].astype(np.float32)
    scores = rng.random(2000).astype(np.float32)
    rows = []
    for thr in (0.3, 0.7):
        ours = best_time(lambda thr=thr: nms(boxes, scores, thr), 5 if quick else 20)
        theirs = None
        if tv_nms is not None:
            tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
            theirs = best_time(
                lambda thr=thr, tb=tb, ts=ts: tv_nms(tb, ts, thr), 5 if quick else 20
            )
        row = compare({"op": f"nms 2000 boxes @IoU {thr}"}, ours, theirs)
        row["kept"] = len(nms(boxes, scores, thr))
        rows.append(row)
    print_table("nms", rows, ["op", "kept", "ours_ms", "torch_ms", "ratio"])
    return {"rows": rows}


# ---------------------------------------------------------------- proposals
@section("proposals")
def bench_proposals(quick: bool, threads: int) -> dict:
    """Selective search "fast" on 20 toy test images and 5 bundled photographs, beside
    OpenCV's ximgproc selective search fast mode (when opencv-contrib is installed)."""
    import skimage.data

    from minircnn.data.voc import VOCDataset
    from minircnn.proposals.__main__ import recall_table
    from minircnn.proposals.selective_search import selective_search

    try:
        import cv2

        cv2.setNumThreads(threads)
        make_cv_ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation
    except (ImportError, AttributeError):
        make_cv_ss = None
    n_toy = 5 if quick else 20
    try:
        toy = VOCDataset("data/toyvoc", split="test", use_difficult=True)
    except (OSError, ValueError):
        print("\n(no data/toyvoc: run python -m minircnn.data.toyvoc --tiny for the toy rows)")
        toy = []
    sets = {"toy test": [toy.load_image(i) for i in range(min(n_toy, len(toy)))]}
    photos = ("astronaut", "chelsea", "coffee", "rocket", "camera")
    sets["skimage photos"] = [getattr(skimage.data, name)() for name in photos[: 2 if quick else 5]]
    selective_search(sets["skimage photos"][0][:64, :64])  # compile outside the timing

    def ours(img):
        return selective_search(img)

    def opencv(img):
        ss = make_cv_ss()
        bgr = np.ascontiguousarray((img if img.ndim == 3 else np.dstack([img] * 3))[..., ::-1])
        ss.setBaseImage(bgr)
        ss.switchToSelectiveSearchFast()
        xywh = ss.process().astype(np.float32)
        return np.column_stack([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1])

    rows = []
    for name, images in sets.items():
        if not images:
            continue
        row = {"images": f"{name} ({len(images)})"}
        for side, fn in (("ours", ours), ("opencv", opencv if make_cv_ss else None)):
            if fn is None:
                continue
            t0 = time.perf_counter()
            boxes = [fn(img) for img in images]
            row[f"{side}_s/img"] = (time.perf_counter() - t0) / len(images)
            row[f"{side}_boxes"] = float(np.mean([len(b) for b in boxes]))
            if name == "toy test":
                items = [toy[i] for i in range(len(images))]
                row[f"{side}_recall@0.5"] = recall_table(items, boxes, (2000,))[0.5][2000]
        if "opencv_s/img" in row:
            row["ratio"] = row["ours_s/img"] / row["opencv_s/img"]
        rows.append(row)
    columns = [
        "images",
        "ours_s/img",
        "ours_boxes",
        "ours_recall@0.5",
        "opencv_s/img",
        "opencv_boxes",
        "opencv_recall@0.5",
        "ratio",
    ]
    print_table("proposals (selective search fast)", rows, columns)
    return {"rows": rows}


# ---------------------------------------------------------------- rcnn_vs_fast
@section("rcnn_vs_fast")
def bench_rcnn_vs_fast(quick: bool, threads: int, checkpoint="runs/tiny/checkpoint.npz") -> dict:
    """Test time per image: R-CNN's per-crop procedure vs Fast R-CNN (+ truncated SVD),
    same weights, at 500 and 2000 proposals; Fast R-CNN's time split by stage; and the
    mAP that SVD at 1/4 rank costs."""
    from minircnn.data.voc import VOCDataset
    from minircnn.detect import detect, load_detector, postprocess
    from minircnn.evaluate import evaluate_model
    from minircnn.proposals.cache import load_or_compute
    from minircnn.proposals.selective_search import selective_search
    from minircnn.rcnn import rcnn_score_proposals
    from minircnn.svd import compress_model

    if not Path(checkpoint).exists():
        print(f"\n(no {checkpoint}: run python -m minircnn.train --tiny for this section)")
        return {}
    model = load_detector(checkpoint)
    svd = compress_model(model, 0.25)
    test = VOCDataset("data/toyvoc", split="test", use_difficult=True)
    rng = np.random.default_rng(0)
    images = [test.load_image(i) for i in range(2 if quick else 5)]
    rows = []
    for n in (500, 2000):
        sets = []
        for img in images:  # selective search boxes, topped up with random boxes to n
            props = selective_search(img)[:n]
            extra = random_rois(rng, n - len(props), 1, *img.shape[:2])[:, 1:]
            sets.append(np.vstack([props, extra]).astype(np.float32))

        def run(fn, sets=sets):
            return lambda: [fn(img, p) for img, p in zip(images, sets, strict=True)]

        per_image = {
            "fast": best_time(run(lambda i, p: detect(model, i, p)), 3, 1),
            "fast_svd": best_time(run(lambda i, p: detect(svd, i, p)), 3, 1),
            "rcnn": best_time(
                run(lambda i, p: postprocess(*rcnn_score_proposals(model, i, p))), 1, 0
            ),
        }
        row = {"proposals": n, **{f"{k}_ms": 1e3 * v / len(images) for k, v in per_image.items()}}
        row["speedup"] = per_image["rcnn"] / per_image["fast"]
        row["speedup_svd"] = per_image["rcnn"] / per_image["fast_svd"]
        rows.append(row)
    cols = ["proposals", "rcnn_ms", "fast_ms", "fast_svd_ms", "speedup", "speedup_svd"]
    print_table("R-CNN vs Fast R-CNN, test time per toy image (same weights)", rows, cols)

    # Fast R-CNN per stage at 2000 proposals, proposals computed here too
    model.timer.totals.clear()
    t0 = time.perf_counter()
    props = [selective_search(img) for img in images]
    stages = {"proposals (selective search)": time.perf_counter() - t0}
    for img, p in zip(images, sets, strict=True):
        detect(model, img, p)
    stages.update(model.timer.totals)
    stage_rows = [{"stage": k, "ms_per_image": 1e3 * v / len(images)} for k, v in stages.items()]
    print_table("Fast R-CNN stages at 2000 proposals", stage_rows, ["stage", "ms_per_image"])

    n_eval = 30 if quick else len(test)
    proposals = load_or_compute(test, progress=False)[:n_eval]  # the whole split's cache
    subset = VOCDataset("data/toyvoc", split="test", use_difficult=True, max_images=n_eval)
    maps = {
        name: evaluate_model(m, subset, proposals, progress=False)[0]["map07"]
        for name, m in (("full", model), ("svd_1/4", svd))
    }
    print(
        f"mAP@0.5 (VOC07) on {n_eval} test images: full {maps['full']:.3f}, "
        f"SVD 1/4 rank {maps['svd_1/4']:.3f} (difference {maps['full'] - maps['svd_1/4']:+.3f})"
    )
    return {"rows": rows, "stages": stage_rows, "map": maps}


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m minircnn.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--out", default="runs/bench/latest.json", help="JSON output path")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    threads = numba.get_num_threads()
    ceiling = sgemm_gflops(1024 if args.quick else 2048)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"numba threads {threads}; numpy SGEMM ceiling {ceiling:.0f} GFLOP/s"
    )
    results = {
        "quick": args.quick,
        "threads": threads,
        "numpy_sgemm_gflops": ceiling,
        "sections": {name: SECTIONS[name](args.quick, threads) for name in names},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
