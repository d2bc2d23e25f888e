"""`python -m minircnn.data.convert`: your annotations -> a VOCdevkit VOCDataset reads.

    python -m minircnn.data.convert --from coco instances.json --out data/mine
    python -m minircnn.data.convert --from yolo yolo_folder --out data/mine --split 0.7,0.1,0.2
    python -m minircnn.data.convert --from labelme labelme_folder --out data/mine --seed 1
    python -m minircnn.data.convert --from voc-folder labelimg_folder --out data/mine

Writes DIR/VOC2007/{JPEGImages, Annotations, ImageSets/Main, classes.txt}. Every object
or image not converted, or converted changed (a box clipped), is listed with its file and
the reason, then counted by reason; the output is finally checked as ``--check`` does.
Exit status: 0 done, 1 the check of the output found errors, 2 bad input (one line on
stderr: ``error: <what>: <why>``, see ``minircnn.cli``).
"""

import argparse

from minircnn import cli
from minircnn.data.convert import FORMATS, ConvertError, Summary, convert_source
from minircnn.data.convert.core import parse_ratios


def build_parser() -> argparse.ArgumentParser:
    """The command line, checked as it is parsed."""
    p = cli.ArgumentParser(prog="python -m minircnn.data.convert", description=__doc__)
    p.add_argument("--from", dest="fmt", required=True, choices=FORMATS, help="source format")
    p.add_argument("src", metavar="SRC", help="COCO JSON file, or the folder (labelme: or file)")
    p.add_argument("--out", required=True, help="devkit folder to write (VOC<year> inside)")
    p.add_argument(
        "--split", default="0.5,0.25,0.25", help="train,val,test fractions (default 0.5,0.25,0.25)"
    )
    p.add_argument(
        "--seed", type=cli.non_negative_int, default=0, help="shuffle before splitting (default 0)"
    )
    p.add_argument(
        "--classes", type=cli.name_list, help="comma-separated classes to keep, in label order"
    )
    p.add_argument("--images", help="coco: the images folder (default: the JSON's folder)")
    p.add_argument("--names", help="yolo: class names, one a line (default SRC/classes.txt)")
    p.add_argument("--year", default="2007", help="VOC<year> folder name (default 2007)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing VOC<year>")
    return p


def print_summary(summary: Summary, fmt: str, src: str) -> None:
    """Each problem line, then what was written and the counts of what was not, by reason."""
    report = summary.report
    for line in sorted(report.lines, key=lambda line: line.split("  ", 1)[1]):  # by file
        print(line)
    n_images = len(summary.split_ids["train"] + summary.split_ids["val"])
    n_images += len(summary.split_ids["test"])
    n_objects = sum(summary.objects_per_class.values())
    total_objects = n_objects + sum(report.skipped.values())
    total_images = n_images + sum(report.skipped_images.values())
    print(
        f"{fmt} {src} -> {summary.voc_root}: {n_images} of {total_images} images, "
        f"{n_objects} of {total_objects} objects"
    )
    sizes = {s: len(ids) for s, ids in summary.split_ids.items()}
    print(
        f"  split: train {sizes['train']}, val {sizes['val']}, test {sizes['test']} "
        f"(trainval {sizes['trainval']}); {summary.empty_images} image(s) without objects"
    )
    missing = [s for s, n in sizes.items() if n == 0]
    for split in missing:
        need = " (--check and evaluate need one)" if split in ("test", "trainval") else ""
        print(f"  no {split} images: ImageSets/Main/{split}.txt not written{need}")
    per_class = ", ".join(f"{c} {n}" for c, n in summary.objects_per_class.most_common())
    print(f"  objects per class: {per_class or 'none'}")
    for title, counts in (
        ("skipped objects", report.skipped),
        ("skipped images", report.skipped_images),
        ("changed objects", report.changed),
    ):
        if counts:
            print(f"  {title}: {sum(counts.values())}")
            for reason, n in counts.most_common():
                print(f"    {n:6d}  {reason}")
    for p in summary.check:
        print(("  check ERROR   " if p.fatal else "  check warning ") + str(p))
    n_fatal = sum(p.fatal for p in summary.check)
    besides = f" besides the missing {', '.join(missing)} split(s)" if missing else ""
    print(
        f"  check: {n_fatal} error(s), {len(summary.check) - n_fatal} warning(s){besides} "
        f"(python -m minircnn.data.voc --check {summary.voc_root.parent})"
    )


@cli.command
def main(argv: list[str] | None = None) -> int:
    """Convert, print the summary; exit status as the module docstring says."""
    args = build_parser().parse_args(argv)
    summary = convert_source(
        args.fmt,
        args.src,
        args.out,
        ratios=parse_ratios(args.split),
        seed=args.seed,
        classes=args.classes,
        images_dir=args.images,
        names_file=args.names,
        year=args.year,
        overwrite=args.overwrite,
    )
    print_summary(summary, args.fmt, args.src)
    if not any(summary.split_ids.values()):
        raise ConvertError(f"{args.src}: no image could be converted")
    return 1 if any(p.fatal for p in summary.check) else 0


if __name__ == "__main__":
    cli.run(main)
