"""Writing the PASCAL VOC folder layout: annotation XML, image sets, the class list.

Shared by the toy generator (``minircnn.data.toyvoc``) and the converters
(``minircnn.data.convert``), so every set this project writes is laid out the same way and
read back by ``minircnn.data.voc.VOCDataset``:

    VOC<year>/Annotations/<id>.xml          boxes 1-based in the XML (VOC's convention)
    VOC<year>/JPEGImages/<id>.jpg
    VOC<year>/ImageSets/Main/<split>.txt    image ids, one a line
    VOC<year>/ImageSets/Main/<class>_<split>.txt   "<id>  1" present, " 0" only difficult, "-1"
    VOC<year>/classes.txt                   class names, one a line (label k+1 is line k)
"""

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LAYOUT = ("Annotations", "JPEGImages", "ImageSets/Main")


@dataclass(frozen=True)
class VOCObject:
    """One annotated object: class name, integer 0-based inclusive ``(x1, y1, x2, y2)``."""

    name: str
    box: tuple[int, int, int, int]
    truncated: bool = False
    difficult: bool = False


def make_layout(voc_root: str | Path) -> Path:
    """Create ``Annotations``, ``JPEGImages`` and ``ImageSets/Main`` under ``voc_root``."""
    voc_root = Path(voc_root)
    for sub in LAYOUT:
        (voc_root / sub).mkdir(parents=True, exist_ok=True)
    return voc_root


def write_classes(voc_root: str | Path, classes: Sequence[str]) -> Path:
    """``classes.txt``, where ``VOCDataset`` looks for a set's class names."""
    path = Path(voc_root) / "classes.txt"
    path.write_text("".join(f"{name}\n" for name in classes))
    return path


def write_annotation(
    path: str | Path,
    filename: str,
    width: int,
    height: int,
    objects: Iterable[VOCObject],
    depth: int = 3,
    folder: str = "VOC2007",
    database: str = "minircnn",
) -> None:
    """One ``Annotations/<id>.xml``: the image's file name and size, then each object with
    its box written 1-based (``xmin = x1 + 1``), as the PASCAL devkit does."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = folder
    ET.SubElement(ann, "filename").text = filename
    source = ET.SubElement(ann, "source")
    ET.SubElement(source, "database").text = database
    size = ET.SubElement(ann, "size")
    for tag, value in zip(("width", "height", "depth"), (width, height, depth), strict=True):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(ann, "segmented").text = "0"
    for o in objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = o.name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(o.truncated))
        ET.SubElement(obj, "difficult").text = str(int(o.difficult))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), o.box, strict=True):
            ET.SubElement(bndbox, tag).text = str(int(value) + 1)  # VOC XML is 1-based
    ET.indent(ann)
    ET.ElementTree(ann).write(path, encoding="utf-8")


def presence(objects: Iterable[VOCObject], name: str) -> int:
    """VOC's per-class image-set flag: 1 present, 0 only difficult, -1 absent."""
    flags = [o.difficult for o in objects if o.name == name]
    if not flags:
        return -1
    return 0 if all(flags) else 1


def write_image_sets(
    voc_root: str | Path,
    split_ids: Mapping[str, Sequence[str]],
    classes: Sequence[str],
    objects_by_id: Mapping[str, Sequence[VOCObject]],
) -> None:
    """``ImageSets/Main/<split>.txt`` and ``<class>_<split>.txt`` for every split given
    (``split_ids`` maps a split name to its image ids, in order)."""
    main = Path(voc_root) / "ImageSets" / "Main"
    for split, ids in split_ids.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for name in classes:
            lines = [f"{i} {presence(objects_by_id[i], name):2d}\n" for i in ids]
            (main / f"{name}_{split}.txt").write_text("".join(lines))
