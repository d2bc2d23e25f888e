"""What every converter shares: the records a format reader produces, the one rounding
rule, validation, image and annotation writing, the train/val/test split, the report.

A reader turns its format into ``SourceImage`` records whose boxes are *continuous*
corners ``(left, top, right, bottom)``: pixel column ``i`` covers ``[i, i + 1)``, so a box
``left=10, right=30`` covers columns 10..29. ``pixel_box`` turns that into the project's
0-based inclusive integer box with one rule for every format:

    x1 = floor(left + 0.5)          the nearest pixel boundary, halves up
    x2 = floor(right + 0.5) - 1     the last pixel before the nearest boundary

so width ``x2 - x1 + 1`` is the rounded extent; integer corners are kept exactly.
"""

import io
import math
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from minircnn.cli import InputError
from minircnn.data.voc import as_rgb, check_box, check_devkit
from minircnn.data.vocwriter import (
    VOCObject,
    make_layout,
    write_annotation,
    write_classes,
    write_image_sets,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
_EXIF_ORIENTATION = 0x0112


class ConvertError(InputError):
    """Input that cannot be converted at all; the message starts with the offending path."""


@dataclass(frozen=True)
class SourceObject:
    """One object as a reader found it. ``box``: continuous ``(left, top, right, bottom)``
    in pixels, or in fractions of the image size when ``normalised`` (YOLO), whose pixel
    size the reader does not know. ``where`` names it in messages, e.g. "line 3"."""

    name: str
    box: tuple[float, float, float, float]
    where: str
    difficult: bool = False
    truncated: bool = False
    normalised: bool = False


@dataclass
class SourceImage:
    """One image and its objects. ``annotation`` is the file the objects came from (named
    in every message); ``image`` the image file, or None when ``data`` holds its encoded
    bytes (labelme's embedded imageData); ``size`` the ``(width, height)`` the annotation
    declares, or None; ``name`` the path the output id is made from."""

    annotation: Path
    image: Path | None
    name: str
    size: tuple[int, int] | None = None
    objects: list[SourceObject] = field(default_factory=list)
    data: bytes | None = None


@dataclass
class Report:
    """Everything not converted as it was, by reason; ``lines`` name file and problem."""

    lines: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> objects
    skipped_images: Counter = field(default_factory=Counter)  # reason -> images
    changed: Counter = field(default_factory=Counter)  # reason -> objects converted changed

    def skip(self, path: Path, message: str, reason: str, objects: int = 1) -> None:
        """``objects`` objects in ``path`` not converted."""
        self.lines.append(f"skipped  {path}: {message}")
        self.skipped[reason] += objects

    def skip_image(self, path: Path, message: str, reason: str, objects: int = 0) -> None:
        """An image (and its ``objects`` objects) not converted."""
        self.lines.append(f"skipped  {path}: {message}")
        self.skipped_images[reason] += 1
        if objects:
            self.skipped[f"{reason} (its objects)"] += objects

    def change(self, path: Path, message: str, reason: str) -> None:
        """An object converted, but not exactly as it was (e.g. clipped)."""
        self.lines.append(f"changed  {path}: {message}")
        self.changed[reason] += 1


@dataclass
class Summary:
    """What a conversion wrote: image ids per split, object count per class, the report."""

    voc_root: Path
    split_ids: dict[str, list[str]]
    objects_per_class: Counter
    empty_images: int
    report: Report
    check: list = field(default_factory=list)  # voc.check_devkit's problems with the output


def round_half_up(value: float) -> int:
    """Nearest integer, halves up (Python's round() goes to even, which is surprising)."""
    return math.floor(value + 0.5)


def pixel_box(left: float, top: float, right: float, bottom: float) -> tuple[int, int, int, int]:
    """Continuous corners -> 0-based inclusive integer ``(x1, y1, x2, y2)`` (module doc)."""
    return (
        round_half_up(left),
        round_half_up(top),
        round_half_up(right) - 1,
        round_half_up(bottom) - 1,
    )


def finite_numbers(values, n: int) -> list[float]:
    """``values`` as a list of ``n`` finite floats; ValueError naming what was found."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"expected {n} numbers, got {values!r}") from None
    if len(numbers) != n or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"expected {n} finite numbers, got {values!r}")
    return numbers


def declared_size(width, height) -> tuple[int, int] | None:
    """An annotation's (width, height) as whole pixels, None when it gives none;
    ValueError (naming the values) when they are not positive numbers."""
    if not width and not height:
        return None
    w, h = finite_numbers([width, height], 2)
    if w < 1 or h < 1 or w != int(w) or h != int(h):
        raise ValueError(f"expected a positive whole width and height, got {width!r}, {height!r}")
    return int(w), int(h)


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.5,0.25,0.25"`` -> train, val, test fractions (non-negative, summing to 1)."""
    try:
        ratios = tuple(float(v) for v in text.split(","))
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6:
        raise ConvertError(f"--split {text}: need three fractions train,val,test summing to 1")
    return ratios


def split_ids(ids: Sequence[str], ratios: Sequence[float], seed: int = 0) -> dict[str, list[str]]:
    """Shuffle ``ids`` with ``seed`` and cut them at the cumulative ``ratios`` (train, val,
    test); trainval = train + val. Each list is sorted, as VOC's image sets are."""
    n = len(ids)
    order = np.random.default_rng(seed).permutation(n)
    cut1, cut2 = (int(c) for c in np.round(np.cumsum(ratios)[:2] * n))
    parts = {"train": order[:cut1], "val": order[cut1:cut2], "test": order[cut2:]}
    result = {split: sorted(ids[i] for i in part) for split, part in parts.items()}
    result["trainval"] = sorted(result["train"] + result["val"])
    return result


def usable_class_name(name: str) -> bool:
    """A class name must make a file name (``<class>_<split>.txt``) and a line of
    classes.txt: not empty, no path separator, no line break."""
    return bool(name) and not any(c in name for c in "/\\\n\r")


def convert(
    images: Sequence[SourceImage],
    classes: Sequence[str],
    out: str | Path,
    report: Report,
    ratios: Sequence[float] = (0.5, 0.25, 0.25),
    seed: int = 0,
    year: str = "2007",
    database: str = "minircnn convert",
) -> Summary:
    """Write ``images`` as ``<out>/VOC<year>``: a JPEG and an XML per image, the image
    sets and classes.txt (``classes`` in label order). Objects whose class is not in
    ``classes`` or whose box fails ``voc.check_box`` are skipped, boxes at most 1 px past
    the border are clipped, images that cannot be read or whose size differs from the
    annotation's are skipped; all of it goes to ``report``. Finally the output is checked
    with ``voc.check_devkit`` (``Summary.check``)."""
    voc_root = make_layout(Path(out) / f"VOC{year}")
    objects_by_id: dict[str, list[VOCObject]] = {}
    taken: set[str] = set()
    for record in images:
        written = _write_one(record, classes, voc_root, report, taken, database)
        if written is not None:
            objects_by_id[written[0]] = written[1]
    ids = sorted(objects_by_id)
    splits = split_ids(ids, ratios, seed)
    # An empty image-set file is an error for VOCDataset and --check: leave it out.
    write_image_sets(voc_root, {s: v for s, v in splits.items() if v}, classes, objects_by_id)
    write_classes(voc_root, classes)
    per_class = Counter(o.name for objs in objects_by_id.values() for o in objs)
    empty = sum(not objs for objs in objects_by_id.values())
    check = check_devkit(voc_root.parent, year) if ids else []
    # splits left empty on purpose (reported by the summary) are not the check's errors
    unwritten = {voc_root / "ImageSets" / "Main" / f"{s}.txt" for s, v in splits.items() if not v}
    check = [p for p in check if p.path not in unwritten]
    return Summary(voc_root, splits, per_class, empty, report, check)


def _write_one(record, classes, voc_root, report, taken, database):
    """Validate and write one image; returns ``(image_id, objects)`` or None if skipped."""
    where = record.image or record.annotation
    n = len(record.objects)
    try:
        im = Image.open(io.BytesIO(record.data) if record.image is None else record.image)
        im.load()
    except FileNotFoundError:
        report.skip_image(where, "image file not found", "image file not found", n)
        return None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        report.skip_image(where, f"unreadable image ({err})", "unreadable image", n)
        return None
    with im:
        # Annotation tools (labelme, CVAT, viewers) show an image turned upright by its EXIF
        # orientation, so the boxes refer to the turned pixels: turn it the same way.
        oriented = im.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None)
        upright = ImageOps.exif_transpose(im) if oriented else im
        width, height = upright.size
        if record.size is not None and tuple(record.size) != (width, height):
            msg = f"image is {width}x{height} but {record.annotation.name} says "
            msg += f"{record.size[0]}x{record.size[1]}"
            report.skip_image(where, msg, "image size differs from the annotation's", n)
            return None
        objects = _valid_objects(record, classes, width, height, report)
        image_id = _unique_id(record.name, taken)
        target = voc_root / "JPEGImages" / f"{image_id}.jpg"
        if im.format == "JPEG" and im.mode == "RGB" and not oriented:
            # already what VOCDataset reads: the same bytes, no second JPEG compression
            if record.image is None:
                target.write_bytes(record.data)
            else:
                shutil.copyfile(record.image, target)
        else:
            as_rgb(upright).save(target, quality=95)
    write_annotation(
        voc_root / "Annotations" / f"{image_id}.xml",
        target.name,
        width,
        height,
        objects,
        folder=voc_root.name,
        database=database,
    )
    return image_id, objects


