"""Reading a PASCAL VOCdevkit (real or the toy one) with validated annotations.

    ds = VOCDataset("data/toyvoc", split="trainval")
    item = ds[0]        # VOCItem: image_id, path, width, height, boxes, labels, difficult
    image = load_image(item.path)

    python -m minircnn.data.voc --check ROOT [--year 2007]   # every problem, one pass

Boxes come out 0-based inclusive float32 ``(x1, y1, x2, y2)`` (the XML is 1-based);
labels are int64 in ``1..K`` with 0 reserved for background. Any problem is reported with
the file it is in; a box at most 1 px past the image border is clipped with a warning.
"""

import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from minircnn import cli

# fmt: off
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
# fmt: on
SPLITS = ("train", "val", "trainval", "test")


class VOCFormatError(cli.InputError):
    """A problem with a data-set file; the message starts with the file's path."""


class UnknownClassError(cli.InputError):
    """Class names asked for that a data set does not have; the message starts with its
    VOC<year> folder."""


@dataclass(frozen=True)
class VOCItem:
    """One image and its objects. boxes: float32 [G, 4] 0-based inclusive; labels: int64
    [G] in 1..K (0 is background, never used here); difficult: bool [G]; xml_index: int64
    [G], each object's position among its XML's <object> entries (None: not from a file),
    which is what VOC's SegmentationObject images number objects by."""

    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    xml_index: np.ndarray | None = None


@dataclass(frozen=True)
class Problem:
    """A finding of the annotation check: the file, what is wrong, and whether it is fatal."""

    path: Path
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class VOCDataset:
    """The images of one image set of ``<root>/VOC<year>``.

    ``classes`` selects a subset of the data set's classes (labels are then 1..len(classes)
    in that order; objects of other classes are dropped) and keeps only images that contain
    one of them, unless ``keep_all_images``: then every image of the split stays, as
    evaluation needs (the VOC devkit scores each class on every test image, so false
    positives on images without the class count). ``max_images`` keeps the first N images;
    ``use_difficult=False`` drops objects flagged difficult (as Fast R-CNN training does),
    True keeps them (evaluation needs them to ignore them).
    """

    def __init__(
        self,
        root: str | Path,
        year: str = "2007",
        split: str = "trainval",
        classes: list[str] | tuple[str, ...] | None = None,
        max_images: int | None = None,
        use_difficult: bool = False,
        keep_all_images: bool = False,
    ) -> None:
        self.root = Path(root) / f"VOC{year}"
        self.split = split
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: data set folder not found")
        all_classes = dataset_classes(self.root)
        subset = classes is not None
        classes = all_classes if classes is None else classes
        unknown = [c for c in classes if c not in all_classes]
        if unknown:
            raise UnknownClassError(
                f"{self.root}: no class {', '.join(unknown)} (its classes: "
                f"{', '.join(all_classes)})"
            )
        self.classes = tuple(classes)
        self.use_difficult = use_difficult
        self.items: list[VOCItem] = []
        for image_id in read_image_set(self.root, split):
            item, problems = parse_annotation(self.root, image_id, self.classes, all_classes)
            for p in problems:
                if p.fatal:
                    raise VOCFormatError(str(p))
                warnings.warn(str(p), stacklevel=2)
            if not use_difficult:
                item = _select(item, ~item.difficult)
            if subset and not keep_all_images and len(item.labels) == 0:
                continue  # subset: keep images with at least one selected object
            self.items.append(item)
            if max_images is not None and len(self.items) >= max_images:
                break

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> VOCItem:
        return self.items[i]

    def load_image(self, i: int) -> np.ndarray:
        """RGB uint8 ``[H, W, 3]`` of item i, checked against the size in its XML."""
        item = self.items[i]
        return load_image(item.path, expected_size=(item.height, item.width))

    def mask_path(self, i: int) -> Path:
        """Where item i's object masks are, if it has any: ``SegmentationObject/<id>.png``."""
        return self.root / "SegmentationObject" / f"{self.items[i].image_id}.png"

    def with_masks(self) -> list[int]:
        """The indices of the items that have a ``mask_path`` file."""
        return [i for i in range(len(self.items)) if self.mask_path(i).exists()]

    def load_masks(self, i: int) -> np.ndarray | None:
        """bool ``[G, H, W]``: the pixels of each of item i's objects, from
        ``mask_path(i)`` (pixel value n = the n-th <object> of the XML; 0 background, 255
        VOC's "void" outline); None when the image has no such file."""
        item, path = self.items[i], self.mask_path(i)
        if not path.exists() or item.xml_index is None:
            return None
        with Image.open(path) as im:
            values = np.asarray(im)
        if values.shape != (item.height, item.width):
            raise VOCFormatError(
                f"{path}: {values.shape[1]}x{values.shape[0]} pixels, the image is "
                f"{item.width}x{item.height}"
            )
        return values[None] == (item.xml_index + 1)[:, None, None]

    @property
    def num_classes(self) -> int:
        """K, the number of object classes (background not counted)."""
        return len(self.classes)


