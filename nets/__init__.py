"""nets: layers, losses and models on flat parameter vectors.

A model is a :class:`Module` that describes its parameters and computes its
outputs from a flat θ: ``theta = model.init_theta(seed)``,
``model.apply(theta, X)``, ``model.layout()``, ``model.objective(loss, X, y)``.
See ``nets.module`` for the design (buffers, running statistics, save/load).
"""
from . import losses
from .layers import (
    ACTIVATIONS, GELU, Conv2d, Flatten, Linear, ReLU, Sequential, Softplus, Tanh, WeightNorm, activation,
)
from .models import MLP, VGG, BasicBlock, ResNet18, SmallCNN
from .module import Module
from .normalization import BatchNorm1d, BatchNorm2d
from .pooling import AvgPool2d, GlobalAvgPool, MaxPool2d

__all__ = [
    "Module", "Linear", "Conv2d", "WeightNorm", "Flatten", "ReLU", "Tanh", "Softplus", "GELU",
    "ACTIVATIONS", "activation", "Sequential", "MaxPool2d", "AvgPool2d", "GlobalAvgPool",
    "BatchNorm1d", "BatchNorm2d", "BasicBlock", "MLP", "SmallCNN", "ResNet18", "VGG", "losses",
]