def _valid_objects(record, classes, width, height, report):
    objects = []
    for obj in record.objects:
        if obj.name not in classes:
            msg = f"{obj.where}: class {obj.name!r} is not one of the classes converted"
            report.skip(record.annotation, msg, "class not converted")
            continue
        left, top, right, bottom = obj.box
        if obj.normalised:
            left, right, top, bottom = left * width, right * width, top * height, bottom * height
        coords = list(pixel_box(left, top, right, bottom))
        where = f"{obj.where} ({obj.name})"
        if right > left and bottom > top and (coords[2] < coords[0] or coords[3] < coords[1]):
            # not inverted: so thin that no whole pixel lies inside it after rounding
            msg = f"{where}: box {obj.box} covers no whole pixel once rounded"
            report.skip(record.annotation, msg, "box thinner than a pixel")
            continue
        box, problems = check_box(coords, width, height, record.annotation, where)
        for p in problems:
            if p.fatal:
                report.skip(record.annotation, p.message, _box_reason(p.message))
            else:
                report.change(record.annotation, p.message, _box_reason(p.message))
        if box is not None:
            box = tuple(int(v) for v in box)
            objects.append(VOCObject(obj.name, box, obj.truncated, obj.difficult))
    return objects


def _box_reason(message: str) -> str:
    """A short reason for the summary, from ``voc.check_box``'s message."""
    for key, reason in (
        ("inverted", "inverted box (x2 < x1 or y2 < y1)"),
        ("outside", "box more than 1 px outside the image"),
        ("clipped", "box clipped to the image (at most 1 px outside)"),
    ):
        if key in message:
            return reason
    return "invalid box"


def _unique_id(name: str, taken: set[str]) -> str:
    """An image id from a source path: characters other than letters, digits, ``-``,
    ``_`` and ``.`` become ``_`` (ids are whitespace-separated in image sets); a second
    image with the same id gets ``_2``, a third ``_3``..."""
    base = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)
    base = base or "image"
    image_id, k = base, 1
    while image_id in taken:
        k += 1
        image_id = f"{base}_{k}"
    taken.add(image_id)
    return image_id


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted."""
    return sorted(
        p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def report_unannotated(folder: Path, used: set[Path], report: Report) -> None:
    """Images under ``folder`` that no annotation refers to: not converted, but said so
    (they may be unlabelled, not empty: converting them as negatives could be wrong)."""
    used = {p.resolve() for p in used}
    for path in list_images(folder):
        if path.resolve() not in used:
            report.skip_image(path, "no annotation refers to this image", "no annotation")
