"""Graph-based image segmentation (Felzenszwalb & Huttenlocher, IJCV 2004).

Selective search starts from this over-segmentation. Pixels are nodes, 8-connected edges
weigh the colour distance of the (Gaussian-smoothed) neighbours. Edges are visited by
increasing weight; two components merge when the edge is no heavier than either's
*internal difference* (its largest merge so far) plus ``k / size``: small components merge
easily, large ones only across weak edges, so k sets the scale of the segments. A last
pass merges components smaller than ``min_size`` into a neighbour.

Same algorithm and parameter scale as ``skimage.segmentation.felzenszwalb`` (k relative to
0..255 intensities, images in [0, 1]); the union-find loop is a Numba kernel.
"""

import numpy as np
from numba import njit
from scipy import ndimage


def felzenszwalb(image: np.ndarray, k: float, sigma: float = 0.8, min_size: int | None = None):
    """Segment ``image`` (float ``[H, W, C]`` in [0, 1]) -> int64 labels ``[H, W]`` in
    ``0..n-1``. ``min_size`` defaults to k, as the selective-search code does."""
    height, width = image.shape[:2]
    smooth = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0))
    index = np.arange(height * width).reshape(height, width)
    # 8-connectivity: right, down, down-right, up-right neighbours
    pairs = [
        ((slice(None), slice(0, -1)), (slice(None), slice(1, None))),
        ((slice(0, -1), slice(None)), (slice(1, None), slice(None))),
        ((slice(0, -1), slice(0, -1)), (slice(1, None), slice(1, None))),
        ((slice(1, None), slice(0, -1)), (slice(0, -1), slice(1, None))),
    ]
    a = np.concatenate([index[p].ravel() for p, _ in pairs])
    b = np.concatenate([index[q].ravel() for _, q in pairs])
    costs = np.concatenate(
        [np.sqrt(((smooth[p] - smooth[q]) ** 2).sum(axis=-1)).ravel() for p, q in pairs]
    )
    order = np.argsort(costs)  # deterministic for equal input
    min_size = int(k) if min_size is None else min_size
    return _segment(height, width, a[order], b[order], costs[order], k / 255.0, min_size)


@njit(cache=True)
def _find(parent, x):
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        parent[x], x = root, parent[x]
    return root


@njit(cache=True)
def _segment(height, width, a, b, costs, k, min_size):
    n = height * width
    parent = np.arange(n)
    size = np.ones(n, dtype=np.int64)
    internal = np.zeros(n)  # largest edge inside each component's spanning tree
    for e in range(costs.shape[0]):
        ra, rb = _find(parent, a[e]), _find(parent, b[e])
        if ra != rb and costs[e] <= min(internal[ra] + k / size[ra], internal[rb] + k / size[rb]):
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
            internal[ra] = costs[e]  # edges come in increasing order: the new maximum
    for e in range(costs.shape[0]):
        ra, rb = _find(parent, a[e]), _find(parent, b[e])
        if ra != rb and (size[ra] < min_size or size[rb] < min_size):
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
    labels = np.empty(n, dtype=np.int64)
    new_label = -np.ones(n, dtype=np.int64)
    count = 0
    for p in range(n):
        r = _find(parent, p)
        if new_label[r] < 0:
            new_label[r] = count
            count += 1
        labels[p] = new_label[r]
    return labels.reshape(height, width)
