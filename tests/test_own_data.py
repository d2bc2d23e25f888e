""" "Train on your own images", every step as the README gives it, on a tiny COCO set:
convert -> check -> train -> evaluate -> detect on a folder. Accuracy is not the point
(a handful of images, one epoch); that every step runs and writes what it says is."""

import json

import numpy as np
from PIL import Image, ImageDraw

from minircnn import detect, evaluate, train
from minircnn.data import voc
from minircnn.data.convert.__main__ import main as convert_main


def write_coco_set(src, n=8, seed=0):
    """n images of 96x128 px with one or two filled shapes each, and their COCO JSON
    (written here, independently of the converter)."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(n):
        im = Image.new("RGB", (128, 96), tuple(int(v) for v in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(1 + i % 2):
            w, h = (int(v) for v in rng.integers(24, 48, 2))
            x, y = int(rng.integers(0, 128 - w)), int(rng.integers(0, 96 - h))
            cat = 1 + int(rng.integers(0, 2))
            shape = draw.ellipse if cat == 1 else draw.rectangle
            shape([x, y, x + w - 1, y + h - 1], fill=(230, 200, 40) if cat == 1 else (40, 90, 230))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat,
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
        im.save(src / f"img{i}.jpg", quality=95)
        images.append({"id": i + 1, "file_name": f"img{i}.jpg", "width": 128, "height": 96})
    categories = [{"id": 1, "name": "sun"}, {"id": 2, "name": "brick"}]
    path = src / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def test_every_step_of_training_on_your_own_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ and data/ caches are written here
    src = tmp_path / "coco"
    src.mkdir()
    instances = write_coco_set(src)
    assert convert_main(["--from", "coco", str(instances), "--out", "mine"]) == 0
    voc_root = tmp_path / "mine" / "VOC2007"
    assert (voc_root / "classes.txt").read_text().split() == ["sun", "brick"]  # COCO id order
    assert not [p for p in voc.check_devkit("mine") if p.fatal]
    assert voc.main(["--check", "mine"]) == 0

    args = ["--voc-root", "mine", "--name", "mine", "--epochs", "1"]
    assert train.main([*args, "--pretrain-iterations", "5", "--jobs", "1", "--quiet"]) == 0
    checkpoint = tmp_path / "runs" / "mine" / "checkpoint.npz"
    assert checkpoint.exists() and (tmp_path / "runs" / "mine" / "loss.png").exists()

    results = evaluate.main(
        ["--checkpoint", str(checkpoint), "--root", "mine", "--split", "test", "--quiet"]
    )
    assert set(results["classes"]) == {"brick", "sun"}
    assert (tmp_path / "runs" / "mine" / "eval_test" / "eval.json").exists()

    assert detect.main(["--checkpoint", str(checkpoint), str(src), "--out", "out", "--quiet"]) == 0
    drawn = sorted(p.name for p in (tmp_path / "out").glob("*_detections.jpg"))
    assert drawn == [f"img{i}_detections.jpg" for i in range(8)]
    rows = json.loads((tmp_path / "out" / "detections.json").read_text())
    for row in rows:
        assert row["category"] in ("brick", "sun") and len(row["bbox"]) == 4
        assert row["file_name"].startswith("img") and 0 < row["score"] <= 1
