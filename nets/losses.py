"""Losses on a model's outputs: the same formulas as ``tinygrad2.Objective``'s
named losses, so ``Objective(model.apply, "cross_entropy", X, y)`` and
``Objective(model.apply, nets.losses.cross_entropy, X, y)`` give the same
loss, gradient and Hessian (the named form also gets a closed-form output
Hessian for Gauss-Newton products).
"""
from __future__ import annotations

from tinygrad2 import Tensor
from tinygrad2 import backend as B


def cross_entropy(logits: Tensor, labels) -> Tensor:
    """Mean softmax cross-entropy of logits z (N, C) with integer labels y (N,):

        ℓ = (1/N) Σ_i [log Σ_c exp z_ic - z_i,y_i],

    the engine's fused primitive ``Tensor.cross_entropy`` (one node; its
    derivative (softmax(z) - onehot(y)) / N is itself a primitive, so HVPs
    stay exact)."""
    return logits.cross_entropy(labels.data if isinstance(labels, Tensor) else labels)


def mse(outputs: Tensor, targets) -> Tensor:
    """Mean squared error over all m elements (PyTorch's MSELoss):
    ℓ = (1/m) Σ (z - t)²; targets t of the outputs' shape."""
    t = targets.data if isinstance(targets, Tensor) else B.asarray(targets)
    if t.shape != outputs.shape:
        raise ValueError(f"mse: outputs have shape {outputs.shape} but targets have shape {t.shape}")
    diff = outputs - Tensor(B.asarray(t, outputs.dtype))
    return (diff * diff).mean()


LOSSES = {"cross_entropy": cross_entropy, "mse": mse}


def get(loss):
    """A loss function by name ("cross_entropy", "mse"), or a callable as is."""
    if callable(loss):
        return loss
    try:
        return LOSSES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass a callable") from None
