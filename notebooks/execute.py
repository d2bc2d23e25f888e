"""Execute the notebooks in place, in order, with full settings: the outputs committed
with them come from this (`make notebooks`). CI runs them in fast mode instead
(`MINIRCNN_FAST=1 pytest --nbmake notebooks`), without writing outputs."""

import sys
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).parent


def main(names: list[str]) -> None:
    paths = [HERE / n for n in names] if names else sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        t0 = time.perf_counter()
        notebook = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(notebook, timeout=1200, kernel_name="python3")
        client.execute(cwd=str(HERE.parent))
        nbformat.write(notebook, path)
        print(f"{path.name}: executed in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
