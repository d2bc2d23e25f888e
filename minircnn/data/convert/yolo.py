"""YOLO (darknet / Ultralytics) labels: one ``.txt`` per image, a line per object,
``class cx cy w h`` with the centre and size as fractions of the image's width and height.

The label file of ``a/b.jpg`` is ``a/b.txt``, or Ultralytics' ``labels/.../b.txt`` beside
an ``images/`` folder. Class names, one a line (line k is class k), come from ``--names``
or ``classes.txt`` / ``obj.names`` / ``classes.names`` in SRC. An image without a label
file has no objects (YOLO's convention for background images).

The continuous box is ``(cx - w/2) * W .. (cx + w/2) * W`` (likewise in y), rounded by the
shared rule (``core``): ``x1 = round((cx - w/2) * W)``, ``x2 = round((cx + w/2) * W) - 1``,
halves up. A box written from integer pixels (``x1``, width ``x2 - x1 + 1``) comes back
exactly.
"""

from pathlib import Path

from minircnn.data.convert.core import (
    ConvertError,
    Report,
    SourceImage,
    SourceObject,
    finite_numbers,
    list_images,
)

NAMES_FILES = ("classes.txt", "obj.names", "classes.names")


def read(
    src: Path, report: Report, names_file: Path | None = None
) -> tuple[list[str], list[SourceImage]]:
    """Class names (file order) and one record per image under ``src``."""
    if not src.is_dir():
        raise ConvertError(f"{src}: not a folder (YOLO: a folder of images and .txt labels)")
    if names_file is None:
        names_file = next((src / n for n in NAMES_FILES if (src / n).is_file()), None)
        if names_file is None:
            raise ConvertError(f"{src}: no {' or '.join(NAMES_FILES)}; pass --names FILE")
    try:
        classes = [line.strip() for line in Path(names_file).read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise ConvertError(f"{names_file}: cannot read ({err})") from None
    while classes and not classes[-1]:
        classes.pop()
    if not classes or not all(classes):
        raise ConvertError(f"{names_file}: need one non-empty class name per line")
    records, used = [], set()
    for image in list_images(src):
        label = _label_file(image)
        record = SourceImage(
            annotation=label or image, image=image, name=str(image.relative_to(src).with_suffix(""))
        )
        if label is not None:
            used.add(label.resolve())
            record.objects += _read_labels(label, classes, report)
        records.append(record)
    skip = {Path(names_file).resolve(), *used}
    for txt in sorted(src.rglob("*.txt")):
        if txt.resolve() not in skip:
            n = sum(1 for line in txt.read_text(errors="replace").splitlines() if line.strip())
            report.skip(txt, f"no image for this label file ({n} objects)", "no image", n)
    return classes, records


def _label_file(image: Path) -> Path | None:
    beside = image.with_suffix(".txt")
    if beside.is_file():
        return beside
    parts = list(image.parts)
    if "images" in parts:  # Ultralytics: <root>/images/<split>/x.jpg -> <root>/labels/<split>/x.txt
        k = len(parts) - 1 - parts[::-1].index("images")
        parts[k] = "labels"
        label = Path(*parts).with_suffix(".txt")
        if label.is_file():
            return label
    return None


def _read_labels(path: Path, classes: list[str], report: Report) -> list[SourceObject]:
    objects = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        report.skip(path, f"unreadable label file ({err})", "unreadable label file")
        return objects
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"line {n}"
        if len(fields) != 5:
            why = "a segmentation polygon?" if len(fields) > 6 else "expected class cx cy w h"
            msg = f"{where}: {len(fields)} fields, not 5 ({why})"
            report.skip(path, msg, "not 'class cx cy w h'")
            continue
        try:
            cls = int(fields[0])
            cx, cy, w, h = finite_numbers(fields[1:], 4)
        except ValueError as err:
            report.skip(path, f"{where}: {err}", "not 'class cx cy w h'")
            continue
        if not 0 <= cls < len(classes):
            msg = f"{where}: class {cls} is not in 0..{len(classes) - 1}"
            report.skip(path, msg, "class index out of range")
            continue
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        objects.append(SourceObject(classes[cls], box, where, normalised=True))
    return objects
