"""Shampoo (Gupta, Koren & Singer 2018, "Shampoo: Preconditioned Stochastic
Tensor Optimization", ICML), with the diagonal fallbacks, grafting and
exponential averaging of distributed Shampoo.

**Matrix parameters** (the paper's Algorithm 1, matrix case). A parameter of
the objective's layout with 2 or more dimensions is a matrix G_t (m × n) of
its gradient; a conv kernel (out, in, kh, kw) (any ≥ 3-D tensor) is reshaped
row-major to (out, in·kh·kw), merging dimensions as distributed Shampoo does,
instead of the paper's one preconditioner per tensor dimension. Step
t = 1, 2, ...::

    L_t = L_{t-1} + G_t G_tᵀ        R_t = R_{t-1} + G_tᵀ G_t       L_0 = ε I_m,  R_0 = ε I_n
    D_t = L_t^{-1/4} G_t R_t^{-1/4}
    W_t = W_{t-1} - η D_t                              (Algorithm 1; before grafting, momentum, decay)

With ``beta2`` = β₂ the sums become exponential moving averages,
L_t = β₂ L_{t-1} + (1 - β₂) G_t G_tᵀ (and R_t alike), as in distributed
Shampoo (Anil, Gupta, Koren, Regan & Singer 2020, "Scalable second order
optimization for deep learning"); ``beta2=None`` is the paper's sum.

**Inverse 4th roots.** L^{-1/4} = Q diag(max(λ_i, ε)^{-1/4}) Qᵀ from
``xp.linalg.eigh`` of the symmetrised (L + Lᵀ)/2 (R alike). The roots are
recomputed on steps t = 1, 1 + T, 1 + 2T, ... (T = ``precondition_every``);
in between, L and R still accumulate every step and the roots of the last
recomputation are applied to the current G. The floor at ε: with the sum,
L ⪰ εI in exact arithmetic, but eigh's round-off is of order u·||L||
(u the unit round-off), so once ||L|| ≫ ε the computed eigenvalues of the
ε-directions can fall below ε or turn negative, and a negative number to the
power -1/4 is NaN, a tiny one a huge factor; flooring restores the exact
bound. With ``beta2`` the εI of L_0 decays like β₂ᵗ ε, and the floor keeps
it as a damping εI.

**Diagonal fallback, 1-D parameters** (biases, BatchNorm scale/shift, the
single flat parameter of a closed-form problem; also 0-D and empty ones).
For a vector, the paper's construction (one preconditioner for the single
dimension, power -1/2 for an order-1 tensor) is full-matrix AdaGrad,
d = H_t^{-1/2} g with H_t = εI + Σ_s g_s g_sᵀ. Only its diagonal is kept,
i.e. diagonal AdaGrad started at ε::

    h_t = h_{t-1} + g_t²   (h_0 = ε; β₂ h_{t-1} + (1 - β₂) g_t² with beta2)
    d_t = g_t / √max(h_t, ε)

**Diagonal fallback, large sides.** A side of a matrix whose dimension
exceeds ``max_preconditioner_dim`` keeps only the diagonal of its
preconditioner: for the rows, l_t = l_{t-1} + Σ_j G_ij² = diag(L_t)
(l_0 = ε; the row sums of G∘G), and L^{-1/4} G becomes max(l, ε)^{-1/4} ⊙ G
row by row; for the columns, r from the column sums of G∘G. The other side
stays a full matrix. Diagonal preconditioners are elementwise powers and are
taken from the current statistics every step (not on the T-step schedule).

**Grafting** (Agarwal, Anil, Hazan, Koren & Zhang 2020, "Disentangling
adaptive gradient methods from learning rates"; used by distributed Shampoo,
e.g. in the AlgoPerf benchmark). Per parameter tensor, Shampoo supplies the
direction and the grafted method the length::

    D ← D · ||D_graft|| / ||D||            (D = 0 stays 0)
    D_graft = g                                          graft="sgd":  step norm lr·||g||
    D_graft = m̂ / (√v̂ + ε_a),  m = β_a1 m + (1 - β_a1) g,  v = β_a2 v + (1 - β_a2) g²,
              m̂ = m / (1 - β_a1ᵗ),  v̂ = v / (1 - β_a2ᵗ)    graft="adam": Adam's step norm
    (graft=None: no rescaling, the plain Shampoo direction)

**Momentum and weight decay** (both off by default), on the grafted
direction D of all tensors::

    b = μ b + D                 (heavy ball; b = D when μ = 0)
    θ = θ - lr (b + wd θ)       (decoupled weight decay, as in AdamW)

==============  ==============================================================
symbol          argument
==============  ==============================================================
η               ``lr`` (1e-3; with grafting the step length of the grafted
                method, e.g. Adam's lr)
ε               ``eps`` (1e-6: L_0 = εI, R_0 = εI, h_0 = ε and the eigenvalue
                floor)
β₂              ``beta2`` (None: the paper's sum; in (0, 1): moving average)
T               ``precondition_every`` (1: new roots every step)
size limit      ``max_preconditioner_dim`` (1024: larger sides are diagonal)
graft           ``graft`` ("adam", "sgd" or None)
β_a1, β_a2      ``graft_betas`` ((0.9, 0.999), the Adam graft's)
ε_a             ``graft_eps`` (1e-8, the Adam graft's)
μ               ``momentum`` (0)
wd              ``weight_decay`` (0)
==============  ==============================================================

The parameters come from ``objective.layout``; an objective without one
(``layout`` None) is treated as one 1-D parameter, the diagonal path.

State: ``step`` (t), ``refreshes`` (steps so far on which eigh roots were recomputed),
``exp_avg``, ``exp_avg_sq`` ((n,) Adam-graft moments m, v; None unless
graft="adam"), ``momentum_buffer`` ((n,) b; None when μ = 0), ``tensors``:
one dict per layout parameter, in layout order (a list, so any parameter
name can be saved to HDF5), made on the first step (``init`` does not see
the layout): ``name``, ``shape`` (list), ``path`` ("matrix" or
"diagonal"), and for "matrix" ``L``, ``R`` ((m, m)/(n, n), or (m,)/(n,) for
a diagonal side) and ``L_root``, ``R_root`` (the last inverse 4th roots,
None for a diagonal side), for "diagonal" ``h``.

Non-finite statistics (an overflowed gradient) give NaN roots, so the step
is NaN and the run loop's divergence check sees it (eigh would raise).

Per-step info: ``loss``, ``grad_norm``, ``grad_norm_inf``, ``lr``,
``step_norm``, ``preconditioner_refreshed`` (the eigh roots were recomputed
this step), ``matrix_tensors`` and ``diagonal_tensors`` (tensors on each
path), ``diagonal_sides`` (matrix sides over the size limit),
``graft_scale_mean`` (mean over tensors of ||D_graft|| / ||D||; None
without grafting).
"""
from __future__ import annotations

