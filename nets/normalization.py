"""Batch normalization (Ioffe & Szegedy, 2015), with PyTorch's conventions.

Per channel c, over the m = N·(spatial size) entries of that channel:

    training:  μ_c = mean(x_c),  σ²_c = mean((x_c - μ_c)²)      (biased)
    eval:      μ_c = running_mean_c,  σ²_c = running_var_c
    y_c = γ_c · (x_c - μ_c) / √(σ²_c + ε) + β_c,     ε = 1e-5.

γ ("weight", kind "scale") starts at 1 and β ("bias", kind "shift") at 0.
In training mode the batch statistics are functions of x, so gradients and
curvature flow through them (the Hessian couples the whole batch).

Running statistics are buffers (outside θ). A training-mode forward pass
made inside ``model.updating_running_stats()`` (or by
``model.update_running_stats(theta, X)``) updates them with PyTorch's
formulas, momentum 0.1 and the *unbiased* batch variance:

    running_mean <- (1 - 0.1) running_mean + 0.1 μ
    running_var  <- (1 - 0.1) running_var  + 0.1 σ² · m / (m - 1)

Every other call (``apply`` under ``hvp``, ``hessian``, ...) leaves them alone.
"""
from __future__ import annotations

from tinygrad2 import Tensor
from tinygrad2 import backend as B

from .module import Module, check_size, ones, zeros


class _BatchNorm(Module):
    ndims = ()       # accepted input ranks
    hint = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = check_size(num_features, type(self).__name__, "num_features")
        self.eps, self.momentum = float(eps), float(momentum)
        self.add_param("weight", (self.num_features,), "scale", ones)
        self.add_param("bias", (self.num_features,), "shift", zeros)
        self.add_buffer("running_mean", B.xp.zeros((self.num_features,), B.default_dtype))
        self.add_buffer("running_var", B.xp.ones((self.num_features,), B.default_dtype))

    def extra_repr(self):
        return f"{self.num_features}"

    def forward(self, x):
        self.expect_ndim(x, self.ndims, self.hint)
        c = self.num_features
        if x.shape[1] != c:
            self.fail(x, f"has {x.shape[1]} channels, expected {c}")
        axes = (0,) + tuple(range(2, x.ndim))          # every axis but the channel axis
        keep = (1, c) + (1,) * (x.ndim - 2)             # per-channel values, broadcastable to x
        if self.training:
            m = x.size // c
            if m < 2:
                self.fail(x, "has 1 value per channel: batch statistics need at least 2 in training mode")
            mean = x.mean(axis=axes, keepdims=True)
            centered = x - mean
            var = (centered**2).mean(axis=axes, keepdims=True)  # (one cotangent, not two summed)
            if self._updating_stats:
                self._update(mean.data.reshape(c), var.data.reshape(c), m)
        else:
            mean = Tensor(B.asarray(self.running_mean, x.dtype).reshape(keep))
            centered = x - mean
            var = Tensor(B.asarray(self.running_var, x.dtype).reshape(keep))
        inv_std = 1.0 / (var + self.eps).sqrt()
        return centered * (inv_std * self.weight.reshape(keep)) + self.bias.reshape(keep)

    def _update(self, mean, var, m):
        """PyTorch's momentum update, the variance made unbiased (m / (m - 1))."""
        rm, rv, mom = self._buffers["running_mean"], self._buffers["running_var"], self.momentum
        self._buffers["running_mean"] = (1 - mom) * rm + mom * mean.astype(rm.dtype)
        self._buffers["running_var"] = (1 - mom) * rv + mom * (var * (m / (m - 1))).astype(rv.dtype)


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) inputs, per channel C."""

    ndims, hint = (2, 3), "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) inputs, per channel C."""

    ndims, hint = (4,), "(N, C, H, W)"
