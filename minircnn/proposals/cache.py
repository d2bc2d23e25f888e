"""Per-split proposal caches: compute once (in parallel), load for training and testing.

A cache is one ``.npz`` per split holding every image's boxes (0-based inclusive
``(x1, y1, x2, y2)`` float32, concatenated, with offsets), the image ids, a fingerprint of
the image files and the selective-search parameters. A cache whose images or parameters
differ from what is asked is stale and is recomputed.

Selective search runs on this machine's cores through joblib, or on a Dask cluster
(``scheduler="local"`` starts a ``distributed.LocalCluster``, ``"tcp://host:8786"``
connects to a running ``dask scheduler``): the client reads each image's bytes and ships
them, workers decode and search, so workers need minircnn installed but no shared
filesystem; the cache is written once, by the client.
"""

import contextlib
import hashlib
import io
import itertools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from minircnn.cli import InputError
from minircnn.data.voc import VOCDataset, VOCFormatError, load_image
from minircnn.progress import ProgressBar
from minircnn.proposals.selective_search import selective_search

CACHE_VERSION = 1
DASK_MISSING = "--scheduler needs dask.distributed: pip install 'minircnn[dask]'"


class SchedulerError(InputError, RuntimeError):
    """A Dask scheduler cannot be used (dask missing, or no scheduler at the address).
    A RuntimeError as before; an InputError because ``--scheduler`` names it."""


@dataclass(frozen=True)
class ProposalConfig:
    """Selective-search settings (Fast R-CNN used the "fast" mode, ~2000 boxes per image)."""

    mode: str = "fast"
    max_proposals: int = 2000
    min_size: int = 8
    seed: int = 0

    def search(self, image: np.ndarray) -> np.ndarray:
        """Selective search with these settings on ``image`` (uint8 RGB [H, W, 3]) ->
        float32 boxes [P, 4], 0-based inclusive."""
        return selective_search(image, self.mode, self.max_proposals, self.min_size, self.seed)


def cache_path(dataset: VOCDataset, cache_dir: str | Path = "data/proposals") -> Path:
    """``<cache_dir>/<devkit folder>_<VOC year folder>_<split>.npz``."""
    devkit = dataset.root.parent.resolve().name
    return Path(cache_dir) / f"{devkit}_{dataset.root.name}_{dataset.split}.npz"


def load_or_compute(
    dataset: VOCDataset,
    config: ProposalConfig = ProposalConfig(),
    cache_dir: str | Path = "data/proposals",
    jobs: int = -1,
    scheduler: str | None = None,
    progress: bool = True,
) -> list[np.ndarray]:
    """Proposals (float32 ``[P_i, 4]``) for every image of ``dataset``, in its order.

    Loads the split's cache when it matches the images and ``config``; otherwise runs
    selective search over all images and writes the cache atomically: with joblib on
    ``jobs`` local processes (-1 = all cores) when ``scheduler`` is None, else on Dask
    (``"local"``: a LocalCluster of ``jobs`` single-threaded worker processes;
    ``"tcp://host:port"``: a running scheduler's workers; SchedulerError if unusable).
    """
    path = cache_path(dataset, cache_dir)
    ids = [item.image_id for item in dataset]
    fingerprint = _fingerprint(item.path for item in dataset)
    params = json.dumps(asdict(config), sort_keys=True)
    cached = _read(path, ids, fingerprint, params)
    if cached is not None:
        return cached
    # absolute paths: joblib reuses its worker processes, whose working folder may differ
    desc, paths = f"selective search ({dataset.split})", [item.path.resolve() for item in dataset]
    if scheduler is None:
        tasks = (delayed(_one_image)(p, config) for p in paths)
        with Parallel(n_jobs=jobs, return_as="generator") as parallel:
            proposals = list(
                ProgressBar(parallel(tasks), total=len(paths), desc=desc, enabled=progress)
            )
    else:
        with (
            _dask_client(scheduler, jobs) as client,  # first: a bad --scheduler fails bar-less
            ProgressBar(total=len(paths), desc=desc, enabled=progress) as bar,
        ):
            proposals = _compute_on_dask(client, paths, config, bar)
    _write(path, ids, fingerprint, params, proposals)
    return proposals


def _one_image(path, config):
    return config.search(load_image(path))


def _one_encoded_image(name: str, data: bytes, config: ProposalConfig) -> np.ndarray:
    """On a Dask worker: decode the image file's bytes (``name`` for messages), search."""
    try:
        image = load_image(io.BytesIO(data))
    except VOCFormatError as err:
        raise VOCFormatError(f"{name}: {str(err).split(': ', 1)[-1]}") from None
    return config.search(image)


@contextlib.contextmanager
def _dask_client(scheduler: str, jobs: int):
    """A ``distributed.Client`` for ``scheduler`` ("local" or an address), closed after."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as err:
        raise SchedulerError(DASK_MISSING) from err
    with contextlib.ExitStack() as stack:
        if scheduler == "local":
            n = jobs if jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + jobs)  # joblib's -1
            # one thread per worker process: selective search holds the GIL; no dashboard,
            # so runs beside each other do not fight over its port
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=None)
            address = stack.enter_context(cluster)
        else:
            address = scheduler
        try:
            client = stack.enter_context(Client(address, timeout="10s"))
        except (OSError, TimeoutError) as err:
            raise SchedulerError(f"{scheduler}: cannot reach the Dask scheduler ({err})") from None
        yield client


def _compute_on_dask(client, paths: list[Path], config: ProposalConfig, bar) -> list[np.ndarray]:
    """Selective search of every image on the cluster, results in ``paths`` order.

    The client reads and ships each image file's bytes (workers need no shared
    filesystem), keeping only a window of a few images per worker thread in flight so a
    large split never sits in memory at once."""
    from dask.distributed import as_completed

    window = max(8, 4 * sum(client.nthreads().values()))
    todo = iter(enumerate(paths))
    index = {}

    def submit(i, path):
        future = client.submit(
            _one_encoded_image, str(path), Path(path).read_bytes(), config, pure=False
        )
        index[future.key] = i
        return future

    results: list[np.ndarray | None] = [None] * len(paths)
    pending = as_completed([submit(i, p) for i, p in itertools.islice(todo, window)])
    for future in pending:
        results[index.pop(future.key)] = future.result()  # re-raises a worker's error
        future.release()
        bar.update()
        following = next(todo, None)
        if following is not None:
            pending.add(submit(*following))
    return results


def _fingerprint(paths) -> str:
    """SHA-1 over the image files' names and bytes: any changed image invalidates a cache."""
    h = hashlib.sha1()
    for p in paths:
        h.update(str(Path(p).name).encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def _read(path, ids, fingerprint, params):
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if (
                int(z["version"]) != CACHE_VERSION
                or str(z["fingerprint"]) != fingerprint
                or str(z["params"]) != params
                or z["image_ids"].tolist() != ids
            ):
                return None
            boxes, offsets = z["boxes"], z["offsets"]
    except (OSError, KeyError, ValueError):
        return None  # unreadable or foreign file: recompute
    return [boxes[offsets[i] : offsets[i + 1]] for i in range(len(ids))]


def _write(path, ids, fingerprint, params, proposals):
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in proposals])]).astype(np.int64)
    boxes = np.concatenate(proposals) if proposals else np.zeros((0, 4), np.float32)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez(
        tmp,
        version=CACHE_VERSION,
        fingerprint=fingerprint,
        params=params,
        image_ids=np.array(ids),
        boxes=boxes.astype(np.float32),
        offsets=offsets,
    )
    tmp.replace(path)  # atomic: a reader never sees half a cache
