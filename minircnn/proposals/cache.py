"""Per-split proposal caches: compute once (in parallel), load for training and testing.

A cache is one ``.npz`` per split holding every image's boxes (0-based inclusive
``(x1, y1, x2, y2)`` float32, concatenated, with offsets), the image ids, a fingerprint of
the image files and the selective-search parameters. A cache whose images or parameters
differ from what is asked is stale and is recomputed.
"""

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from tqdm import tqdm

from minircnn.data.voc import VOCDataset, load_image
from minircnn.proposals.selective_search import selective_search

CACHE_VERSION = 1


@dataclass(frozen=True)
class ProposalConfig:
    """Selective-search settings (Fast R-CNN used the "fast" mode, ~2000 boxes per image)."""

    mode: str = "fast"
    max_proposals: int = 2000
    min_size: int = 8
    seed: int = 0


def cache_path(dataset: VOCDataset, cache_dir: str | Path = "data/proposals") -> Path:
    """``<cache_dir>/<devkit folder>_<VOC year folder>_<split>.npz``."""
    devkit = dataset.root.parent.resolve().name
    return Path(cache_dir) / f"{devkit}_{dataset.root.name}_{dataset.split}.npz"


def load_or_compute(
    dataset: VOCDataset,
    config: ProposalConfig = ProposalConfig(),
    cache_dir: str | Path = "data/proposals",
    jobs: int = -1,
    backend: str | None = None,
    progress: bool = True,
) -> list[np.ndarray]:
    """Proposals (float32 ``[P_i, 4]``) for every image of ``dataset``, in its order.

    Loads the split's cache when it matches the images and ``config``; otherwise runs
    selective search over all images with joblib (``jobs`` workers, -1 = all cores;
    ``backend`` e.g. "dask" for a cluster) and writes the cache atomically.
    """
    path = cache_path(dataset, cache_dir)
    ids = [item.image_id for item in dataset]
    fingerprint = _fingerprint(item.path for item in dataset)
    params = json.dumps(asdict(config), sort_keys=True)
    cached = _read(path, ids, fingerprint, params)
    if cached is not None:
        return cached
    tasks = (delayed(_one_image)(item.path, config) for item in dataset)
    with Parallel(n_jobs=jobs, backend=backend, return_as="generator") as parallel:
        proposals = list(
            tqdm(
                parallel(tasks),
                total=len(dataset),
                desc=f"selective search ({dataset.split})",
                disable=not progress,
            )
        )
    _write(path, ids, fingerprint, params, proposals)
    return proposals


def _one_image(path, config):
    c = config
    return selective_search(load_image(path), c.mode, c.max_proposals, c.min_size, c.seed)


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
