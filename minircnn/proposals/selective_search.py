"""Selective search (Uijlings, van de Sande, Gevers, Smeulders; IJCV 2013), from scratch.

Fast R-CNN takes its RoIs from selective search "fast" mode (~2000 per image). The idea:

1. Over-segment the image (Felzenszwalb & Huttenlocher's graph segmentation, parameter k;
   ``minircnn.proposals.felzenszwalb``).
2. Greedily merge the two most similar *neighbouring* regions until one is left; every
   region ever formed, initial or merged, is a proposal (its bounding box).
3. Similarity (section 3.2) is a sum of four terms in [0, 1]:
   colour   sum_k min(c_i^k, c_j^k) over 25-bin histograms per channel,
   texture  the same over 10-bin histograms of Gaussian derivatives (sigma 1) in 8
            orientations per channel,
   size     1 - (size_i + size_j) / size(image): merge small regions first,
   fill     1 - (size(BB_ij) - size_i - size_j) / size(image): merge regions that fit.
   A merged region's histograms are the size-weighted mean of its parts' (eq. 2), so no
   pixel is read again after the first pass.
4. Diversify (section 3.3): "fast" runs 2 colour spaces (HSV, Lab) x 2 values of k
   (50, 100) x 2 similarity sets (C+T+S+F, T+S+F).
5. Rank (section 3.4): a region at hierarchy position p (1 = the last merge, the whole
   image) gets the value ``p * U(0, 1)``; all strategies' boxes are sorted by value,
   duplicates and tiny boxes dropped, and the first ``max_proposals`` kept.

The per-pixel passes and the merge loop are Numba kernels.
"""

import heapq

import numpy as np
import skimage.color
from numba import njit
from scipy import ndimage

from minircnn.proposals.felzenszwalb import felzenszwalb

COLOUR_BINS = 25
TEXTURE_BINS = 10
ORIENTATIONS = 8
# similarity term weights (colour, texture, size, fill)
SIM_CTSF = (1.0, 1.0, 1.0, 1.0)
SIM_TSF = (0.0, 1.0, 1.0, 1.0)
STRATEGIES = {
    "single": (("hsv", 100, SIM_CTSF),),
    "fast": tuple(
        (space, k, sim)
        for space in ("hsv", "lab")
        for k in (50, 100)
        for sim in (SIM_CTSF, SIM_TSF)
    ),
}


def selective_search(
    image: np.ndarray,
    mode: str = "fast",
    max_proposals: int = 2000,
    min_size: int = 8,
    seed: int = 0,
) -> np.ndarray:
    """Region proposals for one image.

    image: RGB uint8 ``[H, W, 3]`` or grayscale ``[H, W]``. mode: ``"single"`` (HSV, k=100,
    all four similarities) or ``"fast"`` (the paper's Selective Search Fast, 8 strategies).
    Boxes with width or height below ``min_size`` px are dropped. Returns float32
    ``[P, 4]`` boxes ``(x1, y1, x2, y2)``, 0-based inclusive, best-ranked first,
    ``P <= max_proposals``; deterministic for a given ``seed``.
    """
    rgb = _as_rgb(image)
    if mode not in STRATEGIES:
        raise ValueError(f"selective_search: mode must be one of {list(STRATEGIES)}, got {mode!r}")
    if max_proposals < 1:
        raise ValueError(f"selective_search: max_proposals must be >= 1, got {max_proposals}")
    rng = np.random.default_rng(seed)
    all_boxes, all_values = [], []
    features, regions = {}, {}  # shared by the strategies that differ only in weights
    for space, k, weights in STRATEGIES[mode]:
        if space not in features:
            features[space] = _pixel_features(rgb, space)
        scaled, colour_bins, texture_bins = features[space]
        if (space, k) not in regions:
            regions[space, k] = _region_stats(_felzenszwalb(scaled, k), colour_bins, texture_bins)
        boxes = _merge_all(*regions[space, k], np.array(weights))
        # hierarchy position: 1 for the last region formed (the whole image)
        position = np.arange(len(boxes), 0, -1, dtype=np.float64)
        all_boxes.append(boxes)
        all_values.append(position * rng.random(len(boxes)))
    boxes = np.concatenate(all_boxes)
    order = np.argsort(np.concatenate(all_values), kind="stable")
    boxes = boxes[order]
    _, first = np.unique(boxes, axis=0, return_index=True)  # drop duplicates, keep best rank
    boxes = boxes[np.sort(first)]
    sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1
    return boxes[sizes >= min_size][:max_proposals].astype(np.float32)