import math

from tinygrad2 import backend as B
from tinygrad2.layout import Layout

from .base import (HyperparameterError, Optimizer, base_info, check_choice, check_fraction, check_int,
                   check_pair, check_positive)

GRAFTS = ("adam", "sgd", None)


class Shampoo(Optimizer):
    """Shampoo(lr=1e-3, eps=1e-6, beta2=None, precondition_every=1,
    max_preconditioner_dim=1024, graft="adam", graft_betas=(0.9, 0.999),
    graft_eps=1e-8, momentum=0, weight_decay=0); the update, state and info:
    module docstring."""

    def __init__(self, lr=1e-3, eps=1e-6, beta2=None, precondition_every=1, max_preconditioner_dim=1024,
                 graft="adam", graft_betas=(0.9, 0.999), graft_eps=1e-8, momentum=0.0, weight_decay=0.0):
        self.lr = check_positive("lr", lr)
        self.eps = check_positive("eps", eps)
        if beta2 is not None:
            check_fraction("beta2", beta2)
            if beta2 == 0:
                raise HyperparameterError(f"beta2 must be None (sum) or lie in (0, 1), got {beta2!r}")
        self.beta2 = beta2
        self.precondition_every = check_int("precondition_every", precondition_every, minimum=1)
        self.max_preconditioner_dim = check_int("max_preconditioner_dim", max_preconditioner_dim, minimum=1)
        self.graft = check_choice("graft", graft, GRAFTS)
        self.graft_betas = check_pair("graft_betas", graft_betas)
        self.graft_eps = check_positive("graft_eps", graft_eps)
        self.momentum = check_fraction("momentum", momentum)
        self.weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)

    def init(self, theta) -> dict:
        xp = B.xp
        adam = self.graft == "adam"
        return self._new_state(
            theta, tensors=[], refreshes=0,
            exp_avg=xp.zeros_like(theta) if adam else None,
            exp_avg_sq=xp.zeros_like(theta) if adam else None,
            momentum_buffer=xp.zeros_like(theta) if self.momentum else None,
        )

    # ---------------------------------------------------------------- the pieces

    @staticmethod
    def matrix_shape(shape):
        """(m, n) of the matrix a parameter is preconditioned as, or None for
        the diagonal path (fewer than 2 dimensions, or empty)."""
        if len(shape) < 2 or math.prod(shape) == 0:
            return None
        return shape[0], math.prod(shape[1:])

    def new_tensor(self, p, dtype) -> dict:
        """The fresh per-parameter state: εI (or ε·1 for a diagonal side/vector)."""
        xp, eps = B.xp, self.eps
        entry = {"name": p.name, "shape": list(p.shape)}
        mn = self.matrix_shape(p.shape)
        if mn is None:
            return {**entry, "path": "diagonal", "h": xp.full((p.size,), eps, dtype=dtype)}
        sides = [eps * xp.eye(d, dtype=dtype) if d <= self.max_preconditioner_dim else xp.full((d,), eps, dtype=dtype)
                 for d in mn]
        return {**entry, "path": "matrix", "L": sides[0], "R": sides[1], "L_root": None, "R_root": None}

    def accumulate(self, S, X):
        """S + X (the paper's sum) or β₂ S + (1 - β₂) X."""
        return S + X if self.beta2 is None else self.beta2 * S + (1 - self.beta2) * X

    def inverse_root(self, S, p=4):
        """S^{-1/p} of a symmetric matrix by eigh, eigenvalues floored at ε; all
        NaN when S is not finite (an overflowed gradient), where eigh would raise."""
        xp = B.xp
        if not bool(xp.isfinite(S).all()):
            return xp.full_like(S, xp.nan)
        w, Q = xp.linalg.eigh((S + S.T) / 2)
        return (Q * xp.maximum(w, self.eps) ** (-1.0 / p)) @ Q.T

    def precondition(self, entry, g, refresh):
        """(new entry, direction, eigh calls) of one tensor from its flat gradient g."""
        xp = B.xp
        if entry["path"] == "diagonal":
            h = self.accumulate(entry["h"], g * g)
            return {**entry, "h": h}, g / xp.sqrt(xp.maximum(h, self.eps)), 0
        G = g.reshape(entry["L"].shape[0], entry["R"].shape[0])
        new, D, eighs = dict(entry), G, 0
        for side, axis in (("L", 1), ("R", 0)):
            if entry[side].ndim == 2:  # full: G Gᵀ (L) or Gᵀ G (R), then the inverse 4th root
                new[side] = self.accumulate(entry[side], G @ G.T if side == "L" else G.T @ G)
                if refresh or entry[f"{side}_root"] is None:
                    new[f"{side}_root"] = self.inverse_root(new[side])
                    eighs += 1
                D = new["L_root"] @ D if side == "L" else D @ new["R_root"]
            else:  # diagonal: row (L) or column (R) sums of G∘G, used every step
                new[side] = self.accumulate(entry[side], (G * G).sum(axis=axis))
                scale = xp.maximum(new[side], self.eps) ** -0.25
                D = D * scale[:, None] if side == "L" else D * scale[None, :]
        return new, D.reshape(-1), eighs

    def parameters(self, objective, theta):
        """The layout's parameters (one 1-D "theta" when the objective has no layout)."""
        layout = getattr(objective, "layout", None)
        if layout is None:
            layout = Layout.single(theta.shape[0])
        if layout.n != theta.shape[0]:
            raise ValueError(f"Shampoo.step: the objective's layout has n = {layout.n}, "
                             f"but theta has size {theta.shape[0]}")
        return list(layout)

    # ---------------------------------------------------------------- the step

    def step(self, objective, theta, state):
        self._check_state(state, theta)
        xp = B.xp
        loss, g = objective.loss_and_grad(theta)
        t = state["step"] + 1
        refresh = (t - 1) % self.precondition_every == 0
        params = self.parameters(objective, theta)
        tensors = state["tensors"] or [self.new_tensor(p, theta.dtype) for p in params]
        if [(e["name"], list(e["shape"])) for e in tensors] != [(p.name, list(p.shape)) for p in params]:
            raise ValueError(f"Shampoo.step: the state's tensors {[(e['name'], e['shape']) for e in tensors]} "
                             f"do not match the layout {[(p.name, p.shape) for p in params]}")

        new_state = {**state, "step": t}
        graft_dir = g
        if self.graft == "adam":
            b1, b2 = self.graft_betas
            m = b1 * state["exp_avg"] + (1 - b1) * g
            v = b2 * state["exp_avg_sq"] + (1 - b2) * g * g
            graft_dir = (m / (1 - b1**t)) / (xp.sqrt(v / (1 - b2**t)) + self.graft_eps)
            new_state.update(exp_avg=m, exp_avg_sq=v)

        direction, new_tensors, scales, eighs = xp.zeros_like(g), [], [], 0
        for p, entry in zip(params, tensors):
            entry, d, calls = self.precondition(entry, g[p.slice], refresh)
            eighs += calls
            new_tensors.append(entry)
            if self.graft is not None and p.size:
                norm_d = xp.linalg.norm(d)
                scale = xp.where(norm_d > 0, xp.linalg.norm(graft_dir[p.slice]) / xp.where(norm_d > 0, norm_d, 1), 0)
                d = d * scale
                scales.append(scale)
            direction[p.slice] = d

        update = direction
        if self.momentum:
            update = self.momentum * state["momentum_buffer"] + direction
            new_state["momentum_buffer"] = update
        if self.weight_decay:
            update = update + self.weight_decay * theta
        theta_new = theta - self.lr * update

        matrices = [e for e in new_tensors if e["path"] == "matrix"]
        new_state.update(tensors=new_tensors, refreshes=state["refreshes"] + int(eighs > 0))
        info = base_info(loss, g)
        info.update(
            lr=self.lr,
            step_norm=float(xp.linalg.norm(theta_new - theta)),
            preconditioner_refreshed=eighs > 0,
            matrix_tensors=len(matrices),
            diagonal_tensors=len(new_tensors) - len(matrices),
            diagonal_sides=sum(e[s].ndim == 1 for e in matrices for s in "LR"),
            graft_scale_mean=float(xp.stack(scales).mean()) if scales else None,
        )
        return theta_new, new_state, info
