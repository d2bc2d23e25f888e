"""Convert COCO, YOLO, labelme or a folder of VOC XMLs into a VOCdevkit that
``VOCDataset`` reads (``python -m minircnn.data.convert``, see ``__main__``).

    from minircnn.data.convert import convert_source
    summary = convert_source("coco", "instances.json", "data/mine", ratios=(0.5, 0.25, 0.25))

One module per format reads it into ``core.SourceImage`` records with continuous-corner
boxes; ``core`` rounds them all with one rule (``x1 = round(left)``,
``x2 = round(right) - 1``, halves up), validates them with ``voc.check_box`` (what
``--check`` applies), writes JPEGs and XMLs through ``minircnn.data.vocwriter`` and
reports everything it skipped or changed, file by file.
"""

import shutil
from collections.abc import Sequence
from pathlib import Path

from minircnn.data.convert import coco, labelme, vocfolder, yolo
from minircnn.data.convert.core import (
    ConvertError,
    Report,
    Summary,
    convert,
    usable_class_name,
)

FORMATS = ("coco", "yolo", "labelme", "voc-folder")

__all__ = ["FORMATS", "ConvertError", "Summary", "convert_source"]


def convert_source(
    fmt: str,
    src: str | Path,
    out: str | Path,
    ratios: Sequence[float] = (0.5, 0.25, 0.25),
    seed: int = 0,
    classes: Sequence[str] | None = None,
    images_dir: str | Path | None = None,
    names_file: str | Path | None = None,
    year: str = "2007",
    overwrite: bool = False,
) -> Summary:
    """Read ``src`` in format ``fmt`` (one of FORMATS) and write ``<out>/VOC<year>``.

    ``ratios``: train, val, test fractions of the images (shuffled with ``seed``);
    ``classes``: keep only these, in this order (default: all of the source's);
    ``images_dir``: COCO's image folder (default: the JSON's); ``names_file``: YOLO's
    class names. Raises ConvertError, message starting with the offending path, when
    nothing can be converted (missing or unreadable SRC, an existing output...).
    """
    src, out = Path(src), Path(out)
    voc_root = out / f"VOC{year}"
    if fmt not in FORMATS:
        raise ConvertError(f"--from {fmt}: unknown format (one of {', '.join(FORMATS)})")
    if not src.exists():
        raise ConvertError(f"{src}: not found")
    if _inside(src, voc_root) or (src.is_dir() and _inside(voc_root, src)):
        raise ConvertError(f"{voc_root}: the output must not be inside SRC, nor SRC inside it")
    replace = voc_root.exists() and any(voc_root.iterdir())
    if replace and not overwrite:
        raise ConvertError(f"{voc_root}: already exists (--overwrite replaces it)")
    report = Report()
    if fmt == "coco":
        found, records = coco.read(src, report, Path(images_dir) if images_dir else None)
    elif fmt == "yolo":
        found, records = yolo.read(src, report, Path(names_file) if names_file else None)
    elif fmt == "labelme":
        found, records = labelme.read(src, report)
    else:
        found, records = vocfolder.read(src, report)
    if not records:
        raise ConvertError(f"{src}: no images to convert")
    if classes:
        unknown = [c for c in classes if c not in found]
        if unknown:
            raise ConvertError(f"--classes: {unknown} not among {src}'s classes {found}")
        found = list(classes)
    for name in [c for c in found if not usable_class_name(c)]:
        report.lines.append(f"skipped  {src}: class {name!r} cannot name a file; its objects too")
    kept = [c for c in found if usable_class_name(c)]
    if replace:  # only now that the source has been read: a bad source keeps the old set
        shutil.rmtree(voc_root)
    return convert(
        records, kept, out, report, ratios, seed, year, database=f"minircnn convert ({fmt})"
    )


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents
