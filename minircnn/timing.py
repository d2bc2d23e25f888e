"""Wall-clock timing of named stages, kept outside the math.

Nothing in the layers or the model imports this module: a stage is timed by wrapping an
object's method from outside (``time_calls``), as the original Fast R-CNN's ``test.py``
times ``im_detect`` around the call. Training and the bench report per-stage times the
same way, and ``sgemm_gflops`` gives the machine's practical arithmetic ceiling.
"""

import functools
import time
import types
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np


class StageTimer:
    """Wall time per named stage, summed over calls: ``totals[name]`` in seconds."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - t0

    def wrap(self, name: str, fn: Callable) -> Callable:
        """``fn`` with every call's time added to stage ``name``."""

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self(name):
                return fn(*args, **kwargs)

        return timed


def time_calls(timer: StageTimer, name: str, obj, *methods: str) -> None:
    """Time ``obj``'s ``methods`` (defined on its class) under stage ``name`` from now on.

    Each becomes a method bound to ``obj`` (an instance attribute shadowing the class's),
    so a deep copy of ``obj`` is bound to the copy and runs the copy's own code.
    """
    for method in methods:
        original = getattr(type(obj), method)

        def timed(self, *args, _original=original, **kwargs):
            with timer(name):
                return _original(self, *args, **kwargs)

        setattr(obj, method, types.MethodType(timed, obj))


def instrument_fast_rcnn(model, timer: StageTimer) -> StageTimer:
    """Time a FastRCNN's stages: ``conv_forward``, ``conv_backward``, ``roi_pool``
    (forward + backward) and ``fc`` (fc6/fc7 and both heads, forward + backward). A
    FasterRCNN's Fast R-CNN part likewise, plus ``rpn`` (its head, forward + backward)."""
    if hasattr(model, "rpn"):  # FasterRCNN: a FastRCNN (``fast``) and an RPN head
        time_calls(timer, "rpn", model.rpn, "forward", "backward")
    model = model.fast
    time_calls(timer, "conv_forward", model.backbone, "forward")
    time_calls(timer, "conv_backward", model.backbone, "backward")
    time_calls(timer, "roi_pool", model.roi_pool, "forward", "backward")
    for layer in (model.head, model.cls_score, model.bbox_pred):
        time_calls(timer, "fc", layer, "forward", "backward")
    return timer


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Best wall time (s) of ``repeats`` consecutive calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """NumPy float32 matrix product GFLOP/s: the practical ceiling for this machine."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / best_time(lambda: a @ b, repeats) / 1e9
