"""minircnn: an educational, from-scratch Fast R-CNN (Girshick, ICCV 2015) in NumPy and Numba."""

import os

# Numba's parallel kernels and OpenBLAS's matrix products take turns on the same cores.
# By default OpenBLAS's idle threads spin for a long while after each product and starve
# the next Numba kernel (measured: a small conv step 7 ms instead of 1.9 ms on 2 cores).
# A short timeout parks them at once. It only takes effect if set before NumPy loads
# OpenBLAS, i.e. when minircnn is imported first (as in `python -m minircnn.*`).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"
