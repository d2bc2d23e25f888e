"""Truncated SVD of the fully connected layers (Fast R-CNN section 3.1).

In detection the FC layers run once per RoI, so with 2000 RoIs they take nearly half of
the forward time. A ``u x v`` weight matrix W is factorised as ``W ~ U_t S_t V_t^T`` keeping
the top t singular values, and the layer becomes two: ``S_t V_t^T`` (t x v, no bias) then
``U_t`` (u x t, with the original bias), with no nonlinearity between. Parameters and
multiply-adds fall from ``uv`` to ``t(u + v)``.
"""

import copy

import numpy as np

from minircnn.layers import Layer, Linear


class LowRankLinear(Layer):
    """``x -> second(first(x))``: the two factors of a truncated-SVD Linear layer."""

    def __init__(self, first: Linear, second: Linear) -> None:
        super().__init__()
        self.first, self.second = first, second
        self.params = {
            "first.weight": first.params["weight"],
            "second.weight": second.params["weight"],
            "bias": second.params["bias"],
        }

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: [B, in] -> [B, out]."""
        return self.second.forward(self.first.forward(x))


def truncated_svd(layer: Linear, rank: int) -> LowRankLinear:
    """Factorise ``layer`` (weight [out, in]) keeping ``rank`` singular values."""
    w = layer.params["weight"].astype(np.float64)
    rank = int(min(rank, *w.shape))
    if rank < 1:
        raise ValueError(f"truncated_svd: rank must be >= 1, got {rank}")
    u, s, vt = np.linalg.svd(w, full_matrices=False)  # w = u @ diag(s) @ vt
    dtype = layer.params["weight"].dtype
    first = Linear(layer.in_features, rank, dtype=dtype)
    first.params["weight"][...] = s[:rank, None] * vt[:rank]  # S_t V_t^T: [t, in]
    first.params["bias"][...] = 0.0
    second = Linear(rank, layer.out_features, dtype=dtype)
    second.params["weight"][...] = u[:, :rank]  # U_t: [out, t]
    second.params["bias"][...] = layer.params["bias"]
    return LowRankLinear(first, second)


def compress_model(model, rank: float):
    """A copy of a FastRCNN (or a FasterRCNN) with fc6 and fc7 replaced by truncated SVDs.

    ``rank >= 1`` keeps that many singular values; ``0 < rank < 1`` keeps that fraction of
    each layer's full rank (e.g. 0.25). For detection only (no backward).
    """
    if rank <= 0:
        raise ValueError(f"compress_model: rank must be > 0, got {rank}")
    model = copy.deepcopy(model)
    head = model.fast.head
    for name in ("fc6", "fc7"):
        layer = getattr(head, name)
        full = min(layer.in_features, layer.out_features)
        t = int(rank) if rank >= 1 else max(1, round(rank * full))
        low = truncated_svd(layer, t)
        head.seq[head.seq.index(layer)] = low
        setattr(head, name, low)
    return model