def initial_regions(image: np.ndarray, space: str = "hsv", k: int = 100) -> np.ndarray:
    """The Felzenszwalb over-segmentation selective search starts from: int64 ``[H, W]``."""
    scaled, _, _ = _pixel_features(_as_rgb(image), space)
    return _felzenszwalb(scaled, k)


def _felzenszwalb(scaled, k):
    """Graph segmentation with threshold k, sigma 0.8 and minimum size k (the paper's code)."""
    return felzenszwalb(scaled, k, sigma=0.8, min_size=k)


# ---------------------------------------------------------------- per-pixel features
def _as_rgb(image):
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(
            f"selective_search: expected an RGB [H, W, 3] or grayscale [H, W] image, got "
            f"shape {image.shape}"
        )
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"selective_search: image too small ({image.shape[:2]}), need >= 2x2")
    if image.dtype != np.uint8:
        raise ValueError(f"selective_search: expected uint8 pixels, got {image.dtype}")
    return image[..., :3]


def _pixel_features(rgb, space):
    """(image in [0, 1] in the colour space, colour bin [H, W, 3], texture bin [H, W, 3*8])."""
    if space == "hsv":
        scaled = skimage.color.rgb2hsv(rgb)
    elif space == "lab":
        lab = skimage.color.rgb2lab(rgb)
        scaled = (lab + np.array([0.0, 128.0, 128.0])) / np.array([100.0, 255.0, 255.0])
    else:
        raise ValueError(f"unknown colour space {space!r}")
    scaled = np.clip(scaled, 0.0, 1.0)
    colour_bins = np.minimum((scaled * COLOUR_BINS).astype(np.int64), COLOUR_BINS - 1)
    texture_bins = np.empty(rgb.shape[:2] + (3 * ORIENTATIONS,), dtype=np.int64)
    angles = np.arange(ORIENTATIONS) * 2 * np.pi / ORIENTATIONS
    for c in range(3):
        gy = ndimage.gaussian_filter(scaled[..., c], 1.0, order=(1, 0))
        gx = ndimage.gaussian_filter(scaled[..., c], 1.0, order=(0, 1))
        for o, theta in enumerate(angles):
            # a derivative steered to angle theta; its negative half is the opposite angle's
            response = np.maximum(np.cos(theta) * gx + np.sin(theta) * gy, 0.0)
            top = response.max()
            scaled_resp = response / top if top > 0 else response
            texture_bins[..., c * ORIENTATIONS + o] = np.minimum(
                (scaled_resp * TEXTURE_BINS).astype(np.int64), TEXTURE_BINS - 1
            )
    return scaled, colour_bins, texture_bins


