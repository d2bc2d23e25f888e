"""A folder of images and PASCAL VOC XMLs side by side, as labelImg writes them (CVAT's
"PASCAL VOC" export with ``Annotations/`` and ``JPEGImages/`` folders works too).

An XML's image is ``<filename>`` beside it (or in a sibling ``JPEGImages/``), else an
image with the XML's stem. VOC boxes are 1-based and inclusive: pixel columns
``xmin..xmax`` are the continuous ``xmin - 1 .. xmax``, so by the shared rounding rule
(``core``) ``x1 = round(xmin - 1)``, ``x2 = round(xmax) - 1``, halves up: integer
coordinates give VOCDataset's ``xmin - 1``, ``xmax - 1`` exactly (labelImg and CVAT may
write fractions). ``difficult`` and ``truncated`` are kept. Classes are the names found,
sorted, unless ``--classes`` gives them.
"""

import xml.etree.ElementTree as ET
from pathlib import Path

from minircnn.data.convert.core import (
    IMAGE_SUFFIXES,
    ConvertError,
    Report,
    SourceImage,
    SourceObject,
    finite_numbers,
    report_unannotated,
)


def read(src: Path, report: Report) -> tuple[list[str], list[SourceImage]]:
    """Names found (sorted) and one record per XML under ``src``."""
    if not src.is_dir():
        raise ConvertError(f"{src}: not a folder (voc-folder: a folder of images and XMLs)")
    files = sorted(src.rglob("*.xml"))
    if not files:
        raise ConvertError(f"{src}: no .xml annotation files in this folder")
    records, accounted = [], set()  # accounted: images already reported through their XML
    for path in files:
        record = _record(path, str(path.relative_to(src).with_suffix("")), report)
        if record is not None:
            records.append(record)
            accounted.add(record.image)
        elif (beside := _find_image(path, "")) is not None:
            accounted.add(beside)  # its XML was skipped with the reason: not "unannotated"
    report_unannotated(src, accounted, report)
    names = sorted({o.name for r in records for o in r.objects})
    return names, records


def _record(path: Path, name: str, report: Report) -> SourceImage | None:
    try:
        ann = ET.parse(path).getroot()
    except ET.ParseError as err:
        report.skip_image(path, f"malformed XML ({err})", "malformed XML")
        return None
    if ann.tag != "annotation":
        report.skip_image(path, f"not a VOC annotation (root <{ann.tag}>)", "not a VOC XML")
        return None
    objects = ann.findall("object")
    image = _find_image(path, (ann.findtext("filename") or "").strip())
    if image is None:
        msg = f"image {ann.findtext('filename')!r} not found beside it"
        report.skip_image(path, msg, "image file not found", len(objects))
        return None
    try:
        size = tuple(int(float(ann.findtext(f"size/{t}"))) for t in ("width", "height"))
    except (TypeError, ValueError):
        size = None  # labelImg may leave it out: the image's own size is used
    record = SourceImage(path, image, name, size=size if size and min(size) > 0 else None)
    for k, obj in enumerate(objects):
        label = (obj.findtext("name") or "").strip()
        where = f"object {k}"
        if not label:
            report.skip(path, f"{where}: no <name>", "no label")
            continue
        try:
            xmin, ymin, xmax, ymax = finite_numbers(
                [obj.findtext(f"bndbox/{t}") for t in ("xmin", "ymin", "xmax", "ymax")], 4
            )
        except ValueError:
            report.skip(path, f"{where} ({label}): missing or non-numeric <bndbox>", "no box")
            continue
        flag = {
            t: (obj.findtext(t) or "0").strip() in ("1", "true") for t in ("difficult", "truncated")
        }
        box = (xmin - 1, ymin - 1, xmax, ymax)  # 1-based inclusive -> continuous corners
        record.objects.append(SourceObject(label, box, where, flag["difficult"], flag["truncated"]))
    return record


def _find_image(xml: Path, filename: str) -> Path | None:
    folders = [xml.parent, xml.parent.parent / "JPEGImages"]
    if filename:
        for folder in folders:
            if (folder / filename).is_file():
                return folder / filename
    for folder in folders:
        for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
            if (folder / (xml.stem + suffix)).is_file():
                return folder / (xml.stem + suffix)
    return None
