"""The layer protocol shared by every layer, and the input checks they all use.

A layer holds ``params`` and ``grads`` (dicts of arrays with the same keys and shapes),
``forward(x)`` keeps what ``backward`` needs, and ``backward(dy)`` *overwrites* ``grads``
and returns the gradient with respect to ``x``. No layer writes into its input or into
the upstream gradient it is given.
"""

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)


class Layer:
    """Base class: parameter dicts and the train/eval switch (Dropout and RoIPool care)."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.training = True

    def train(self) -> "Layer":
        self.training = True
        return self

    def eval(self) -> "Layer":
        self.training = False
        return self


def check_float_array(x: np.ndarray, name: str, ndim: int | None, dtype=None) -> np.ndarray:
    """Validate a floating input and return it C-contiguous (a copy only if needed).

    ``ndim=None`` accepts any number of dimensions.

    Raises ValueError naming ``name``, what was expected and what was given.
    """
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {x.shape}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)}, got {x.dtype}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected float32 or float64, got {x.dtype}")
    return np.ascontiguousarray(x)


def check_same_shape(dy: np.ndarray, shape: tuple, name: str) -> np.ndarray:
    """Check an upstream gradient against the shape forward produced."""
    if not isinstance(dy, np.ndarray) or dy.shape != tuple(shape):
        got = dy.shape if isinstance(dy, np.ndarray) else type(dy).__name__
        raise ValueError(f"{name}: expected upstream gradient of shape {tuple(shape)}, got {got}")
    return np.ascontiguousarray(dy)


def require_forward(cache, name: str):
    if cache is None:
        raise RuntimeError(f"{name}.backward called before forward")
    return cache
