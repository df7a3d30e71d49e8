"""SGD with Partial Hessian (SGD-PH): "SGD with Partial Hessian for deep
neural networks optimization", following the official code.

Parameters are split by the objective's layout:

* tensors that are not 1-D (weights) get PyTorch's SGD-momentum with coupled
  weight decay (dampening 0, no Nesterov):

      b = μ b + (g + wd θ),     θ = θ - lr b;

* 1-D tensors k (biases, BN scale γ and shift β, WN gains: every parameter of
  ``ndim == 1``, as the official code's ``p.dim() == 1``) get a diagonal
  Newton-like step from their own curvature block H_kk (the paper's "partial
  Hessian" of the channel-wise parameters):

      b_k = μ b_k + g_k                                 (no weight decay inside)
      on its turn:  h_k = |H_kk · 1|   (diag="row_sums": one HVP, v = 1 on k)
                    h_k = |diag(H_kk)| (diag="exact": |k| unit HVPs)
                    d_k = μ_h d_k + (1 - μ_h) h_k       (Hessian momentum)
      θ_k = θ_k - lr (τ c_t b_k / (d_k + ε) + wd θ_k)

  where b_k is the tensor's own SGD momentum buffer (the same recurrence as
  the weights' buffers, taken on the raw gradient), and c_t is the official
  code's bias correction of the Hessian momentum,
  c_t = 1 - μ_h^(⌊t/M⌋ + 1) (t = step count 1, 2, ..., M = number of 1-D
  tensors): ⌊t/M⌋ + 1 approximates how often a tensor has been visited (it
  is exact for all but the last tensor, for which it can run one ahead).
  With ``schedule="all"`` every tensor is visited every step and c_t = 1 - μ_hᵗ
  exactly. ``bias_correction=False`` sets c_t = 1.

  Note what c_t does before a tensor's first visit (d_k = 0): the step is
  lr τ c_t b_k / ε; with the defaults τ (1 - μ_h) / ε = 1e-3 · 0.1 / 1e-4 = 1,
  i.e. exactly the SGD-momentum step. Without the correction it is 10x larger.

**Schedule.** ``"round_robin"`` (official): step t visits the
((t - 1) mod M)-th 1-D tensor in layout order, one HVP per step (row sums).
``"all"``: every 1-D tensor every step (M directions in one batched HVP).

**The block is not diagonal.** The paper treats H_kk as diagonal; it is not
in general (∂²L/∂γ_c∂γ_d ≠ 0 whenever a later layer mixes channels), so
H_kk · 1 gives row sums, which can be far from diag(H_kk) (smaller, or of the
other sign before |·|). ``diag="exact"`` uses the true block diagonal, at |k|
HVPs per visit, to measure the difference.

**The last 1-D tensor** (``official_last_1d_sgd``, default True, as the
official code): the official code replaces the step of the *last* 1-D tensor
in parameter order by the plain SGD-momentum step (coupled weight decay in its
buffer), although its Hessian is still estimated on its turn. In a classifier
that tensor is the output bias, and there the row sums vanish identically:
softmax cross-entropy is unchanged when a constant is added to every output
bias, so H_kk · 1 = 0 and d_k -> 0, and the second-order step would become
τ b_k / ε = 10x the SGD step. With ``False`` every 1-D tensor takes the
second-order step (sensible with ``diag="exact"``). Note that with a single
1-D tensor (e.g. :class:`tinygrad2.Quadratic`'s one flat parameter) the
default makes the method plain SGD-momentum.

With no 1-D parameters the method is SGD-momentum exactly and makes no HVPs
(the official code divides by M = 0 there).

==============  ================================================
symbol          argument
==============  ================================================
lr              ``lr`` (0.1)
μ               ``momentum`` (0.9)
μ_h             ``hessian_momentum`` (0.9; the official code uses μ)
ε               ``eps`` (1e-4)
τ               ``second_order_lr`` (1e-3; the official ``tau``)
wd              ``weight_decay`` (0)
==============  ================================================

State: ``step`` (steps taken, the t above), ``buf`` (n,) the momentum buffers of all parameters, ``diag``
(n,) the Hessian momentum d (non-zero on 1-D tensors only), ``cursor`` (index
of the next 1-D tensor to visit), ``visits`` (per 1-D tensor), ``nhvp``.
Info: ``loss``, ``grad_norm``, ``grad_norm_inf``, ``lr``, ``hessian_groups``
(names visited this step), ``nhvp`` (this step), ``hessian_diag_mean`` (mean
of the fresh h), ``hessian_momentum_mean`` (mean of d over all 1-D tensors),
``step_norm``.
"""
from __future__ import annotations

from tinygrad2 import backend as B

from .base import Optimizer, base_info, check_bool, check_choice, check_fraction, check_positive


