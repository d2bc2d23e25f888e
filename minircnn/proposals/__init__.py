"""Region proposals: selective search (``minircnn.proposals.selective_search``, Uijlings et
al. 2013) and per-split caches (``minircnn.proposals.cache``)."""
