"""A procedurally generated toy data set in the exact PASCAL VOC folder layout.

    python -m minircnn.data.toyvoc --out data/toyvoc --tiny        # 200 trainval + 100 test
    python -m minircnn.data.toyvoc --out data/toyvoc --preview     # + runs/toyvoc_preview.png

Writes ``<out>/VOC2007/{Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/*.txt}`` and
``<out>/VOC2007/classes.txt`` (the class names, where ``VOCDataset`` finds them), so the
reader treats it exactly like a real VOCdevkit; also, as VOC's segmentation images do,
``SegmentationObject/*.png``, each object's pixels (what copy-paste augmentation cuts out).

Detection has to be a real task: the five classes differ by *shape and texture* while
drawing colours from one shared palette; objects range from ~16 px to half the image with
varied aspect ratios, occlude each other and get cut by the border (flagged
``truncated``); mostly hidden or tiny ones are flagged ``difficult``, as VOC does.
Backgrounds are crops of scikit-image's bundled photographs or smooth procedural textures,
under a lighting gradient and sensor noise. Same seed, same bytes.
"""

import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import skimage.data
import skimage.draw
import skimage.transform
from joblib import Parallel, delayed
from PIL import Image

from minircnn import cli
from minircnn.data.vocwriter import (
    VOCObject,
    make_layout,
    write_annotation,
    write_classes,
    write_image_sets,
)

CLASSES = ("disc", "box", "triangle", "cross", "star")
PALETTE = np.array(
    [
        [220, 40, 40],
        [40, 170, 60],
        [40, 80, 220],
        [235, 200, 40],
        [200, 60, 200],
        [30, 190, 200],
        [245, 130, 30],
        [240, 240, 240],
    ],
    dtype=np.float32,
)
_COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
_GRAY_PHOTOS = ("camera", "moon", "brick", "grass", "gravel", "coins", "clock")
TINY = {"train": 100, "val": 100, "test": 100}


@dataclass(frozen=True)
class ToyObject:
    """One annotated object: class index into CLASSES, 0-based inclusive box, flags."""

    cls: int
    box: tuple[int, int, int, int]
    truncated: bool
    difficult: bool


def generate(
    out: str | Path,
    seed: int = 0,
    counts: dict[str, int] | None = None,
    min_size: int = 160,
    max_size: int = 256,
    year: str = "2007",
    jobs: int = -1,
) -> Path:
    """Write the data set under ``out/VOC<year>``; returns that folder.

    ``counts`` maps split name (train, val, test) to a number of images (TINY by default);
    trainval is train + val. Image sides are drawn from ``[min_size, max_size]``.
    ``jobs`` worker processes render the images (-1: all cores).
    """
    counts = dict(TINY if counts is None else counts)
    if not 16 <= min_size <= max_size:
        raise ValueError(f"need 16 <= min_size <= max_size, got {min_size}, {max_size}")
    # absolute: joblib reuses worker processes, whose working folder may be another one
    root = make_layout(Path(out).resolve() / f"VOC{year}")
    (root / "SegmentationObject").mkdir(exist_ok=True)
    write_classes(root, CLASSES)
    split_ids: dict[str, list[str]] = {}
    index = 0
    for split in ("train", "val", "test"):
        n = counts.get(split, 0)
        split_ids[split] = [f"{i:06d}" for i in range(index + 1, index + n + 1)]
        index += n
    # images are independent (each has its own random stream), so they render in parallel
    # and the files are the same whatever the number of workers
    tasks = (delayed(_write_image)(root, seed, i, min_size, max_size) for i in range(1, index + 1))
    objects_by_id = dict(Parallel(n_jobs=jobs)(tasks))
    split_ids["trainval"] = split_ids["train"] + split_ids["val"]
    write_image_sets(root, split_ids, CLASSES, objects_by_id)
    return root


def _write_image(root: Path, seed: int, index: int, min_size: int, max_size: int):
    """Render image ``index`` from its own random stream, write its JPEG and XML ->
    (image id, its VOCObjects)."""
    image_id = f"{index:06d}"
    image, objects, instances = render_scene(
        np.random.default_rng([seed, index]), min_size, max_size
    )
    Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=92)
    Image.fromarray(instances).save(root / "SegmentationObject" / f"{image_id}.png")
    voc_objects = [VOCObject(CLASSES[o.cls], o.box, o.truncated, o.difficult) for o in objects]
    height, width, depth = image.shape
    write_annotation(
        root / "Annotations" / f"{image_id}.xml",
        f"{image_id}.jpg",
        width,
        height,
        voc_objects,
        depth,
        folder="VOC2007",
        database="minircnn toy VOC",
    )
    return image_id, voc_objects


