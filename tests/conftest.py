"""Import minircnn before NumPy so its OpenBLAS setting applies (see minircnn/__init__.py)."""

import minircnn  # noqa: F401