class SGDPH(Optimizer):
    """SGDPH(lr=0.1, momentum=0.9, hessian_momentum=0.9, eps=1e-4,
    second_order_lr=1e-3, weight_decay=0, diag="row_sums",
    schedule="round_robin", bias_correction=True, official_last_1d_sgd=True);
    the update, state and info: module docstring."""

    def __init__(self, lr=0.1, momentum=0.9, hessian_momentum=0.9, eps=1e-4, second_order_lr=1e-3,
                 weight_decay=0.0, diag="row_sums", schedule="round_robin", bias_correction=True,
                 official_last_1d_sgd=True):
        self.lr = check_positive("lr", lr)
        self.momentum = check_fraction("momentum", momentum)
        self.hessian_momentum = check_fraction("hessian_momentum", hessian_momentum)
        self.eps = check_positive("eps", eps)
        self.second_order_lr = check_positive("second_order_lr", second_order_lr)
        self.weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
        self.diag = check_choice("diag", diag, ("row_sums", "exact"))
        self.schedule = check_choice("schedule", schedule, ("round_robin", "all"))
        self.bias_correction = check_bool("bias_correction", bias_correction)
        self.official_last_1d_sgd = check_bool("official_last_1d_sgd", official_last_1d_sgd)

    def init(self, theta) -> dict:
        zeros = B.xp.zeros_like(theta)
        return self._new_state(theta, buf=zeros, diag=zeros.copy(), cursor=0, visits=[], nhvp=0)

    @staticmethod
    def one_d(layout):
        """The 1-D parameters, in layout order (the tensors SGD-PH treats)."""
        return [] if layout is None else layout.groups(ndim=1)

    def curvature(self, objective, theta, names):
        """h for each named 1-D tensor: |H_kk · 1| (row sums) or |diag(H_kk)|,
        as a list of flat arrays, and the number of HVPs spent."""
        xp, layout = B.xp, objective.layout
        if self.diag == "exact":
            return [xp.abs(objective.block_diag(theta, name)) for name in names], sum(layout[k].size for k in names)
        if len(names) == 1:
            return [xp.abs(objective.block_row_sums(theta, names[0]))], 1
        V = xp.stack([layout.indicator(name, theta.dtype) for name in names])
        HV = objective.hvp(theta, V)
        return [xp.abs(HV[i, layout[name].slice]) for i, name in enumerate(names)], len(names)

    def step(self, objective, theta, state):
        self._check_state(state, theta)
        xp = B.xp
        mu, mu_h = self.momentum, self.hessian_momentum
        loss, g = objective.loss_and_grad(theta)
        groups = self.one_d(objective.layout)
        M, t = len(groups), state["step"] + 1
        visits = list(state["visits"]) or [0] * M
        if len(visits) != M:
            raise ValueError(f"SGDPH.step: the state has {len(visits)} 1-D tensors, the layout {M}")

        # the 1-D tensors that take the second-order step (the official quirk
        # hands the last one to SGD-momentum)
        second = groups[:-1] if self.official_last_1d_sgd else groups

        # SGD-momentum buffers for all parameters: coupled weight decay, except
        # on the second-order tensors (their decay is applied outside the buffer)
        d = g
        if self.weight_decay:
            d = g + self.weight_decay * theta
            for p in second:
                d[p.slice] = g[p.slice]
        buf = mu * state["buf"] + d
        update = buf.copy()

        # curvature of the 1-D tensors visited this step, then their steps
        diag, cursor, visited, h_means, nhvp = state["diag"].copy(), state["cursor"], [], [], 0
        if M:
            visited = [p.name for p in groups] if self.schedule == "all" else [groups[cursor].name]
            hs, nhvp = self.curvature(objective, theta, visited)
            index = {p.name: i for i, p in enumerate(groups)}
            for name, h in zip(visited, hs):
                s = objective.layout[name].slice
                diag[s] = mu_h * diag[s] + (1 - mu_h) * h
                visits[index[name]] += 1
                h_means.append(float(h.mean()) if h.size else 0.0)
            cursor = (cursor + 1) % M if self.schedule == "round_robin" else 0
            c = 1.0
            if self.bias_correction:
                c = 1 - mu_h ** (t if self.schedule == "all" else t // M + 1)
            for p in second:
                s = p.slice
                update[s] = self.second_order_lr * c * buf[s] / (diag[s] + self.eps) + self.weight_decay * theta[s]
        theta_new = theta - self.lr * update

        info = base_info(loss, g)
        one_d = xp.concatenate([diag[p.slice] for p in groups]) if M else diag[:0]
        info.update(
            lr=self.lr,
            hessian_groups=visited,
            nhvp=nhvp,
            hessian_diag_mean=sum(h_means) / len(h_means) if h_means else 0.0,
            hessian_momentum_mean=float(one_d.mean()) if one_d.size else 0.0,
            step_norm=float(xp.linalg.norm(theta_new - theta)),
        )
        new_state = {**state, "step": t, "buf": buf, "diag": diag, "cursor": cursor, "visits": visits,
                     "nhvp": state["nhvp"] + nhvp}
        return theta_new, new_state, info
