"""Anchors: the reference boxes the RPN scores and regresses (Faster R-CNN section 3.1.1).

At each feature-map cell the RPN predicts for A = len(ratios) * len(scales) anchors. An
anchor of scale s and ratio r is a box of area s^2 with height / width = r, centred on
the cell's centre. The anchors are translation invariant: one set of A base anchors,
shifted by ``feat_stride`` pixels per cell.

Layout (one order everywhere in ``minircnn.rpn``):

- base anchor index ``a = i_ratio * len(scales) + i_scale`` (ratio-major, scale-minor, as
  the paper's reference code enumerates them);
- anchor row ``m = (h * W + w) * A + a`` for cell (h, w) of an H x W map: cell-major,
  anchor-minor. ``grid_anchors`` returns ``[H*W*A, 4]`` in this order;
- a conv output ``[N, A*k, H, W]`` holds anchor a's k values in channels ``a*k .. a*k+k-1``
  (k = 2 objectness scores or 4 deltas). ``map_to_anchor_rows`` views it as
  ``[N, H, W, A, k]`` -> ``[N, H*W*A, k]``, so row m of image n lines up with anchor m.
  (py-faster-rcnn stores the 2 scores as ``[2, A]`` channels, score-major, for Caffe's
  softmax; one ``[A, k]`` layout for both outputs is simpler and is only a relabelling
  of the 1x1 conv's filters.)

Coordinates are not rounded to whole pixels (py-faster-rcnn rounds widths and heights):
every anchor has exactly area s^2 and ratio r, and regression targets do not care.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AnchorConfig:
    """Anchor shapes; comments give the paper's.

    Paper (section 3.1.1, VGG16, stride 16, images with shorter side 600): scales
    (128, 256, 512) x ratios (0.5, 1, 2), k = 9 anchors per cell. The toy set's objects
    are ~13 to ~93 px (square root of the area) in images rescaled to shorter side 192,
    on a stride-4 backbone (``ModelConfig.stride``). With scales an octave apart (16, 32,
    64, 128), 56% of the training objects have no anchor inside the image at IoU >= 0.7
    (the paper's positive threshold): only rule (i) of ``targets.label_anchors`` (each
    object's best anchors) makes them positives. Half-octave scales from 16 to 90.5 px
    leave 13% so: k = 18. Chosen on val (mAP@0.5 0.415 with the octave scales, 0.530 with
    these, at 300 test proposals from 1000 before NMS, with the 0.7 threshold then in use).
    """

    scales: tuple[float, ...] = (16.0, 22.6, 32.0, 45.3, 64.0, 90.5)  # sqrt(area), input px
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width

    def __post_init__(self) -> None:
        for name in ("scales", "ratios"):  # lists (JSON) -> tuples
            values = tuple(float(v) for v in getattr(self, name))
            if not values or min(values) <= 0:
                raise ValueError(f"AnchorConfig: {name} must be positive numbers, got {values}")
            object.__setattr__(self, name, values)

    @property
    def num_anchors(self) -> int:
        """A: anchors per feature-map cell."""
        return len(self.scales) * len(self.ratios)


def base_anchors(config: AnchorConfig, feat_stride: int) -> np.ndarray:
    """The A anchors of cell (0, 0): float32 ``[A, 4]``, ratio-major, scale-minor.

    The cell covers pixels ``0 .. feat_stride - 1``, so its centre (0-based inclusive
    pixel coordinates) is ``c = (feat_stride - 1) / 2``; a box of width w centred there
    spans ``c - (w - 1)/2 .. c + (w - 1)/2`` (width ``x2 - x1 + 1 = w``). Width and height
    solve ``w * h = s^2``, ``h / w = r``: ``w = s / sqrt(r)``, ``h = s * sqrt(r)``.
    """
    if feat_stride < 1:
        raise ValueError(f"base_anchors: feat_stride must be >= 1, got {feat_stride}")
    ratios = np.asarray(config.ratios, dtype=np.float64)[:, None]  # [R, 1]
    scales = np.asarray(config.scales, dtype=np.float64)[None, :]  # [1, S]
    w = (scales / np.sqrt(ratios)).reshape(-1)  # [R*S], ratio-major
    h = (scales * np.sqrt(ratios)).reshape(-1)
    c = (feat_stride - 1) / 2.0
    return np.stack(
        [c - (w - 1) / 2, c - (h - 1) / 2, c + (w - 1) / 2, c + (h - 1) / 2], axis=1
    ).astype(np.float32)


def grid_anchors(height: int, width: int, feat_stride: int, config: AnchorConfig) -> np.ndarray:
    """All anchors of an ``height x width`` feature map: float32 ``[H*W*A, 4]``, row
    ``(h * W + w) * A + a`` (the module's layout), in input-image pixels.

    Cell (h, w) shifts the base anchors by ``(w * feat_stride, h * feat_stride)``.
    Anchors near the border may cross it; ``targets.inside_image`` tells which.
    """
    if height < 1 or width < 1:
        raise ValueError(f"grid_anchors: feature map must be at least 1x1, got {height}x{width}")
    base = base_anchors(config, feat_stride).astype(np.float64)  # [A, 4]
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")  # [H, W] each
    shifts = feat_stride * np.stack([xs, ys, xs, ys], axis=-1).reshape(-1, 1, 4)  # [HW, 1, 4]
    return (shifts + base[None]).reshape(-1, 4).astype(np.float32)  # [HW, A, 4] -> rows


def map_to_anchor_rows(x: np.ndarray, k: int) -> np.ndarray:
    """A conv output ``[N, A*k, H, W]`` -> ``[N, H*W*A, k]`` in anchor-row order.

    Channel ``a*k + j`` at cell (h, w) becomes row ``(h*W + w)*A + a``, column j.
    """
    n, ak, h, w = x.shape
    if ak % k:
        raise ValueError(f"map_to_anchor_rows: {ak} channels are not a multiple of k = {k}")
    a = ak // k
    # [N, A, k, H, W] -> [N, H, W, A, k]
    return x.reshape(n, a, k, h, w).transpose(0, 3, 4, 1, 2).reshape(n, h * w * a, k)


def anchor_rows_to_map(rows: np.ndarray, height: int, width: int) -> np.ndarray:
    """Inverse of ``map_to_anchor_rows``: ``[N, H*W*A, k]`` -> ``[N, A*k, H, W]``, C-contiguous;
    carries gradients from anchor rows back to the conv output."""
    n, m, k = rows.shape
    if m % (height * width):
        raise ValueError(
            f"anchor_rows_to_map: {m} rows do not fill a {height}x{width} map of anchors"
        )
    a = m // (height * width)
    # [N, H, W, A, k] -> [N, A, k, H, W] (the permutation (0, 3, 4, 1, 2) is its own inverse)
    out = rows.reshape(n, height, width, a, k).transpose(0, 3, 4, 1, 2)
    return np.ascontiguousarray(out).reshape(n, a * k, height, width)
