"""`python -m minircnn.bench`: speed of minircnn's kernels, beside PyTorch when installed.

Each side is timed in a block of consecutive calls (after warm-up) and its best call is
kept; then the other side runs its block. Alternating call by call would wake and park
thread pools (OpenBLAS, Numba, torch) on every switch and skew the ratio. Torch, when
installed (``pip install -e .[bench]``), gets the same thread count as we use.

Figures are printed as tables and written to ``runs/bench/latest.json``.
"""

import json
import os
import platform
from pathlib import Path

import numba

from minircnn import cli
from minircnn.bench import kernels, pipeline, vs_torch  # noqa: F401  (they register sections)
from minircnn.bench.harness import SECTIONS
from minircnn.timing import sgemm_gflops


@cli.command
def main(argv: list[str] | None = None) -> dict:
    """Time the chosen sections, print their tables, write the JSON; returns the results."""
    parser = cli.ArgumentParser(prog="python -m minircnn.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats")
    parser.add_argument(
        "--sections",
        type=cli.choice_list(list(SECTIONS)),
        default=list(SECTIONS),
        help=f"comma-separated subset of: {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--out", default="runs/bench/latest.json", help="JSON output path")
    args = parser.parse_args(argv)
    names = args.sections
    threads = numba.get_num_threads()
    ceiling = sgemm_gflops(1024 if args.quick else 2048)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"numba threads {threads}; numpy SGEMM ceiling {ceiling:.0f} GFLOP/s"
    )
    results = {
        "quick": args.quick,
        "threads": threads,
        "numpy_sgemm_gflops": ceiling,
        "sections": {name: SECTIONS[name](args.quick, threads) for name in names},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    cli.run(main)
