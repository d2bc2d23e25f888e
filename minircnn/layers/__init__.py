"""Hand-written layers with manual backprop. Each module: Numba kernels + a thin class."""

from minircnn.layers.base import Layer
from minircnn.layers.conv import Conv2d
from minircnn.layers.linear import Dropout, Linear, ReLU
from minircnn.layers.losses import SmoothL1Loss, SoftmaxCrossEntropy
from minircnn.layers.pool import MaxPool2d
from minircnn.layers.roi_pool import RoIPool

__all__ = [
    "Conv2d",
    "Dropout",
    "Layer",
    "Linear",
    "MaxPool2d",
    "ReLU",
    "RoIPool",
    "SmoothL1Loss",
    "SoftmaxCrossEntropy",
]
