"""Bench sections for whole stages: selective search, R-CNN against Fast R-CNN, R-CNN,
Fast and Faster R-CNN with their proposals, and the cold start of training (Numba
compilation)."""

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minircnn.bench.harness import (
    fixed_batch_trainer,
    print_table,
    random_rois,
    section,
    training_batch,
)
from minircnn.timing import StageTimer, best_time, instrument_fast_rcnn


@section("proposals")
def bench_proposals(quick: bool, threads: int) -> dict:
    """Selective search "fast" on 20 toy test images and 5 bundled photographs, beside
    OpenCV's ximgproc selective search fast mode (when opencv-contrib is installed)."""
    import skimage.data

    from minircnn.data.voc import VOCDataset
    from minircnn.proposals.recall import recall_table
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
    from minircnn.detect import detect, load_detector, postprocess, score_proposals
    from minircnn.evaluate import evaluate_model
    from minircnn.proposals.cache import load_or_compute
    from minircnn.proposals.selective_search import selective_search
    from minircnn.rcnn import rcnn_score_proposals

    if not Path(checkpoint).exists():
        print(f"\n(no {checkpoint}: run python -m minircnn.train --tiny for this section)")
        return {}
    model = load_detector(checkpoint)  # a Detector
    svd = model.compressed(0.25)
    test = VOCDataset("data/toyvoc", split="test", use_difficult=True)
    rng = np.random.default_rng(0)
    images = [test.load_image(i) for i in range(2 if quick else 5)]
    rows, box_sets = [], {}
    for n in (500, 2000):
        sets = box_sets[n] = []
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
                run(lambda i, p: postprocess(*rcnn_score_proposals(model, i, p))), 1, 1
            ),
        }
        row = {"proposals": n, **{f"{k}_ms": 1e3 * v / len(images) for k, v in per_image.items()}}
        row["speedup"] = per_image["rcnn"] / per_image["fast"]
        row["speedup_svd"] = per_image["rcnn"] / per_image["fast_svd"]
        rows.append(row)
    cols = ["proposals", "rcnn_ms", "fast_ms", "fast_svd_ms", "speedup", "speedup_svd"]
    print_table("R-CNN vs Fast R-CNN, test time per toy image (same weights)", rows, cols)
    bound = rcnn_bound(model, images, box_sets[2000], rows[-1], quick)

    # Fast R-CNN per stage at 2000 proposals, proposals computed here too; the stages are
    # timed by wrapping them from outside (the detection code has no timers)
    timer = StageTimer()
    with timer("proposals (selective search)"):
        for img in images:
            selective_search(img)
    timed = copy.deepcopy(model)
    for img, p in zip(images, box_sets[2000], strict=True):  # untimed: scratch at these shapes
        score_proposals(timed, img, p)
    instrument_fast_rcnn(timed.model, timer)
    for img, p in zip(images, box_sets[2000], strict=True):
        with timer("detection in all"):
            scores, boxes = score_proposals(timed, img, p)
            with timer("nms"):
                postprocess(scores, boxes)
    pre = model.preprocessing
    with timer("of which image scaling"):  # timed alone: Preprocessing is frozen
        for img in images:
            pre.network_input(img, pre.scale(*img.shape[:2]))
    stages = dict(timer.totals)
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
    return {"rows": rows, "bound": bound, "stages": stage_rows, "map": maps}


