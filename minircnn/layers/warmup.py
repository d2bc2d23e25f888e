"""Compile the training kernels in a helper process while this one starts training.

Numba compiles each kernel on its first call and keeps the machine code in its on-disk
cache (``cache=True``), so only a first run pays. Here the kernels of a Fast R-CNN
training step take about 14 s to compile, most of the time to that step's end. One process
compiles one kernel at a time (Numba holds a process-wide lock), but a second process can
compile others meanwhile: ``compile_ahead`` starts ``python -m minircnn.layers.warmup``,
which calls each kernel of ``KERNEL_CALLS`` once on tiny arrays, in the *reverse* of the
order training first needs them. The two processes meet in the middle. Each kernel that
this process reaches after the helper has compiled it is loaded from the cache in a few
milliseconds instead of compiled; one that both reach before either has cached it is
compiled twice, to the same code. ``python -m minircnn.bench --sections cold_start``
measured 18.5-23 s to the end of the first step before, 10.8-12 s with the helper. A
helper only starts when the cache is cold.

The kernels are those of pre-training, of a Fast R-CNN step and of a Faster R-CNN step
(IoU for the anchor targets, NMS for the proposals); not evaluation's, nor dropout's
(off by default). The tiny calls must give each kernel the argument types training gives
it (dtypes, dimensions, contiguity, int64 scalars), or the helper compiles a version
nobody loads; tests/test_warmup.py checks that training steps find them all in the cache.
"""

import atexit
import subprocess
import sys
import threading

import numpy as np

from minircnn.data.image import resize_bilinear
from minircnn.layers.conv import col2im, conv2d_forward_direct, unroll
from minircnn.layers.linear import relu_backward, relu_forward
from minircnn.layers.losses import (
    smooth_l1_backward,
    smooth_l1_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from minircnn.layers.pool import maxpool2d_backward, maxpool2x2_forward
from minircnn.layers.roi_pool import roi_pool, roi_pool_backward
from minircnn.ops.boxes import box_iou
from minircnn.ops.nms import nms


def _f(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


def _i(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.int64)


_ROI = np.array([[0, 0, 0, 3, 3]], dtype=np.float32)

# (function, arguments): calling each compiles one kernel (roi_pool two), in the order a
# training step first needs them (pre-training's classifier step needs a subset, in the
# same order): the image resize, the backbone's forward, Faster R-CNN's anchor IoUs and
# proposal NMS, RoI pooling, the losses, then the backward pass
KERNEL_CALLS = (
    (resize_bilinear, (_f(2, 2, 3), (3, 3))),
    (conv2d_forward_direct, (_f(1, 3, 2, 2), _f(1, 3, 3, 3), _f(1), 1)),
    (relu_forward, (_f(1), _f(1))),
    (maxpool2x2_forward, (_f(1, 1, 2, 2), _f(1, 1, 1, 1), _i(1, 1, 1, 1))),
    (unroll, (_f(1, 1, 2, 2), 3, 3, 1, 1)),  # im2col
    (box_iou, (_f(1, 4), _f(1, 4))),
    (nms, (_f(2, 4), _f(2), 0.7, 1)),
    (roi_pool, (_f(1, 1, 4, 4), _ROI, (2, 2), 1.0)),
    (softmax_cross_entropy_forward, (_f(1, 2), _i(1), _f(1), _f(1, 2))),
    (smooth_l1_forward, (_f(1, 4), _f(1, 4), _f(1, 4), 1.0)),
    (softmax_cross_entropy_backward, (_f(1, 2), _i(1), _f(1), 1.0, _f(1, 2))),
    (smooth_l1_backward, (_f(1, 4), _f(1, 4), _f(1, 4), 1.0, 1.0, _f(1, 4))),
    (roi_pool_backward, (_f(1, 1, 2, 2), np.zeros((1, 1, 2, 2), np.int32), _ROI, (1, 1, 4, 4))),
    (maxpool2d_backward, (_f(1, 1, 1, 1), _i(1, 1, 1, 1), _f(1, 1, 2, 2))),
    (relu_backward, (_f(1), _f(1), _f(1))),
    (col2im, (_f(9, 4), 3, 3, 1, 1, 1, _f(1, 1, 2, 2))),
)

_helper: subprocess.Popen | None = None


def compile_ahead() -> subprocess.Popen | None:
    """Start the helper process (see the module doc) if Numba's cache is cold, and return
    it; None if the cache is warm or this process has compiled its kernels already. The
    probe is ``relu_forward``, which training needs early anyway: a cache miss means a
    first run. The helper is stopped when this process exits normally (on a kill, it
    finishes its few seconds of compiling on its own)."""
    global _helper
    if not hasattr(relu_forward, "signatures"):  # NUMBA_DISABLE_JIT: nothing is compiled
        return None
    if _helper is not None or relu_forward.signatures:  # started, or kernels compiled here
        return None
    relu_forward(_f(1), _f(1))
    if not relu_forward.stats.cache_misses:  # loaded from the cache: nothing to compile
        return None
    _helper = subprocess.Popen(
        [sys.executable, "-m", "minircnn.layers.warmup"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(_stop_helper)
    threading.Thread(target=_helper.wait, daemon=True).start()  # reaped when it ends
    return _helper


def _stop_helper() -> None:
    # Numba writes a cache file under a temporary name and renames it, so stopping the
    # helper mid-compilation leaves no broken entry behind
    if _helper is not None and _helper.poll() is None:
        _helper.terminate()


def compile_last_first() -> None:
    """The helper's work: call every function of ``KERNEL_CALLS``, the last one first."""
    for function, args in reversed(KERNEL_CALLS):
        function(*args)


if __name__ == "__main__":
    compile_last_first()
