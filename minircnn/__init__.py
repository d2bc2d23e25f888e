"""minircnn: an educational, from-scratch Fast R-CNN (Girshick, ICCV 2015) in NumPy and Numba."""

__version__ = "0.1.0"