# ---------------------------------------------------------------- hierarchical grouping
@njit(cache=True)
def _region_stats(labels, colour_bins, texture_bins):
    """Size, box, L1-normalised colour / texture histograms and neighbour matrix per region."""
    height, width = labels.shape
    n = labels.max() + 1
    size = np.zeros(n)
    box = np.empty((n, 4))
    box[:, 0] = width
    box[:, 1] = height
    box[:, 2] = -1
    box[:, 3] = -1
    n_col = colour_bins.shape[2] * COLOUR_BINS
    n_tex = texture_bins.shape[2] * TEXTURE_BINS
    colour = np.zeros((n, n_col))
    texture = np.zeros((n, n_tex))
    adjacent = np.zeros((n, n), dtype=np.bool_)
    for y in range(height):
        for x in range(width):
            r = labels[y, x]
            size[r] += 1
            box[r, 0] = min(box[r, 0], x)
            box[r, 1] = min(box[r, 1], y)
            box[r, 2] = max(box[r, 2], x)
            box[r, 3] = max(box[r, 3], y)
            for c in range(colour_bins.shape[2]):
                colour[r, c * COLOUR_BINS + colour_bins[y, x, c]] += 1
            for c in range(texture_bins.shape[2]):
                texture[r, c * TEXTURE_BINS + texture_bins[y, x, c]] += 1
            if x + 1 < width and labels[y, x + 1] != r:
                adjacent[r, labels[y, x + 1]] = True
                adjacent[labels[y, x + 1], r] = True
            if y + 1 < height and labels[y + 1, x] != r:
                adjacent[r, labels[y + 1, x]] = True
                adjacent[labels[y + 1, x], r] = True
    for r in range(n):
        colour[r] /= colour[r].sum()
        texture[r] /= texture[r].sum()
    return size, box, colour, texture, adjacent


@njit(cache=True)
def _similarity(i, j, size, box, colour, texture, weights, image_size):
    s = 0.0
    if weights[0] > 0:
        s += weights[0] * np.minimum(colour[i], colour[j]).sum()
    if weights[1] > 0:
        s += weights[1] * np.minimum(texture[i], texture[j]).sum()
    s += weights[2] * (1.0 - (size[i] + size[j]) / image_size)
    bw = max(box[i, 2], box[j, 2]) - min(box[i, 0], box[j, 0]) + 1
    bh = max(box[i, 3], box[j, 3]) - min(box[i, 1], box[j, 1]) + 1
    s += weights[3] * (1.0 - (bw * bh - size[i] - size[j]) / image_size)
    return s


@njit(cache=True)
def _merge_all(size0, box0, colour0, texture0, adjacent0, weights):
    """Greedy hierarchical grouping; returns the boxes of all 2n-1 regions, creation order."""
    n = size0.shape[0]
    m = 2 * n - 1
    size = np.zeros(m)
    size[:n] = size0
    box = np.zeros((m, 4))
    box[:n] = box0
    colour = np.zeros((m, colour0.shape[1]))
    colour[:n] = colour0
    texture = np.zeros((m, texture0.shape[1]))
    texture[:n] = texture0
    adjacent = np.zeros((m, m), dtype=np.bool_)
    adjacent[:n, :n] = adjacent0
    alive = np.zeros(m, dtype=np.bool_)
    alive[:n] = True
    image_size = size0.sum()
    heap = [(0.0, 0, 0)]  # typed list of (-similarity, i, j); the seed entry is popped now
    heap.pop()
    for i in range(n):
        for j in range(i + 1, n):
            if adjacent[i, j]:
                heap.append(
                    (-_similarity(i, j, size, box, colour, texture, weights, image_size), i, j)
                )
    heapq.heapify(heap)
    t = n
    while len(heap) > 0 and t < m:
        _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue  # a stale entry: one side has already been merged away
        size[t] = size[i] + size[j]
        box[t, 0] = min(box[i, 0], box[j, 0])
        box[t, 1] = min(box[i, 1], box[j, 1])
        box[t, 2] = max(box[i, 2], box[j, 2])
        box[t, 3] = max(box[i, 3], box[j, 3])
        # eq. 2: the merged histogram is the size-weighted mean of its parts
        colour[t] = (size[i] * colour[i] + size[j] * colour[j]) / size[t]
        texture[t] = (size[i] * texture[i] + size[j] * texture[j]) / size[t]
        alive[i] = False
        alive[j] = False
        for k in range(t):
            if alive[k] and (adjacent[i, k] or adjacent[j, k]):
                adjacent[t, k] = True
                adjacent[k, t] = True
                s = _similarity(t, k, size, box, colour, texture, weights, image_size)
                heapq.heappush(heap, (-s, t, k))
        alive[t] = True
        t += 1
    return box[:t]
