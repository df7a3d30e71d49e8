"""The loss table: every named loss once, with what each user of it needs.

``LOSSES[name]`` is a :class:`Loss` with

* ``value(outputs, targets)``: the scalar loss as a Tensor (differentiable);
* ``hessian_vp(z, targets, T)``: H_z T, the loss Hessian in the outputs z
  times tangents T (K, *z.shape), in closed form (the Gauss-Newton product
  needs it: G = Jᵀ H_z J);
* ``check_targets(targets, batch, where)``: the targets' dtype and shape
  against the batch, a ValueError naming ``where`` otherwise;
* ``check_outputs(outputs_shape, targets, where, name)``: outputs against
  targets, once the outputs exist;
* ``hessian_factor(z, targets)``: U (K, *z.shape) with Σ_k u_k[i] u_k[i]ᵀ = H_i
  for every example i, H_i the i-th diagonal block of H_z (which is
  block-diagonal over examples): backpropagated, the K seeds give per-example
  factors of the Gauss-Newton matrix (K-FAC's exact factor; the cross-example
  products of u_k u_kᵀ are not part of H_z and must not be summed); None
  where no closed form is known;
* ``hessian_sample(z, targets, rng)``: one random r (1, *z.shape) with
  E[r rᵀ] = H_z, examples independent (the Monte-Carlo Fisher sample of
  K-FAC, Sophia's Gauss-Newton-Bartlett); None where unknown;
* ``classification``: whether accuracy (argmax of the outputs against
  integer labels) is defined;
* ``one_primitive``: the value is a single primitive, so a pass that only
  wants H·V may skip the loss value's own tangent.

The Objective, ``nets.losses`` and the run loop all read this table. A
callable ``(outputs, targets) -> scalar Tensor`` becomes a :class:`Loss` with
:func:`custom` (its output Hessian by forward-over-reverse).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import backend as B
from .kernels import softmax_hessian_vp, softmax_rows
from .primitives import cross_entropy_grad
from .tensor import Tensor


@dataclass(frozen=True)
class Loss:
    name: str
    value: Callable
    hessian_vp: Callable
    check_targets: Callable
    check_outputs: Callable
    hessian_factor: Callable | None = None
    hessian_sample: Callable | None = None
    classification: bool = False
    one_primitive: bool = False

    def __repr__(self):
        return f"Loss({self.name!r})"


def _targets_array(targets):
    return targets.data if isinstance(targets, Tensor) else B.asarray(targets)


# ---------------------------------------------------------------- cross-entropy
# ℓ = (1/B) Σ_i [logsumexp(z_i) - z_{i,y_i}],  z (B, C), integer labels y (B,)
# H_z t = (diag(p_i) - p_i p_iᵀ) t_i / B,  p_i = softmax(z_i)

def _ce_value(logits, labels):
    return logits.cross_entropy(_targets_array(labels))


def _ce_hessian_vp(z, labels, T):
    if z.ndim != 2:
        raise ValueError(f"cross_entropy: outputs must be (B, C), got {z.shape}")
    return softmax_hessian_vp(z, T)


def _ce_hessian_factor(z, labels):
    # diag(p) - p pᵀ = Q Qᵀ, column c of Q = √p_c (e_c - p)  (uses Σ_c p_c = 1)
    p = softmax_rows(z)
    batch, classes = p.shape
    eye = B.xp.eye(classes, dtype=z.dtype)
    return (eye[:, None, :] - p[None]) * B.xp.sqrt(p).T[:, :, None] / (batch ** 0.5)


def _ce_hessian_sample(z, labels, rng):
    # ŷ_i ~ softmax(z_i), r_i = (p_i - e_ŷ) / √B: E[r_i r_iᵀ] = (diag(p_i) - p_i p_iᵀ) / B
    p = softmax_rows(z)
    batch, classes = p.shape
    u = rng.random((batch, 1)).astype(p.dtype)
    sampled = B.xp.minimum((B.xp.cumsum(p, axis=1) < u).sum(axis=1), classes - 1)
    return cross_entropy_grad.forward(z, sampled)[None] * (batch ** 0.5)  # (p - e_ŷ) / B · √B


def _ce_check_targets(y, batch, where):
    if y.ndim != 1 or y.shape[0] != batch or y.dtype.kind not in "iu":
        raise ValueError(
            f"{where}: y must be integer labels of shape ({batch},) to match the batch, "
            f"got y of shape {y.shape} and dtype {y.dtype}"
        )


def _ce_check_outputs(shape, y, where, name="labels"):
    if len(shape) != 2 or shape[0] != y.shape[0]:
        raise ValueError(f"{where}: outputs must be (B, C) with B = {y.shape[0]} {name}, got {shape}")


# ---------------------------------------------------------------- mean squared error
# ℓ = (1/m) Σ (z - t)² over all m = z.size elements (PyTorch's MSELoss);  H_z = (2/m) I

def _mse_value(outputs, targets):
    t = _targets_array(targets)
    _mse_check_outputs(outputs.shape, t, "mse", "targets")
    diff = outputs - Tensor(B.asarray(t, outputs.dtype))
    return (diff * diff).mean()


def _mse_hessian_vp(z, targets, T):
    return T * (2.0 / z.size)


def _mse_hessian_factor(z, targets):
    # each example's block (2/m) I = Σ_k u_k u_kᵀ, u_k = √(2/m) e_k for its output element k
    per_example = z.size // z.shape[0]
    U = B.xp.zeros((per_example, z.shape[0], per_example), z.dtype)
    U[B.xp.arange(per_example), :, B.xp.arange(per_example)] = (2.0 / z.size) ** 0.5
    return U.reshape((per_example,) + z.shape)


def _mse_hessian_sample(z, targets, rng):
    return rng.standard_normal((1,) + z.shape).astype(z.dtype) * (2.0 / z.size) ** 0.5


def _first_dim_matches(y, batch, where):
    if y.ndim == 0 or y.shape[0] != batch:
        raise ValueError(
            f"{where}: y of shape {y.shape} does not match the batch of {batch}: "
            f"their first dimensions must agree"
        )


def _mse_check_outputs(shape, t, where, name="targets"):
    if tuple(shape) != tuple(t.shape):
        verb = "have" if name.endswith("s") else "has"
        raise ValueError(f"{where}: outputs have shape {tuple(shape)} but {name} {verb} shape {tuple(t.shape)}")


LOSSES = {
    "cross_entropy": Loss("cross_entropy", _ce_value, _ce_hessian_vp, _ce_check_targets, _ce_check_outputs,
                          _ce_hessian_factor, _ce_hessian_sample, classification=True, one_primitive=True),
    "mse": Loss("mse", _mse_value, _mse_hessian_vp, _first_dim_matches, _mse_check_outputs,
                _mse_hessian_factor, _mse_hessian_sample),
}


# ---------------------------------------------------------------- any callable


def custom(fn) -> Loss:
    """A Loss from ``fn(outputs: Tensor, targets) -> scalar Tensor``: its
    output Hessian product by forward-over-reverse on fn(·, targets) at z."""
    name = getattr(fn, "__name__", "callable")

    def value(outputs, targets):
        out = fn(outputs, targets)
        if not isinstance(out, Tensor) or out.size != 1:
            what = type(out).__name__ if not isinstance(out, Tensor) else f"shape {out.shape}"
            raise ValueError(f"loss {name}: the loss must be a scalar Tensor, got {what}")
        return out

    def hessian_vp(z, targets, T):
        zt = Tensor(z, requires_grad=True, tangent=T)
        out = value(zt, targets)
        if not out.requires_grad:
            return B.xp.zeros_like(T)
        out.backward()
        if zt.grad is None or zt.grad.tangent is None:
            return B.xp.zeros_like(T)
        return zt.grad.tangent

    return Loss(name, value, hessian_vp, _first_dim_matches, lambda *args, **kw: None)


def get(loss) -> Loss:
    """The :class:`Loss` for a name in :data:`LOSSES`, a Loss as is, or
    :func:`custom` of a callable."""
    if isinstance(loss, Loss):
        return loss
    if callable(loss):
        return custom(loss)
    try:
        return LOSSES[loss]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} or a callable "
            f"(outputs, y) -> scalar Tensor"
        ) from None