def dataset_classes(voc_root: Path) -> tuple[str, ...]:
    """Class names: ``classes.txt`` in the VOC<year> folder if present (the toy set writes
    one), else the 20 PASCAL VOC classes."""
    path = Path(voc_root) / "classes.txt"
    if path.exists():
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        if not names:
            raise VOCFormatError(f"{path}: no class names")
        return names
    return VOC_CLASSES


def read_image_set(voc_root: Path, split: str) -> list[str]:
    """Image ids listed in ``ImageSets/Main/<split>.txt``; an error if missing or empty."""
    path = Path(voc_root) / "ImageSets" / "Main" / f"{split}.txt"
    if not path.exists():
        # list the image sets there are (VOC's per-class lists are named <class>_<set>)
        found = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
        raise VOCFormatError(
            f"{path}: image-set file not found (image sets: {', '.join(found) or 'none'})"
        )
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise VOCFormatError(f"{path}: image-set file is empty")
    return ids


def parse_annotation(
    voc_root: Path,
    image_id: str,
    classes: tuple[str, ...],
    known_classes: tuple[str, ...],
    check_image: bool = False,
) -> tuple[VOCItem | None, list[Problem]]:
    """Parse ``Annotations/<image_id>.xml`` by tag name.

    Objects whose class is known but not in ``classes`` are skipped. Returns the item
    (None if a fatal problem prevents building it) and every problem found. With
    ``check_image`` the JPEG's header is read to compare its size with the XML's.
    """
    xml_path = Path(voc_root) / "Annotations" / f"{image_id}.xml"
    image_path = Path(voc_root) / "JPEGImages" / f"{image_id}.jpg"
    problems: list[Problem] = []
    try:
        tree = ET.parse(xml_path)
    except FileNotFoundError:
        return None, [Problem(xml_path, "annotation file not found")]
    except ET.ParseError as err:
        return None, [Problem(xml_path, f"malformed XML ({err})")]
    ann = tree.getroot()
    filename = ann.findtext("filename")
    if filename:
        image_path = Path(voc_root) / "JPEGImages" / filename.strip()
    try:
        width = int(float(ann.findtext("size/width")))
        height = int(float(ann.findtext("size/height")))
    except (TypeError, ValueError):
        return None, [Problem(xml_path, "missing or non-numeric <size><width>/<height>")]
    if not image_path.exists():
        problems.append(Problem(image_path, "image file not found"))
    elif check_image:
        try:
            with Image.open(image_path) as im:
                actual, mode = im.size, im.mode
        except OSError as err:
            problems.append(Problem(image_path, f"unreadable image ({err})"))
        else:
            if mode not in ("RGB", "L"):  # read correctly, but worth knowing
                msg = f"{mode} image, converted to RGB when read"
                problems.append(Problem(image_path, msg, fatal=False))
            if actual != (width, height):
                problems.append(
                    Problem(
                        image_path,
                        f"image is {actual[0]}x{actual[1]} but {xml_path.name} says "
                        f"{width}x{height}",
                    )
                )
    boxes, labels, difficult, xml_index = [], [], [], []
    for k, obj in enumerate(ann.iter("object")):
        name = (obj.findtext("name") or "").strip()
        where = f"object {k} ({name or 'no name'})"
        if name not in known_classes:
            problems.append(Problem(xml_path, f"{where}: unknown class name {name!r}"))
            continue
        try:
            coords = [
                float(obj.findtext(f"bndbox/{t}")) - 1 for t in ("xmin", "ymin", "xmax", "ymax")
            ]
        except (TypeError, ValueError):
            problems.append(Problem(xml_path, f"{where}: missing or non-numeric <bndbox>"))
            continue
        box, box_problems = check_box(coords, width, height, xml_path, where)
        problems += box_problems
        if box is None or name not in classes:
            continue
        boxes.append(box)
        labels.append(classes.index(name) + 1)  # 0 is background
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
        xml_index.append(k)
    if any(p.fatal for p in problems):
        return None, problems
    item = VOCItem(
        image_id=image_id,
        path=image_path,
        width=width,
        height=height,
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.array(labels, dtype=np.int64),
        difficult=np.array(difficult, dtype=bool),
        xml_index=np.array(xml_index, dtype=np.int64),
    )
    return item, problems


