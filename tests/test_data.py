"""Toy VOC generator and VOCdevkit reader: round trip, determinism, validation."""

import hashlib
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import skimage.transform
from PIL import Image

from minircnn.data import toyvoc
from minircnn.data.image import resize_bilinear
from minircnn.data.voc import VOC_CLASSES, VOCDataset, VOCFormatError, check_devkit, main

COUNTS = {"train": 3, "val": 2, "test": 2}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    toyvoc.generate(root, seed=3, counts=COUNTS)
    return root


def test_round_trip_matches_generator(toy_root):
    ds = VOCDataset(toy_root, split="trainval", use_difficult=True)
    assert ds.classes == toyvoc.CLASSES and len(ds) == 5
    for index, item in enumerate(ds, start=1):
        assert item.image_id == f"{index:06d}"
        image, objects = toyvoc.render_image(np.random.default_rng([3, index]))
        assert (item.height, item.width) == image.shape[:2]
        assert ds.load_image(index - 1).shape == image.shape
        np.testing.assert_array_equal(item.boxes, [o.box for o in objects])  # 0-based
        np.testing.assert_array_equal(item.labels, [o.cls + 1 for o in objects])
        np.testing.assert_array_equal(item.difficult, [o.difficult for o in objects])
        assert item.boxes.dtype == np.float32 and item.labels.dtype == np.int64