def render_image(
    rng: np.random.Generator, min_size: int = 160, max_size: int = 256
) -> tuple[np.ndarray, list[ToyObject]]:
    """One image (uint8 ``[H, W, 3]``) with 1-5 objects and their annotations."""
    image, objects, _ = render_scene(rng, min_size, max_size)
    return image, objects


def render_scene(
    rng: np.random.Generator, min_size: int = 160, max_size: int = 256
) -> tuple[np.ndarray, list[ToyObject], np.ndarray]:
    """``render_image``'s image and objects, plus uint8 ``[H, W]`` instance labels as VOC's
    SegmentationObject images hold them: ``n`` on the visible pixels of the n-th annotated
    object (1-based, annotation order), 0 elsewhere."""
    height, width = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, dtype=np.int64)  # which object each pixel shows
    placed = []  # (cls, full box in image coords, full area)
    for k in range(int(rng.integers(1, 6))):
        cls = int(rng.integers(len(CLASSES)))
        side = np.exp(rng.uniform(np.log(16), np.log(0.5 * min(height, width))))
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        ow, oh = max(int(side * np.sqrt(aspect)), 8), max(int(side / np.sqrt(aspect)), 8)
        x0 = int(rng.integers(-ow // 3, width - 2 * ow // 3))
        y0 = int(rng.integers(-oh // 3, height - 2 * oh // 3))
        mask, texture = _draw_object(rng, cls, oh, ow)
        # paste the object's [oh, ow] patch where it overlaps the image
        ys, xs = slice(max(y0, 0), min(y0 + oh, height)), slice(max(x0, 0), min(x0 + ow, width))
        local = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        m = mask[local]
        image[ys, xs][m] = texture[local][m]
        owner[ys, xs][m] = k
        placed.append((cls, (x0, y0, x0 + ow - 1, y0 + oh - 1), int(mask.sum())))
    image = _lighting_and_noise(rng, image)
    objects = []
    instances = np.zeros((height, width), dtype=np.uint8)
    for k, (cls, full_box, area) in enumerate(placed):
        ys, xs = np.nonzero(owner == k)
        box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())) if len(ys) else None
        if box is None or min(box[2] - box[0], box[3] - box[1]) + 1 < 4:
            continue  # hidden but for a sliver: nothing a person would annotate
        instances[ys, xs] = len(objects) + 1
        truncated = full_box[0] < 0 or full_box[1] < 0
        truncated |= full_box[2] > width - 1 or full_box[3] > height - 1
        visible = len(ys) / area
        small = min(box[2] - box[0], box[3] - box[1]) + 1 < 12
        objects.append(ToyObject(cls, box, bool(truncated), bool(visible < 0.35 or small)))
    return np.clip(image, 0, 255).astype(np.uint8), objects, instances


# ---------------------------------------------------------------- drawing helpers
def _draw_object(rng, cls, oh, ow):
    """Boolean mask [oh, ow] of the class's shape and a float RGB texture of the same size."""
    mask = np.zeros((oh, ow), dtype=bool)
    name = CLASSES[cls]
    if name == "disc":
        rr, cc = skimage.draw.ellipse((oh - 1) / 2, (ow - 1) / 2, oh / 2, ow / 2, shape=mask.shape)
        mask[rr, cc] = True
    elif name == "box":
        mask[:] = True
    elif name == "triangle":
        rr, cc = skimage.draw.polygon([0, oh - 1, oh - 1], [(ow - 1) / 2, 0, ow - 1], mask.shape)
        mask[rr, cc] = True
    elif name == "cross":
        mask[oh // 3 : oh - oh // 3, :] = True
        mask[:, ow // 3 : ow - ow // 3] = True
    else:  # star: 5 outer points, inner radius 0.45
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        rows = (oh - 1) / 2 * (1 + radius * np.sin(angles))
        cols = (ow - 1) / 2 * (1 + radius * np.cos(angles))
        rr, cc = skimage.draw.polygon(rows, cols, mask.shape)
        mask[rr, cc] = True
    a, b = PALETTE[rng.choice(len(PALETTE), 2, replace=False)]
    y, x = np.mgrid[0:oh, 0:ow].astype(np.float32)
    period = max(3.0, min(oh, ow) / rng.uniform(4, 7))
    if name == "disc":  # concentric rings
        r = np.hypot((y - oh / 2) / oh * min(oh, ow), (x - ow / 2) / ow * min(oh, ow))
        pattern = (r // (period / 2)) % 2
    elif name == "box":  # checkerboard
        pattern = ((y // period) + (x // period)) % 2
    elif name == "triangle":  # horizontal stripes
        pattern = (y // (period / 1.5)) % 2
    elif name == "cross":  # polka dots
        pattern = np.hypot(y % period - period / 2, x % period - period / 2) < period / 3.5
    else:  # star: solid colour with radial shading
        r = np.hypot((y - oh / 2) / oh, (x - ow / 2) / ow)
        pattern = np.clip(r * 1.6, 0, 1)
    pattern = pattern.astype(np.float32)[..., None]
    return mask, a * (1 - pattern) + b * pattern


def _background(rng, height, width):
    if rng.random() < 0.5:
        names = _COLOUR_PHOTOS + _GRAY_PHOTOS
        photo = _photo(names[int(rng.integers(len(names)))])
        scale = max(height / photo.shape[0], width / photo.shape[1]) * rng.uniform(1.0, 1.6)
        size = (int(np.ceil(photo.shape[0] * scale)), int(np.ceil(photo.shape[1] * scale)))
        big = skimage.transform.resize(photo, size, order=1, anti_aliasing=False)
        y0 = int(rng.integers(0, big.shape[0] - height + 1))
        x0 = int(rng.integers(0, big.shape[1] - width + 1))
        image = big[y0 : y0 + height, x0 : x0 + width] * 255.0
        image = image * rng.uniform(0.6, 1.1) + rng.uniform(-20, 20)
    else:  # smooth procedural texture: a muted base colour with low-frequency variation
        grid = (int(rng.integers(3, 10)), int(rng.integers(3, 10)))
        base = rng.uniform(40, 200, 3)
        coarse = base + rng.normal(0, 1, (*grid, 1)) * rng.uniform(10, 50)
        coarse = coarse + rng.normal(0, 15, (*grid, 3))
        image = skimage.transform.resize(coarse, (height, width), order=3)
    return image.astype(np.float32)


@cache
def _photo(name):
    img = getattr(skimage.data, name)().astype(np.float32) / 255.0
    if img.ndim == 2:  # tint a grayscale photo so backgrounds vary in colour too
        img = img[..., None] * np.array([0.9, 1.0, 0.85], dtype=np.float32)
    return img[..., :3]


def _lighting_and_noise(rng, image):
    height, width = image.shape[:2]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * x / width + np.sin(angle) * y / height)[..., None]
    image = image * (1 + rng.uniform(-0.3, 0.3) * ramp)
    return image + rng.normal(0, rng.uniform(2, 8), image.shape).astype(np.float32)


@cli.command
def main(argv: list[str] | None = None) -> int:
    """Generate the set (and a preview) as the command line says."""
    parser = cli.ArgumentParser(
        prog="python -m minircnn.data.toyvoc", description="Generate the toy VOC data set."
    )
    count, side = cli.non_negative_int, cli.int_at_least(16)  # generate()'s own limits
    parser.add_argument("--out", default="data/toyvoc", help="devkit folder (VOC2007 inside)")
    parser.add_argument("--seed", type=cli.non_negative_int, default=0)
    parser.add_argument("--train", type=count, default=500, help="train images (default 500)")
    parser.add_argument("--val", type=count, default=250, help="val images (default 250)")
    parser.add_argument("--test", type=count, default=500, help="test images (default 500)")
    parser.add_argument("--tiny", action="store_true", help="preset: 100 train, 100 val, 100 test")
    parser.add_argument("--min-size", type=side, default=160, help="smallest image side (px)")
    parser.add_argument("--max-size", type=side, default=256, help="largest image side (px)")
    parser.add_argument("--preview", action="store_true", help="also write runs/toyvoc_preview.png")
    args = parser.parse_args(argv)
    if args.min_size > args.max_size:
        parser.error(f"--min-size {args.min_size} is above --max-size {args.max_size}")
    counts = TINY if args.tiny else {"train": args.train, "val": args.val, "test": args.test}
    if not sum(counts.values()):
        parser.error("--train, --val and --test are all 0: no image to generate")
    if args.preview and not counts["train"] + counts["val"]:
        parser.error("--preview shows trainval images, but --train and --val are both 0")
    t0 = time.perf_counter()
    root = generate(args.out, args.seed, counts, args.min_size, args.max_size)
    total = sum(counts.values())
    print(f"wrote {total} images to {root} in {time.perf_counter() - t0:.1f} s")
    if args.preview:
        from minircnn.data.voc import VOCDataset
        from minircnn.viz import save_preview

        path = save_preview(VOCDataset(args.out, split="trainval", use_difficult=True))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    # run the importable module's main: the worker processes that render images unpickle
    # its functions by module name, which "__main__" is not
    from minircnn.data import toyvoc

    cli.run(toyvoc.main)
