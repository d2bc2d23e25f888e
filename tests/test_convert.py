"""Converters to the VOCdevkit layout: each format written here by hand (not with the
converter's code), converted, and read back with VOCDataset; boxes are worked out below
with the +1 convention and the documented rounding (edges to the nearest pixel boundary,
halves up: x1 = round(left), x2 = round(right) - 1)."""

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minircnn.data.convert import convert_source
from minircnn.data.convert.__main__ import main
from minircnn.data.voc import VOCDataset, check_devkit

ALL_TRAIN = (1.0, 0.0, 0.0)  # every image in train, so one VOCDataset sees them all


def write_image(path, width, height, mode="RGB", fmt=None):
    """A small noisy image (noise so JPEG round trips are not trivially equal)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(width * 1000 + height)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)
    return path


def read_back(out, classes=None):
    """{image id: (boxes, label names, difficult)} of the converted train split."""
    ds = VOCDataset(out, split="train", use_difficult=True)
    names = ds.classes if classes is None else classes
    return {
        item.image_id: (
            item.boxes.tolist(),
            [names[k - 1] for k in item.labels],
            item.difficult.tolist(),
        )
        for item in ds
    }


# ---------------------------------------------------------------- COCO
def test_coco(tmp_path):
    src = tmp_path / "coco"
    write_image(src / "a.jpg", 40, 30)
    write_image(src / "sub" / "b.png", 32, 24, mode="RGBA")
    write_image(src / "c.jpg", 32, 24, mode="L")
    coco = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "sub/b.png", "width": 32, "height": 24},
            {"id": 3, "file_name": "c.jpg", "width": 32, "height": 24},
            {"id": 4, "file_name": "missing.jpg", "width": 32, "height": 24},
        ],
        "categories": [{"id": 3, "name": "dog"}, {"id": 1, "name": "cat"}],
        "annotations": [
            # integer box: x2 = x + w - 1 = 11, y2 = 3 + 5 - 1 = 7
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 5], "iscrowd": 0},
            # x1 = round(5.4) = 5, y1 = round(6.5) = 7 (half up),
            # x2 = round(25.6) - 1 = 25, y2 = round(16.5) - 1 = 16; crowd -> difficult
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [5.4, 6.5, 20.2, 10.0]},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [0, 0, 32, 24]},
            # skipped: x2 = 39 in a 32 px wide image
            {"id": 13, "image_id": 2, "category_id": 1, "bbox": [30, 5, 10, 5]},
            {"id": 14, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]},  # no image
            {"id": 15, "image_id": 3, "category_id": 7, "bbox": [1, 1, 5, 5]},  # no category
            # x 1 .. 1.4: x2 = round(1.4) - 1 = 0 < x1 = 1, no whole pixel: skipped
            {"id": 16, "image_id": 3, "category_id": 1, "bbox": [1, 1, 0.4, 3]},
            # x2 = round(32.6) - 1 = 32: 1 px past the 32 px image, clipped to 31
            {"id": 17, "image_id": 3, "category_id": 1, "bbox": [20, 10, 12.6, 5]},
            {"id": 18, "image_id": 4, "category_id": 1, "bbox": [1, 1, 5, 5]},  # no file
        ],
    }
    coco["annotations"][1]["iscrowd"] = 1
    (src / "instances.json").write_text(json.dumps(coco))
    summary = convert_source("coco", src / "instances.json", tmp_path / "out", ALL_TRAIN)
    assert read_back(tmp_path / "out") == {
        "a": ([[2, 3, 11, 7], [5, 7, 25, 16]], ["cat", "dog"], [False, True]),
        "sub_b": ([[0, 0, 31, 23]], ["dog"], [False]),
        "c": ([[20, 10, 31, 14]], ["cat"], [False]),
    }
    assert (tmp_path / "out/VOC2007/classes.txt").read_text() == "cat\ndog\n"  # category id order
    report = summary.report
    assert report.skipped == {
        "box more than 1 px outside the image": 1,
        "image_id not in 'images'": 1,
        "category_id not in 'categories'": 1,
        "box thinner than a pixel": 1,
        "image file not found (its objects)": 1,
    }
    assert report.changed == {"box clipped to the image (at most 1 px outside)": 1}
    assert any("instances.json: annotation id 13 (cat)" in line for line in report.lines)
    assert any("missing.jpg: image file not found" in line for line in report.lines)
    # images: the RGB JPEG copied byte for byte, the others re-encoded as RGB JPEG
    jpeg = tmp_path / "out/VOC2007/JPEGImages"
    assert (jpeg / "a.jpg").read_bytes() == (src / "a.jpg").read_bytes()
    for name in ("sub_b", "c"):
        with Image.open(jpeg / f"{name}.jpg") as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (32, 24))
    assert summary.check == []  # train and trainval written, the rest reported as empty


# ---------------------------------------------------------------- YOLO
def test_yolo(tmp_path):
    src = tmp_path / "yolo"
    (src).mkdir()
    (src / "classes.txt").write_text("cat\ndog\n")
    write_image(src / "one.jpg", 40, 30)
    (src / "one.txt").write_text(
        # x: (0.5 -+ 0.25) * 40 = 10, 30 -> 10..29; y: 7.5, 22.5 -> round half up 8, 23 -> 8..22
        "0 0.5 0.5 0.5 0.5\n"
        # x: 3.0, 5.0 -> 3..4; y: 2.25, 3.75 -> 2, 4 -> 2..3
        "1 0.1 0.1 0.05 0.05\n"
        "5 0.5 0.5 0.1 0.1\n"  # class 5: out of range
        "0 0.5 0.5 0.1\n"  # 4 fields
        "0 0.1 0.1 0.2 0.1 0.2 0.2\n"  # a polygon
    )
    write_image(src / "images" / "two.png", 20, 20, mode="P")  # Ultralytics layout
    (src / "labels").mkdir()
    (src / "labels" / "two.txt").write_text("1 0.5 0.5 1.0 1.0\n")  # the whole image
    write_image(src / "three.jpg", 16, 16)  # no label file: an image without objects
    (src / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.2 0.2 0.1 0.1\n")
    summary = convert_source("yolo", src, tmp_path / "out", ALL_TRAIN)
    assert read_back(tmp_path / "out") == {
        "one": ([[10, 8, 29, 22], [3, 2, 4, 3]], ["cat", "dog"], [False, False]),
        "images_two": ([[0, 0, 19, 19]], ["dog"], [False]),
        "three": ([], [], []),
    }
    assert summary.report.skipped == {
        "class index out of range": 1,
        "not 'class cx cy w h'": 2,
        "no image": 2,
    }
    assert summary.empty_images == 1 and summary.check == []


def test_yolo_round_trip_of_integer_boxes(tmp_path):
    """Any integer box written the YOLO way (centre and size of x1..x2+1) comes back."""
    src = tmp_path / "yolo"
    src.mkdir()
    (src / "classes.txt").write_text("thing\n")
    rng = np.random.default_rng(0)
    width, height = 37, 23
    write_image(src / "im.jpg", width, height)
    boxes = []
    for _ in range(30):
        x1, x2 = sorted(int(v) for v in rng.choice(width, 2, replace=False))
        y1, y2 = sorted(int(v) for v in rng.choice(height, 2, replace=False))
        boxes.append([x1, y1, x2, y2])
    lines = [
        f"0 {(x1 + x2 + 1) / 2 / width!r} {(y1 + y2 + 1) / 2 / height!r} "
        f"{(x2 - x1 + 1) / width!r} {(y2 - y1 + 1) / height!r}\n"
        for x1, y1, x2, y2 in boxes
    ]
    (src / "im.txt").write_text("".join(lines))
    convert_source("yolo", src, tmp_path / "out", ALL_TRAIN)
    assert read_back(tmp_path / "out")["im"][0] == boxes


# ---------------------------------------------------------------- labelme
def labelme_doc(image_path, width, height, shapes, image_data=None):
    return {
        "version": "5.4.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": image_data,
        "imageHeight": height,
        "imageWidth": width,
    }


def rect(label, points, **extra):
    return {"label": label, "points": points, "shape_type": "rectangle", "flags": {}, **extra}


def test_labelme(tmp_path):
    src = tmp_path / "labelme"
    write_image(src / "a.jpg", 40, 30)
    shapes = [
        # corners in any order: x 5.5..30.2 -> round half up 6, 30 -> 6..29; y 2.4..20.7 -> 2..20
        rect("cat", [[30.2, 20.7], [5.5, 2.4]]),
        {"label": "dog", "points": [[1, 1], [5, 1], [3, 4]], "shape_type": "polygon"},
        {"label": "dog", "points": [[1, 1]], "shape_type": "point"},
        rect("dog", [[0, 0], [10, 10]], flags={"difficult": True}),
    ]
    (src / "a.json").write_text(json.dumps(labelme_doc("a.jpg", 40, 30, shapes)))
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, format="PNG")
    embedded = base64.b64encode(buffer.getvalue()).decode()
    doc = labelme_doc("gone.png", 16, 16, [rect("dog", [[2, 2], [8, 8]])], embedded)
    (src / "b.json").write_text(json.dumps(doc))
    write_image(src / "c.jpg", 40, 30)
    doc = labelme_doc("c.jpg", 50, 50, [rect("cat", [[1, 1], [9, 9]])])  # wrong size
    (src / "c.json").write_text(json.dumps(doc))
    write_image(src / "d.jpg", 12, 12)  # no JSON refers to it
    (src / "broken.json").write_text("{not json")
    summary = convert_source("labelme", src, tmp_path / "out", ALL_TRAIN)
    assert read_back(tmp_path / "out") == {
        "a": ([[6, 2, 29, 20], [0, 0, 9, 9]], ["cat", "dog"], [False, True]),
        "b": ([[2, 2, 7, 7]], ["dog"], [False]),
    }
    report = summary.report
    assert report.skipped == {
        "polygon shape": 1,
        "point shape": 1,
        "image size differs from the annotation's (its objects)": 1,
    }
    assert report.skipped_images == {
        "image size differs from the annotation's": 1,
        "no annotation": 1,
        "unreadable JSON": 1,
    }
    assert any("a.json: shape 1 (dog): polygon shape, not a rectangle" in s for s in report.lines)
    assert any("broken.json: not valid JSON" in s for s in report.lines)


# ---------------------------------------------------------------- voc-folder
def voc_xml(filename, width, height, objects):
    """labelImg-style XML; objects: (name, xmin, ymin, xmax, ymax, difficult), 1-based."""
    parts = [
        f"<annotation><folder>x</folder><filename>{filename}</filename>",
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for name, xmin, ymin, xmax, ymax, difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
            f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
            "</bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def test_voc_folder(tmp_path):
    src = tmp_path / "labelimg"
    write_image(src / "x.jpg", 40, 30)
    objects = [
        ("cat", 1, 1, 10, 12, 0),  # 1-based -> 0..9, 0..11
        ("dog", 5.6, 3, 20.4, 25, 1),  # x: 4.6..20.4 -> round 5, 20 -> 5..19; y 2..24
        ("cat", 30, 5, 10, 9, 0),  # inverted: skipped
        ("dog", 0, 1, 8, 8, 0),  # xmin 0 (labelImg's off-by-one): 1 px out, clipped
    ]
    (src / "x.xml").write_text(voc_xml("x.jpg", 40, 30, objects))
    write_image(src / "y.jpg", 24, 20, mode="CMYK", fmt="JPEG")
    (src / "y.xml").write_text(voc_xml("y.jpg", 24, 20, [("bird", 2, 2, 24, 20, 0)]))
    (src / "z.xml").write_text(voc_xml("z.jpg", 24, 20, [("cat", 2, 2, 5, 5, 0)]))  # no image
    (src / "bad.xml").write_text("<annotation><object>")
    write_image(src / "bad.jpg", 24, 20)  # reported once, through its malformed XML
    summary = convert_source("voc-folder", src, tmp_path / "out", ALL_TRAIN)
    assert read_back(tmp_path / "out") == {
        "x": ([[0, 0, 9, 11], [5, 2, 19, 24], [0, 0, 7, 7]], ["cat", "dog", "dog"], [0, 1, 0]),
        "y": ([[1, 1, 23, 19]], ["bird"], [False]),
    }
    with Image.open(tmp_path / "out/VOC2007/JPEGImages/y.jpg") as im:
        assert im.mode == "RGB"  # CMYK converted
    assert (tmp_path / "out/VOC2007/classes.txt").read_text() == "bird\ncat\ndog\n"
    report = summary.report
    assert report.skipped == {
        "inverted box (x2 < x1 or y2 < y1)": 1,
        "image file not found (its objects)": 1,
    }
    assert report.skipped_images == {"image file not found": 1, "malformed XML": 1}
    assert report.changed == {"box clipped to the image (at most 1 px outside)": 1}


def test_classes_option_keeps_a_subset_in_order(tmp_path):
    src = tmp_path / "labelimg"
    write_image(src / "x.jpg", 40, 30)
    objects = [("cat", 1, 1, 10, 12, 0), ("dog", 2, 2, 9, 9, 0), ("bird", 3, 3, 9, 9, 0)]
    (src / "x.xml").write_text(voc_xml("x.jpg", 40, 30, objects))
    summary = convert_source("voc-folder", src, tmp_path / "out", ALL_TRAIN, classes=["dog", "cat"])
    assert read_back(tmp_path / "out")["x"][1] == ["cat", "dog"]
    assert VOCDataset(tmp_path / "out", split="train").classes == ("dog", "cat")
    assert summary.report.skipped == {"class not converted": 1}


# ---------------------------------------------------------------- splits and the CLI
def yolo_set(src, n):
    src.mkdir(parents=True)
    (src / "classes.txt").write_text("a\nb\n")
    for i in range(n):
        write_image(src / f"im{i:02d}.jpg", 8, 8)
        (src / f"im{i:02d}.txt").write_text(f"{i % 2} 0.5 0.5 0.5 0.5\n")


def image_sets(out):
    main_dir = out / "VOC2007/ImageSets/Main"
    return {s: (main_dir / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}


def test_split_ratios_and_seed(tmp_path, capsys):
    yolo_set(tmp_path / "src", 20)
    args = ["--from", "yolo", str(tmp_path / "src"), "--split", "0.5,0.25,0.25"]
    assert main([*args, "--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--seed", "3"]) == 0
    assert main([*args, "--out", str(tmp_path / "c"), "--seed", "4"]) == 0
    a = image_sets(tmp_path / "a")
    assert [len(a[s]) for s in ("train", "val", "test")] == [10, 5, 5]
    assert sorted(a["train"] + a["val"] + a["test"]) == [f"im{i:02d}" for i in range(20)]
    trainval = (tmp_path / "a/VOC2007/ImageSets/Main/trainval.txt").read_text().split()
    assert trainval == sorted(a["train"] + a["val"])
    assert image_sets(tmp_path / "b") == a  # same seed, same split
    assert image_sets(tmp_path / "c") != a
    # per-class lists: every image of the split, 1 where the class is present
    lines = (tmp_path / "a/VOC2007/ImageSets/Main/b_test.txt").read_text().splitlines()
    flags = {line.split()[0]: int(line.split()[1]) for line in lines}
    assert flags == {i: (1 if int(i[2:]) % 2 else -1) for i in a["test"]}
    assert check_devkit(tmp_path / "a") == []
    printed = capsys.readouterr().out
    assert "split: train 10, val 5, test 5 (trainval 15)" in printed
    assert "check: 0 error(s), 0 warning(s)" in printed


def test_summary_lists_every_skip(tmp_path, capsys):
    yolo_set(tmp_path / "src", 2)
    (tmp_path / "src/im00.txt").write_text("0 0.5 0.5 0.5 0.5\n7 0.5 0.5 0.5 0.5\n")
    out = tmp_path / "out"
    assert main(["--from", "yolo", str(tmp_path / "src"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"skipped  {tmp_path / 'src/im00.txt'}: line 2: class 7 is not in 0..1" in printed
    assert "skipped objects: 1" in printed and "1  class index out of range" in printed
    assert "2 of 2 images, 2 of 3 objects" in printed


@pytest.mark.parametrize(
    "args,message",
    [
        (["--from", "coco", "{tmp}/nope.json"], "error: {tmp}/nope.json: not found"),
        (["--from", "coco", "{tmp}/bad.json"], "error: {tmp}/bad.json: not valid JSON"),
        (["--from", "coco", "{tmp}/list.json"], "error: {tmp}/list.json: not a COCO"),
        (["--from", "yolo", "{tmp}/empty"], "error: {tmp}/empty: no classes.txt"),
        (["--from", "coco", "{tmp}/list.json", "--split", "0.5,0.5"], "error: --split 0.5,0.5"),
        (["--from", "pascal", "{tmp}/empty"], "error: argument --from: invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, args, message):
    (tmp_path / "bad.json").write_text('{"images": [')
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "empty").mkdir()
    argv = [a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "out")]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(message.format(tmp=tmp_path)) and err.count("\n") == 1, err


def test_existing_output_needs_overwrite(tmp_path, capsys):
    yolo_set(tmp_path / "src", 2)
    argv = ["--from", "yolo", str(tmp_path / "src"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "already exists (--overwrite replaces it)" in capsys.readouterr().err
    (tmp_path / "src/im01.jpg").unlink()
    (tmp_path / "src/im01.txt").unlink()
    assert main([*argv, "--overwrite"]) == 0
    assert not (tmp_path / "out/VOC2007/JPEGImages/im01.jpg").exists()  # old files gone


def test_module_entry_point_errors_without_traceback(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "minircnn.data.convert", "--from", "labelme", str(tmp_path / "x")]
        + ["--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr == f"error: {tmp_path / 'x'}: not found\n"


def test_coco_image_with_a_malformed_size_is_skipped_not_a_crash(tmp_path):
    src = tmp_path / "coco"
    write_image(src / "a.jpg", 40, 30)
    write_image(src / "b.jpg", 40, 30)
    coco = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.jpg", "width": "640px", "height": 30},
        ],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0}
        ],
    }
    (src / "ann.json").write_text(json.dumps(coco))
    summary = convert_source("coco", src / "ann.json", tmp_path / "out", ratios=ALL_TRAIN)
    assert summary.split_ids["train"] == ["a"]
    assert summary.report.skipped_images["malformed entry"] == 1
    assert any("640px" in line for line in summary.report.lines)


def one_cat_image_coco(src, annotations) -> dict:
    """Write ``src/a.jpg`` (40 x 30) and ``src/ann.json``: a COCO file with that image,
    one category "cat" and ``annotations``; returns the COCO dict."""
    write_image(src / "a.jpg", 40, 30)
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": annotations,
    }
    (src / "ann.json").write_text(json.dumps(coco))
    return coco


def test_a_box_thinner_than_a_pixel_is_not_called_inverted(tmp_path):
    src = tmp_path / "coco"
    one_cat_image_coco(
        src,
        [
            # x 10.2 .. 10.4: rounds to x1 = 10, x2 = round(10.4) - 1 = 9, no whole pixel
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10.2, 5, 0.2, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0},
        ],
    )
    summary = convert_source("coco", src / "ann.json", tmp_path / "out", ratios=ALL_TRAIN)
    assert summary.report.skipped == {"box thinner than a pixel": 1}


def test_overwrite_with_a_bad_source_keeps_the_previous_conversion(tmp_path):
    src = tmp_path / "coco"
    coco = one_cat_image_coco(
        src, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8]}]
    )
    convert_source("coco", src / "ann.json", tmp_path / "out", ratios=ALL_TRAIN)
    (src / "empty.json").write_text(json.dumps({**coco, "images": []}))
    with pytest.raises(ValueError, match="no images to convert"):
        convert_source(
            "coco", src / "empty.json", tmp_path / "out", ratios=ALL_TRAIN, overwrite=True
        )
    assert len(VOCDataset(tmp_path / "out", split="train")) == 1  # still there