def test_layout_and_class_files(toy_root):
    main_dir = toy_root / "VOC2007" / "ImageSets" / "Main"
    assert (main_dir / "trainval.txt").read_text().split() == [f"{i:06d}" for i in range(1, 6)]
    assert (main_dir / "test.txt").read_text().split() == ["000006", "000007"]
    lines = (main_dir / "disc_test.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["000006", "000007"]
    assert all(line.split()[1] in ("-1", "0", "1") for line in lines)
    without_difficult = VOCDataset(toy_root, split="trainval")
    assert not any(it.difficult.any() for it in without_difficult)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    toyvoc.generate(tmp_path / "a", seed=5, counts={"train": 2, "test": 1})
    toyvoc.generate(tmp_path / "b", seed=5, counts={"train": 2, "test": 1})
    toyvoc.generate(tmp_path / "c", seed=6, counts={"train": 2, "test": 1})
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_command_line_generates_in_parallel(tmp_path):
    # as `make demo` runs it: images render in worker processes from `python -m`
    out = tmp_path / "cli"
    args = ["--out", str(out), "--train", "3", "--val", "1", "--test", "2", "--seed", "5"]
    done = subprocess.run(
        [sys.executable, "-m", "minircnn.data.toyvoc", *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    toyvoc.generate(tmp_path / "lib", seed=5, counts={"train": 3, "val": 1, "test": 2}, jobs=1)
    assert _digest(out) == _digest(tmp_path / "lib")  # same files, whatever the workers


def test_objects_cover_the_task():
    """Over many images: every class, 1-5 objects, sizes 16 px to ~half the image,
    truncated and difficult flags all occur."""
    sizes, classes, flags_t, flags_d = [], set(), [], []
    for i in range(60):
        image, objects = toyvoc.render_image(np.random.default_rng([0, i]))
        assert 1 <= len(objects) <= 5 and image.dtype == np.uint8
        assert 160 <= min(image.shape[:2]) and max(image.shape[:2]) <= 256
        for o in objects:
            classes.add(o.cls)
            flags_t.append(o.truncated)
            flags_d.append(o.difficult)
            sizes.append(max(o.box[2] - o.box[0], o.box[3] - o.box[1]) + 1)
    assert classes == set(range(len(toyvoc.CLASSES)))
    assert any(flags_t) and any(flags_d) and not all(flags_d)
    assert min(sizes) <= 20 and max(sizes) >= 100


# ---------------------------------------------------------------- a real-VOC-like fixture
def write_voc(root, objects_by_id, sizes=None, gray=(), split_ids=None, xml_override=None):
    """A minimal real-VOC-style devkit: 1-based XML, no classes.txt (the 20 VOC classes)."""
    voc = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in objects_by_id.items():
        w, h = (sizes or {}).get(image_id, (40, 30))
        mode = "L" if image_id in gray else "RGB"
        Image.new(mode, (w, h), 128).save(voc / "JPEGImages" / f"{image_id}.jpg")
        objs = "".join(
            f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated>"
            f"<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for n, b, d in objects
        )
        xml = (xml_override or {}).get(image_id) or (
            f"<annotation><filename>{image_id}.jpg</filename><size><width>40</width>"
            f"<height>30</height><depth>3</depth></size>{objs}</annotation>"
        )
        (voc / "Annotations" / f"{image_id}.xml").write_text(xml)
    ids = split_ids if split_ids is not None else list(objects_by_id)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("".join(i + "\n" for i in ids))
    return root


def test_real_voc_like_fixture(tmp_path):
    root = write_voc(
        tmp_path,
        {
            "000005": [("chair", (1, 1, 10, 20), 0), ("person", (5, 6, 40, 30), 1)],
            "000007": [("car", (2, 3, 4, 5), 0)],
        },
        gray={"000007"},
    )
    ds = VOCDataset(root, use_difficult=True)
    assert ds.classes == VOC_CLASSES
    np.testing.assert_array_equal(ds[0].boxes, [[0, 0, 9, 19], [4, 5, 39, 29]])
    np.testing.assert_array_equal(ds[0].labels, [9, 15])  # chair, person (1-based labels)
    np.testing.assert_array_equal(ds[0].difficult, [False, True])
    assert len(VOCDataset(root)[0].labels) == 1  # difficult dropped by default
    assert ds.load_image(1).shape == (30, 40, 3)  # grayscale expanded to RGB
    subset = VOCDataset(root, classes=["car"], max_images=5)
    assert len(subset) == 1 and subset[0].labels.tolist() == [1]


def test_one_pixel_wide_box_is_a_valid_box(tmp_path):
    # xmin == xmax in the XML is one column of pixels (width x2 - x1 + 1 = 1), not zero area
    root = write_voc(tmp_path, {"000001": [("cat", (5, 5, 5, 9), 0)]})
    ds = VOCDataset(root)
    np.testing.assert_array_equal(ds[0].boxes, [[4, 4, 4, 8]])
    assert not any("box" in p.message for p in check_devkit(root))


def test_cmyk_jpeg_is_read_as_rgb_and_check_mentions_it(tmp_path):
    root = write_voc(tmp_path, {"000001": [("cat", (1, 1, 9, 9), 0)]})
    path = root / "VOC2007" / "JPEGImages" / "000001.jpg"
    Image.new("RGB", (40, 30), (255, 0, 0)).convert("CMYK").save(path, quality=100)
    pixels = VOCDataset(root).load_image(0).reshape(-1, 3).astype(int)
    assert np.all(np.abs(pixels - [255, 0, 0]) <= 3)  # red, not cyan (C, M, Y as R, G, B)
    problems = [p for p in check_devkit(root) if "CMYK" in p.message]
    assert len(problems) == 1 and not problems[0].fatal and problems[0].path == path


@pytest.mark.parametrize(
    "objects,xml,match",
    [
        ([("cat", (5, 5, 3, 9), 0)], None, "inverted box"),
        ([("cat", (5, 5, 45, 9), 0)], None, "outside the 40x30 image"),
        ([("unicorn", (1, 1, 5, 5), 0)], None, "unknown class name 'unicorn'"),
        ([], "<annotation><size><width>40", "malformed XML"),
    ],
)
def test_bad_annotations_name_the_file(tmp_path, objects, xml, match):
    root = write_voc(tmp_path, {"000001": objects}, xml_override={"000001": xml})
    with pytest.raises(VOCFormatError, match=match) as err:
        VOCDataset(root)
    assert "000001.xml" in str(err.value)


def test_box_one_pixel_outside_is_clipped_with_warning(tmp_path):
    root = write_voc(tmp_path, {"000001": [("cat", (0, 1, 41, 30), 0)]})
    with pytest.warns(UserWarning, match="clipped"):
        ds = VOCDataset(root)
    np.testing.assert_array_equal(ds[0].boxes, [[0, 0, 39, 29]])


def test_missing_image_size_mismatch_and_image_sets(tmp_path):
    root = write_voc(tmp_path, {"000001": [("cat", (1, 1, 5, 5), 0)]}, sizes={"000001": (50, 30)})
    ds = VOCDataset(root)
    with pytest.raises(VOCFormatError, match="000001.jpg: image is 50x30"):
        ds.load_image(0)
    (root / "VOC2007" / "JPEGImages" / "000001.jpg").unlink()
    with pytest.raises(VOCFormatError, match="000001.jpg: image file not found"):
        VOCDataset(root)
    with pytest.raises(VOCFormatError, match="test.txt: image-set file not found"):
        VOCDataset(root, split="test")
    (root / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").write_text("\n")
    with pytest.raises(VOCFormatError, match="trainval.txt: image-set file is empty"):
        VOCDataset(root)


def test_check_reports_every_problem(tmp_path, capsys):
    root = write_voc(
        tmp_path,
        {
            "000001": [("cat", (5, 5, 3, 9), 0)],
            "000002": [("unicorn", (1, 1, 5, 5), 0), ("dog", (0, 1, 41, 30), 0)],
            "000003": [("dog", (1, 1, 5, 5), 0)],
        },
        sizes={"000003": (41, 30)},
    )
    with warnings.catch_warnings():
        problems = check_devkit(root)
    text = "\n".join(map(str, problems))
    for expected in (
        "inverted box",
        "unknown class name",
        "clipped",
        "image is 41x30",
        "test.txt: image-set file not found",
    ):
        assert expected in text
    assert main(["--check", str(root)]) == 1
    assert "error(s)" in capsys.readouterr().out


def test_check_passes_on_toy_set(toy_root):
    assert [p for p in check_devkit(toy_root) if p.fatal] == []


# ---------------------------------------------------------------- resizing
@pytest.mark.parametrize(
    "shape,size",
    [((185, 237, 3), (192, 246)), ((249, 231, 3), (192, 178)), ((7, 5, 3), (32, 32)),
     ((300, 200, 3), (32, 32)), ((1, 5, 1), (3, 4)), ((40, 30, 3), (40, 30))],
)  # fmt: skip
def test_resize_bilinear_matches_skimage(shape, size):
    # the reference: scikit-image's bilinear resize without anti-aliasing, which
    # minircnn used before its own kernel (up- and down-scaling, edges, one-pixel rows)
    image = np.random.default_rng(7).uniform(0, 255, shape).astype(np.float32)
    ours = resize_bilinear(image, size)
    ref = skimage.transform.resize(image, size, order=1, anti_aliasing=False, preserve_range=True)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-3)


def test_resize_bilinear_by_hand():
    # 2 -> 4 pixels: output centres at input x = -0.25, 0.25, 0.75, 1.25; x = -0.25 mirrors
    # to 0.25 (between pixels 0 and 1), 1.25 to 0.75
    row = np.array([[[0.0], [4.0]]], dtype=np.float32)  # [1, 2, 1]
    np.testing.assert_allclose(resize_bilinear(row, (1, 4))[0, :, 0], [1.0, 1.0, 3.0, 3.0])
    with pytest.raises(ValueError, match="resize_bilinear"):
        resize_bilinear(row[0], (2, 2))
