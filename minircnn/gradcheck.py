"""Finite-difference gradient checking.

For a scalar function ``f`` of an array ``x``, the analytic gradient ``a = df/dx`` (from a
layer's backward) is compared with the central difference

    n_i = (f(x + h e_i) - f(x - h e_i)) / (2 h)

on a random subset of entries i. The reported error is the largest relative error

    err_i = |a_i - n_i| / max(|a_i|, |n_i|, floor),   floor = 1e-3 * max_i |a_i|  (>= 1e-12)

The floor stops entries whose true gradient is (nearly) zero from turning rounding noise
into a huge ratio; everywhere else it is the plain relative error. Run it in float64:
float32 rounding alone is ~1e-7 relative, too coarse for a 1e-6 tolerance.
"""

from collections.abc import Callable

import numpy as np


def numerical_gradient(
    f: Callable[[], float], x: np.ndarray, indices: np.ndarray, h: float = 1e-5
) -> np.ndarray:
    """Central differences of ``f()`` with respect to ``x.flat[indices]``.

    ``f`` takes no argument and reads ``x`` (which is perturbed in place and restored).
    Returns float64 ``[len(indices)]``.
    """
    flat = x.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("numerical_gradient: x must be contiguous (perturbed in place)")
    grad = np.empty(len(indices), dtype=np.float64)
    for k, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + h
        f_plus = f()
        flat[i] = old - h
        f_minus = f()
        flat[i] = old
        grad[k] = (f_plus - f_minus) / (2 * h)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max_i |a_i - n_i| / max(|a_i|, |n_i|, 1e-3 * max|a|), as in the module docstring."""
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    floor = max(1e-3 * float(np.abs(analytic).max(initial=0.0)), 1e-12)
    denom = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), floor)
    return float((np.abs(analytic - numeric) / denom).max(initial=0.0))


def gradcheck(
    f: Callable[[], float],
    x: np.ndarray,
    analytic: np.ndarray,
    num_checks: int = 40,
    h: float = 1e-5,
    seed: int = 0,
) -> float:
    """Compare ``analytic`` (same shape as ``x``) with central differences of ``f`` on
    ``num_checks`` random entries of ``x``; returns the relative error defined above."""
    if analytic.shape != x.shape:
        raise ValueError(f"gradcheck: analytic shape {analytic.shape} != x shape {x.shape}")
    rng = np.random.default_rng(seed)
    indices = rng.choice(x.size, size=min(num_checks, x.size), replace=False)
    numeric = numerical_gradient(f, x, indices, h)
    return relative_error(analytic.reshape(-1)[indices], numeric)
