"""Hessian-free Gauss-Newton (Martens 2010, Section 4.1; Schraudolph 2002).

:class:`GaussNewton` is :class:`~optimizers.hessian_free.HessianFree` with
the curvature fixed to the generalized Gauss-Newton matrix

    G = Jᵀ H_z J,     J = ∂z/∂θ (model outputs z),  H_z = ∂²ℓ/∂z²,

applied by ``objective.ggn_vp``. G is positive semi-definite whenever the
loss is convex in the outputs, so CG on G + λI never meets negative
curvature (λ > 0), which is why Martens uses it for networks; for a model
linear in θ, G = H and the method coincides with HF Newton. Every other
argument, the update and the ``info`` fields are those of HessianFree.
"""
from __future__ import annotations

from .base import HyperparameterError
from .hessian_free import MARTENS_DAMPING, HessianFree


class GaussNewton(HessianFree):
    """HessianFree(curvature="ggn"): CG on (G + λI) p = -g; see HessianFree."""

    def __init__(self, lr=1.0, damping=MARTENS_DAMPING, **kwargs):
        curvature = kwargs.pop("curvature", "ggn")  # accepted, so hyperparameters() round-trips
        if curvature != "ggn":
            raise HyperparameterError(f"curvature is fixed to 'ggn' in GaussNewton, got curvature={curvature!r}; "
                             f"use HessianFree(curvature=...) instead")
        super().__init__(lr=lr, damping=damping, curvature="ggn", **kwargs)
