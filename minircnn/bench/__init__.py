"""Benchmarks: `python -m minircnn.bench` (see ``__main__``)."""
