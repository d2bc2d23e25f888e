"""Detection operations: box geometry and regression, NMS, RoI pooling (Numba)."""
