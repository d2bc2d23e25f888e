"""COCO instances JSON (``instances_*.json``): ``images``, ``annotations``, ``categories``.

A bbox is ``[x, y, w, h]`` in float pixels with ``(x, y)`` the top-left *corner*, so the
continuous box is ``x .. x + w`` and, by the shared rounding rule (``core``),
``x1 = round(x)``, ``x2 = round(x + w) - 1`` (halves up): integer boxes give exactly
``x2 = x + w - 1``. ``iscrowd`` objects become ``difficult`` (ignored by training and by
evaluation, as VOC's difficult ones). Classes are the categories in order of their id.
Images are looked up as ``<images>/<file_name>``, ``images`` being the JSON's folder
unless ``--images`` says otherwise.
"""

import json
from pathlib import Path

from minircnn.data.convert.core import (
    ConvertError,
    Report,
    SourceImage,
    SourceObject,
    declared_size,
    finite_numbers,
)


def load_json(path: Path):
    """The parsed JSON file; ConvertError naming the file if it is unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConvertError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise ConvertError(f"{path}: not UTF-8 text ({err.reason})") from None
    except IsADirectoryError:
        raise ConvertError(f"{path}: a folder, expected a COCO JSON file") from None
    except OSError as err:
        raise ConvertError(f"{path}: cannot read ({err.strerror or err})") from None


def read(
    src: Path, report: Report, images_dir: Path | None = None
) -> tuple[list[str], list[SourceImage]]:
    """Class names (category order) and one record per entry of ``images``."""
    if src.is_dir():
        raise ConvertError(f"{src}: a folder, expected a COCO instances JSON file")
    coco = load_json(src)
    if not isinstance(coco, dict) or not all(
        isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise ConvertError(
            f"{src}: not a COCO instances file (needs lists 'images', "
            "'annotations' and 'categories')"
        )
    images_dir = Path(images_dir) if images_dir is not None else src.parent
    categories = {}
    for cat in sorted(coco["categories"], key=lambda c: c.get("id", 0)):
        name = str(cat.get("name", "")).strip()
        categories[cat.get("id")] = name
    classes = list(dict.fromkeys(categories.values()))  # two ids with one name: one class
    records: dict[object, SourceImage] = {}
    for k, entry in enumerate(coco["images"]):
        file_name = entry.get("file_name")
        if not file_name or "id" not in entry:
            report.skip_image(src, f"images[{k}]: no 'id' or 'file_name'", "malformed entry")
            continue
        try:
            size = declared_size(entry.get("width"), entry.get("height"))
        except ValueError as err:
            report.skip_image(src, f"images[{k}] ({file_name}): {err}", "malformed entry")
            continue
        records[entry["id"]] = SourceImage(
            annotation=src,
            image=images_dir / file_name,
            name=str(Path(file_name).with_suffix("")),
            size=size,
        )
    for k, ann in enumerate(coco["annotations"]):
        where = f"annotation id {ann.get('id', f'#{k}')}"
        record = records.get(ann.get("image_id"))
        if record is None:
            msg = f"{where}: image_id {ann.get('image_id')!r} is not in 'images'"
            report.skip(src, msg, "image_id not in 'images'")
            continue
        name = categories.get(ann.get("category_id"))
        if name is None:
            msg = f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'"
            report.skip(src, msg, "category_id not in 'categories'")
            continue
        try:
            x, y, w, h = finite_numbers(ann.get("bbox"), 4)
        except ValueError as err:
            report.skip(src, f"{where} ({name}): bbox: {err}", "malformed bbox")
            continue
        crowd = bool(ann.get("iscrowd", 0))
        record.objects.append(SourceObject(name, (x, y, x + w, y + h), where, difficult=crowd))
    return classes, list(records.values())
