"""`python -m minircnn.proposals`: cache a split's selective-search boxes, measure recall.

python -m minircnn.proposals --root data/toyvoc --split trainval --jobs 2
python -m minircnn.proposals --recall --root data/toyvoc --split test
python -m minircnn.proposals --root VOCdevkit --split trainval --scheduler tcp://HOST:8786
"""

import json
from pathlib import Path

import numpy as np

from minircnn import cli
from minircnn.data.voc import VOCDataset
from minircnn.proposals.cache import ProposalConfig, cache_path, load_or_compute
from minircnn.proposals.recall import BUDGETS, plot_recall, recall_table


@cli.command
def main(argv: list[str] | None = None) -> int:
    """Compute (or load) the split's proposals; with --recall, measure and plot recall."""
    parser = cli.ArgumentParser(prog="python -m minircnn.proposals", description=__doc__)
    parser.add_argument("--root", default="data/toyvoc", help="VOCdevkit folder")
    parser.add_argument("--year", default="2007")
    parser.add_argument("--split", default="trainval")
    parser.add_argument(
        "--jobs", type=cli.jobs, default=-1, help="parallel workers (-1: all cores)"
    )
    parser.add_argument(
        "--scheduler",
        metavar="local|tcp://HOST:8786",
        help="run on Dask: 'local' starts a LocalCluster of --jobs workers, an address "
        "connects to a running `dask scheduler` (needs minircnn[dask])",
    )
    parser.add_argument("--mode", default="fast", choices=["fast", "single"])
    parser.add_argument("--max-proposals", type=cli.positive_int, default=2000)
    parser.add_argument("--cache-dir", default="data/proposals")
    parser.add_argument("--recall", action="store_true", help="print and plot recall")
    parser.add_argument("--plot", default="runs/proposals_recall.png")
    args = parser.parse_args(argv)
    dataset = VOCDataset(args.root, args.year, args.split, use_difficult=True)
    config = ProposalConfig(mode=args.mode, max_proposals=args.max_proposals)
    proposals = load_or_compute(dataset, config, args.cache_dir, args.jobs, args.scheduler)
    counts = [len(p) for p in proposals]
    print(
        f"{len(proposals)} images, {np.mean(counts):.0f} proposals per image "
        f"(min {min(counts)}, max {max(counts)}); cache {cache_path(dataset, args.cache_dir)}"
    )
    if args.recall:
        table = recall_table(dataset, proposals)
        print("recall  " + "  ".join(f"{n:>6}" for n in BUDGETS))
        for t, row in table.items():
            print(f"IoU {t}  " + "  ".join(f"{row[n]:6.3f}" for n in BUDGETS))
        print(f"wrote {plot_recall(dataset, proposals, args.plot)}")
        out = Path(args.plot).with_suffix(".json")
        out.write_text(json.dumps({str(t): row for t, row in table.items()}, indent=2))
    return 0


if __name__ == "__main__":
    cli.run(main)
