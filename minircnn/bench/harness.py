"""What every bench section shares: the section registry, optional torch/torchvision,
result tables and ratio rows, and random RoIs."""

from collections.abc import Callable

import numpy as np

SECTIONS: dict[str, Callable] = {}


def section(name: str):
    """Register a bench section under ``name``."""

    def register(fn):
        SECTIONS[name] = fn
        return fn

    return register


def try_import_torch(threads: int):
    """torch with ``threads`` intra-op threads, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def torchvision_op(name: str):
    """``torchvision.ops.<name>``, or None when torchvision is not installed."""
    try:
        import torchvision.ops
    except ImportError:
        return None
    return getattr(torchvision.ops, name)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """Print rows (dicts) as an aligned text table; missing values show as '-'."""

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n== {title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))


def compare(row: dict, ours: float, theirs: float | None, flops: float | None = None) -> dict:
    """Fill a table row with times (ms), GFLOP/s and the ours/torch time ratio."""
    row["ours_ms"] = ours * 1e3
    if flops:
        row["ours_GFLOPs"] = flops / ours / 1e9
    if theirs is not None:
        row["torch_ms"] = theirs * 1e3
        row["ratio"] = ours / theirs
        if flops:
            row["torch_GFLOPs"] = flops / theirs / 1e9
    return row


def random_rois(rng: np.random.Generator, n: int, n_img: int, height: int, width: int):
    """``n`` RoIs ``[n, 5]`` float32 spread over ``n_img`` images of ``height x width`` px."""
    x1 = rng.uniform(0, width * 0.8, n)
    y1 = rng.uniform(0, height * 0.8, n)
    x2 = np.minimum(x1 + rng.uniform(16, width * 0.6, n), width - 1)
    y2 = np.minimum(y1 + rng.uniform(16, height * 0.6, n), height - 1)
    return np.stack([rng.integers(0, n_img, n), x1, y1, x2, y2], axis=1).astype(np.float32)