def rcnn_bound(detector, images, proposal_sets, row: dict, quick: bool) -> dict:
    """How large R-CNN's disadvantage can get with this network, and what the crop size
    does to it. ``images`` and ``proposal_sets`` (``[P, 4]`` each, the same P): the timed
    test images and boxes; ``row``: ``bench_rcnn_vs_fast``'s timings at P proposals.

    Fast R-CNN pays a fixed cost per image (scaling, the conv pass) plus a cost per RoI
    (RoI pooling, FC layers, decoding); R-CNN pays a cost per crop. With ever more
    proposals the speed-up tends to per-crop / per-RoI cost: the bound. The per-RoI cost is
    the slope of Fast R-CNN's time between 1 and P boxes per image. Then the backbone is
    timed on larger crops (the paper's R-CNN warps to 224 px) and put in place of the conv
    share of R-CNN's per-crop cost, the rest kept as measured at our crop size. Warping
    and the FC layers would grow with the crop too, so the larger crops' figures are lower
    bounds; the conv share is what grows fastest."""
    from minircnn.detect import detect

    repeats = 2 if quick else 5
    pairs = list(zip(images, proposal_sets, strict=True))

    def per_image(n_boxes):
        def run():
            return [detect(detector, img, p[:n_boxes]) for img, p in pairs]

        return best_time(run, repeats, 1) / len(pairs)

    n = len(proposal_sets[0])
    per_roi = 1e3 * (per_image(n) - per_image(1)) / (n - 1)
    per_crop = row["rcnn_ms"] / row["proposals"]
    crop = detector.model.config.crop_size
    backbone = detector.model.eval().backbone
    rng = np.random.default_rng(0)
    conv = {}
    for size in (crop, 2 * crop, 4 * crop, 224):
        batch = max(2, (128 * crop * crop) // (size * size))  # about the same pixels per call
        x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
        conv[size] = 1e3 * best_time(lambda x=x: backbone.forward(x), 1 if quick else 3, 1) / batch
    rest = per_crop - conv[crop]  # warping, pool5, FC layers, heads, decoding
    if per_roi <= 0 or rest <= 0:  # timings swamped by noise: no meaningful bound
        print(f"\nWARNING: per-RoI {per_roi:.4f} ms or rest of R-CNN {rest:.3f} ms not positive")
        per_roi = rest = float("nan")
    at = f"speedup_at_{row['proposals']}"
    crop_rows = [
        {
            "crop_px": size,
            "conv_ms_per_crop": ms,
            "conv_share": ms / (ms + rest),
            "bound": (ms + rest) / per_roi,
            at: row["proposals"] * (ms + rest) / row["fast_ms"],
        }
        for size, ms in conv.items()
    ]
    print(
        f"\nR-CNN {per_crop:.3f} ms per crop, Fast R-CNN {per_roi:.4f} ms per extra RoI: "
        f"bound {per_crop / per_roi:.1f}x; at {row['proposals']} proposals Fast R-CNN is "
        f"{row['speedup']:.1f}x, {row['speedup'] / (per_crop / per_roi):.0%} of it"
    )
    print_table(
        "R-CNN with larger crops (measured backbone time per crop; the rest of R-CNN's "
        "per-crop cost and Fast R-CNN's times as above: lower bounds)",
        crop_rows,
        ["crop_px", "conv_ms_per_crop", "conv_share", "bound", at],
    )
    return {
        "rcnn_ms_per_crop": per_crop,
        "fast_ms_per_roi": per_roi,
        "bound": per_crop / per_roi,
        "crops": crop_rows,
    }


# ---------------------------------------------------------------- faster
@section("faster")
def bench_faster(
    quick: bool,
    threads: int,
    ss_checkpoint="runs/tiny/checkpoint.npz",
    rpn_checkpoint="runs/tiny-rpn/checkpoint.npz",
) -> dict:
    """Test time per toy image *including proposals*: R-CNN and Fast R-CNN on selective
    search's boxes (the same weights), and Faster R-CNN with its RPN's."""
    from minircnn.data.voc import VOCDataset
    from minircnn.detect import load_detector
    from minircnn.rpn.compare import time_per_image

    missing = [c for c in (ss_checkpoint, rpn_checkpoint) if not Path(c).exists()]
    if missing:
        print(
            f"\n(no {' or '.join(missing)}: run python -m minircnn.train --tiny and "
            "python -m minircnn.train --tiny --proposals rpn for this section)"
        )
        return {}
    test = VOCDataset("data/toyvoc", split="test", use_difficult=True)
    images = [test.load_image(i) for i in range(2 if quick else 10)]
    timing = time_per_image(load_detector(ss_checkpoint), load_detector(rpn_checkpoint), images)
    fast = timing["total_ms"]["Fast R-CNN + selective search"]
    rows = [
        {"method": name, "ms_per_image": ms, "speedup_vs_fast_ss": fast / ms}
        for name, ms in timing["total_ms"].items()
    ]
    print_table(
        f"Test time per toy image, proposals included ({len(images)} images)",
        rows,
        ["method", "ms_per_image", "speedup_vs_fast_ss"],
    )
    stages = [{"stage": k, "ms_per_image": v} for k, v in timing["stages_ms"].items()]
    print_table("of which", stages, ["stage", "ms_per_image"])
    return {"rows": rows, "stages": stages}


# ---------------------------------------------------------------- cold_start
# What cold_start runs in a fresh interpreter: the imports of `python -m minircnn.train`,
# then first_training_step (its own clock starts before the imports).
_FIRST_STEP_SCRIPT = """\
import time
t_start = time.perf_counter()
import minircnn.train.command  # noqa: F401  (what `python -m minircnn.train` imports)
from minircnn.bench.pipeline import first_training_step
first_training_step(t_start)
"""


def first_training_step(t_start: float) -> None:
    """cold_start's child process: build the default FastRCNN and a synthetic training
    batch (no data set, selective search or pre-training), run two Trainer steps, and
    print as one JSON line how long each phase took (s): the imports since ``t_start``
    (``import_s``), starting the compiling helper when the cache is cold
    (``layers.warmup``) and building the model and batch (``build_s``), the first step, which
    compiles or loads every kernel (``first_step_s``), and the second (``second_step_s``)."""
    from minircnn.layers.warmup import compile_ahead
    from minircnn.model import FastRCNN, ModelConfig

    marks = [t_start, time.perf_counter()]
    compile_ahead()  # as `fit` does before pre-training
    rng = np.random.default_rng(0)
    model = FastRCNN(ModelConfig(num_classes=5), rng)
    trainer = fixed_batch_trainer(model, training_batch(rng, model.config.num_classes))
    marks.append(time.perf_counter())
    for _ in range(2):
        trainer.step([0, 1])
        marks.append(time.perf_counter())
    names = ("import_s", "build_s", "first_step_s", "second_step_s")
    print(json.dumps(dict(zip(names, np.diff(marks).tolist(), strict=True))))


@section("cold_start")
def bench_cold_start(quick: bool, threads: int) -> dict:
    """Seconds from interpreter start to the end of the first training step in a fresh
    process (``python -c``; a synthetic batch stands in for the data, proposals and
    pre-training of `python -m minircnn.train --tiny`): with an empty Numba cache, where
    every kernel is compiled, then with the cache that run filled. ``quick``: one run with
    the ordinary cache as found (usually warm), which is cheap."""
    with tempfile.TemporaryDirectory(prefix="minircnn-numba-cache-") as cache:
        runs = [("ordinary cache, as found", None)]
        if not quick:
            runs = [("cold: empty Numba cache", cache), ("warm: the cache filled above", cache)]
        rows = []
        for label, cache_dir in runs:
            env = dict(os.environ)
            if cache_dir is not None:
                env["NUMBA_CACHE_DIR"] = cache_dir
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", _FIRST_STEP_SCRIPT], env=env, capture_output=True, text=True
            )
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                raise RuntimeError(f"cold_start child failed:\n{done.stderr[-2000:]}")
            phases = json.loads(done.stdout.strip().splitlines()[-1])
            # the process's wall time less its second step: start (interpreter start-up
            # included) to the end of the first step, plus the exit
            first = wall - phases["second_step_s"]
            rows.append({"run": label, "to_first_step_s": first, **phases})
    print_table(
        "cold start: process start to the end of the first training step (synthetic batch: "
        "no data generation, selective search or pre-training)",
        rows,
        ["run", "to_first_step_s", "import_s", "build_s", "first_step_s", "second_step_s"],
    )
    return {"rows": rows}
