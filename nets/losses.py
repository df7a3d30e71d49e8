"""Losses on a model's outputs, from the one loss table
(:data:`tinygrad2.losses.LOSSES`), so ``Objective(model.apply,
"cross_entropy", X, y)`` and ``Objective(model.apply, nets.losses.cross_entropy,
X, y)`` give the same loss, gradient and Hessian (the named form also gets a
closed-form output Hessian for Gauss-Newton products).
"""
from __future__ import annotations

from tinygrad2 import Tensor
from tinygrad2 import losses


def cross_entropy(logits: Tensor, labels) -> Tensor:
    """Mean softmax cross-entropy of logits z (N, C) with integer labels y (N,):

        ℓ = (1/N) Σ_i [log Σ_c exp z_ic - z_i,y_i],

    the engine's fused primitive ``Tensor.cross_entropy`` (one node; its
    derivative (softmax(z) - onehot(y)) / N is itself a primitive, so HVPs
    stay exact)."""
    return losses.LOSSES["cross_entropy"].value(logits, labels)


def mse(outputs: Tensor, targets) -> Tensor:
    """Mean squared error over all m elements (PyTorch's MSELoss):
    ℓ = (1/m) Σ (z - t)²; targets t of the outputs' shape."""
    return losses.LOSSES["mse"].value(outputs, targets)


def get(loss):
    """A loss function ``(outputs, targets) -> scalar Tensor`` by name (a key
    of the loss table: "cross_entropy", "mse"), or a callable as is."""
    return loss if callable(loss) else losses.get(loss).value