def load_image(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as RGB uint8 ``[H, W, 3]``: grayscale expanded, alpha dropped, CMYK
    and palette images converted by PIL (taking C, M, Y as R, G, B would turn red cyan).

    ``expected_size`` ``(height, width)``, if given, must match (else VOCFormatError).
    """
    try:
        with Image.open(path) as im:
            image = np.asarray(as_rgb(im))
    except (OSError, ValueError, SyntaxError) as err:
        raise VOCFormatError(f"{path}: unreadable image ({err})") from err
    if expected_size is not None and image.shape[:2] != tuple(expected_size):
        raise VOCFormatError(
            f"{path}: image is {image.shape[1]}x{image.shape[0]} but its annotation says "
            f"{expected_size[1]}x{expected_size[0]}"
        )
    return np.ascontiguousarray(image)


def as_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: grayscale expanded, alpha dropped, palette and CMYK
    converted; 16-bit grayscale keeps its top 8 bits (PIL's own conversion would clip
    everything above 255 to white)."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L"):
        im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8))
    return im if im.mode == "RGB" else im.convert("RGB")


def check_devkit(root: str | Path, year: str = "2007") -> list[Problem]:
    """Every problem in every image set of ``<root>/VOC<year>``, images opened too."""
    voc_root = Path(root) / f"VOC{year}"
    if not voc_root.is_dir():
        return [Problem(voc_root, "folder not found")]
    try:
        known = dataset_classes(voc_root)
    except VOCFormatError as err:
        return [Problem(voc_root / "classes.txt", str(err).split(": ", 1)[-1])]
    problems, seen = [], set()
    for split in SPLITS:
        try:
            ids = read_image_set(voc_root, split)
        except VOCFormatError as err:
            fatal = split in ("trainval", "test") or "empty" in str(err)
            problems.append(
                Problem(Path(str(err).split(": ")[0]), str(err).split(": ", 1)[1], fatal)
            )
            continue
        for image_id in ids:
            if image_id not in seen:
                seen.add(image_id)
                problems += parse_annotation(voc_root, image_id, known, known, check_image=True)[1]
    return problems


def check_box(
    coords: list[float], width: int, height: int, xml_path: Path, where: str
) -> tuple[list[float] | None, list[Problem]]:
    """Validate one 0-based inclusive box ``[x1, y1, x2, y2]`` against a ``width x height``
    image; clip it if it is at most 1 px past the border (a non-fatal Problem).

    Returns the (possibly clipped) box, or None when it is unusable, and the problems found,
    each naming ``xml_path`` and ``where`` (e.g. "object 3 (dog)"). The converters in
    ``minircnn.data.convert`` apply the same check, so what they write passes ``--check``.
    """
    x1, y1, x2, y2 = coords
    if x2 < x1 or y2 < y1:
        return None, [Problem(xml_path, f"{where}: inverted box {coords} (x2 < x1 or y2 < y1)")]
    over = max(-x1, -y1, x2 - (width - 1), y2 - (height - 1))
    if over > 1:
        msg = f"{where}: box {coords} lies {over:g} px outside the {width}x{height} image"
        return None, [Problem(xml_path, msg)]
    if over > 0:
        clipped = [max(x1, 0), max(y1, 0), min(x2, width - 1), min(y2, height - 1)]
        msg = f"{where}: box {coords} clipped to the {width}x{height} image"
        return clipped, [Problem(xml_path, msg, fatal=False)]
    return coords, []


def _select(item: VOCItem, keep: np.ndarray) -> VOCItem:
    return VOCItem(
        item.image_id,
        item.path,
        item.width,
        item.height,
        item.boxes[keep],
        item.labels[keep],
        item.difficult[keep],
        None if item.xml_index is None else item.xml_index[keep],
    )


@cli.command
def main(argv: list[str] | None = None) -> int:
    """Check a devkit: exit status 0 clean, 1 problems found, 2 no devkit at ROOT."""
    parser = cli.ArgumentParser(
        prog="python -m minircnn.data.voc", description="Check a VOCdevkit's annotations."
    )
    parser.add_argument("--check", metavar="ROOT", required=True, help="VOCdevkit folder")
    parser.add_argument("--year", default="2007")
    args = parser.parse_args(argv)
    # no data set to check at all is bad input (status 2), not a finding (status 1)
    if not Path(args.check).is_dir():
        raise cli.UsageError(f"--check {args.check}: folder not found")
    if not (Path(args.check) / f"VOC{args.year}").is_dir():
        raise cli.UsageError(f"--check {args.check}: no VOC{args.year} folder in it (--year)")
    problems = check_devkit(args.check, args.year)
    for p in problems:
        print(("ERROR   " if p.fatal else "warning ") + str(p))
    n_fatal = sum(p.fatal for p in problems)
    print(f"{n_fatal} error(s), {len(problems) - n_fatal} warning(s)")
    return 1 if n_fatal else 0


if __name__ == "__main__":
    cli.run(main)
