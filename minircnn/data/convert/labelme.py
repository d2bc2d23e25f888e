"""labelme JSON files (one per image): ``shapes`` with ``label``, ``points`` and
``shape_type``; ``imagePath`` relative to the JSON, or the image embedded in ``imageData``.

Only ``rectangle`` shapes are boxes; every other shape type (polygon, circle, line, point,
mask...) is reported as skipped. A rectangle's two points are opposite corners in
continuous pixel coordinates (labelme's own COCO export uses them as such), rounded by the
shared rule (``core``): ``x1 = round(min x)``, ``x2 = round(max x) - 1``, halves up. A shape
is difficult when its ``difficult`` field or ``flags["difficult"]`` is true. Classes are
the labels found, sorted, unless ``--classes`` gives them.
"""

import base64
import binascii
from pathlib import Path

from minircnn.data.convert.coco import load_json
from minircnn.data.convert.core import (
    ConvertError,
    Report,
    SourceImage,
    SourceObject,
    declared_size,
    finite_numbers,
    report_unannotated,
)


def read(src: Path, report: Report) -> tuple[list[str], list[SourceImage]]:
    """Labels found (sorted) and one record per labelme JSON (``src``: one or a folder)."""
    if src.is_dir():
        files, folder = sorted(src.rglob("*.json")), src
        if not files:
            raise ConvertError(f"{src}: no labelme .json files in this folder")
    else:
        files, folder = [src], None
    records = []
    for path in files:
        try:
            doc = load_json(path)
        except ConvertError as err:
            if folder is None:
                raise  # the one file asked for: bad input
            report.skip_image(path, str(err).split(": ", 1)[1], "unreadable JSON")
            continue
        name = path.relative_to(folder) if folder else Path(path.name)
        record = _record(path, doc, str(name.with_suffix("")), report)
        if record is not None:
            records.append(record)
    if folder is not None:
        report_unannotated(folder, {r.image for r in records if r.image}, report)
    labels = sorted({o.name for r in records for o in r.objects})
    return labels, records


def _record(path: Path, doc, name: str, report: Report) -> SourceImage | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        report.skip_image(path, "not a labelme file (no 'shapes' list)", "not a labelme file")
        return None
    image, data = None, None
    if doc.get("imagePath"):
        image = path.parent / doc["imagePath"]
    if (image is None or not image.is_file()) and doc.get("imageData"):
        try:  # the image embedded in the JSON
            data, image = base64.b64decode(doc["imageData"], validate=True), None
        except (binascii.Error, ValueError, TypeError):
            msg = "imageData is not base64"
            report.skip_image(path, msg, "unreadable image", len(doc["shapes"]))
            return None
    if image is None and data is None:
        msg = "no imagePath and no imageData"
        report.skip_image(path, msg, "image file not found", len(doc["shapes"]))
        return None
    try:
        size = declared_size(doc.get("imageWidth"), doc.get("imageHeight"))
    except ValueError as err:
        report.skip_image(
            path, f"imageWidth/imageHeight: {err}", "malformed entry", len(doc["shapes"])
        )
        return None
    record = SourceImage(path, image, name=name, size=size, data=data)
    for k, shape in enumerate(doc["shapes"]):
        label = str(shape.get("label", "")).strip()
        kind = shape.get("shape_type") or "polygon"  # labelme's default when absent
        where = f"shape {k} ({label or 'no label'})"
        if kind != "rectangle":
            report.skip(path, f"{where}: {kind} shape, not a rectangle", f"{kind} shape")
            continue
        try:
            (xa, ya), (xb, yb) = (finite_numbers(p, 2) for p in shape.get("points"))
        except (TypeError, ValueError):
            msg = f"{where}: points {shape.get('points')!r} are not two corners"
            report.skip(path, msg, "malformed rectangle")
            continue
        if not label:
            report.skip(path, f"{where}: no label", "no label")
            continue
        flags = shape.get("flags") or {}
        difficult = bool(shape.get("difficult") or flags.get("difficult"))
        box = (min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))
        record.objects.append(SourceObject(label, box, f"shape {k}", difficult=difficult))
    return record
