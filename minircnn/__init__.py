"""minircnn: an educational, from-scratch Fast R-CNN (Girshick, ICCV 2015) in NumPy and Numba."""

import os

# Numba's parallel kernels and OpenBLAS's matrix products take turns on the same cores.
# By default OpenBLAS's idle threads spin for a long while after each product and starve
# the next Numba kernel (measured: a small conv step 7 ms instead of 1.9 ms on 2 cores).
# A short timeout parks them at once. It only takes effect if set before NumPy loads
# OpenBLAS, i.e. when minircnn is imported first (as in `python -m minircnn.*`).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# The other way round too: Numba's OpenMP threads spin after each parallel kernel and slow
# the matrix product that follows (measured on 2 cores: a 1x1 conv's forward 8.8 ms with
# spinning, 1.0 ms passive; a training step of Faster R-CNN 157 ms -> 95 ms). Passive
# waiting puts them to sleep at once. Read when Numba first starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
