"""RoIPool layer: the thin class over ``minircnn.ops.roi_pool`` (Fast R-CNN section 2.1)."""

import numpy as np

from minircnn.layers.base import Layer, check_float_array, check_same_shape, require_forward
from minircnn.ops.roi_pool import roi_pool, roi_pool_backward


class RoIPool(Layer):
    """Pools each RoI ``(batch_index, x1, y1, x2, y2)`` of the input image to ``P x P``.

    ``spatial_scale`` maps image pixels to feature-map cells (1/stride of the backbone).
    forward: features ``[N, C, H, W]``, rois ``[R, 5]`` -> ``[R, C, P, P]``.
    backward: ``[R, C, P, P]`` -> ``[N, C, H, W]`` through the stored argmax.
    """

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float) -> None:
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self._cache = None

    def forward(self, features: np.ndarray, rois: np.ndarray) -> np.ndarray:
        features = check_float_array(features, "RoIPool features", 4)
        out, argmax = roi_pool(features, rois, self.output_size, self.spatial_scale)
        self._cache = (argmax, np.asarray(rois), features.shape)
        return out

    def backward(self, dy: np.ndarray) -> np.ndarray:
        argmax, rois, features_shape = require_forward(self._cache, "RoIPool")
        dy = check_same_shape(dy, argmax.shape, "RoIPool")
        return roi_pool_backward(dy, argmax, rois, features_shape)
