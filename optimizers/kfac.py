"""K-FAC (Martens & Grosse 2015, "Optimizing Neural Networks with
Kronecker-factored Approximate Curvature"), with KFC for convolutions (Grosse &
Martens 2016, "A Kronecker-factored approximate Fisher matrix for convolution
layers").

**Curvature model.** The Gauss-Newton matrix G (equal to the Fisher for the
cross-entropy and mse losses) is approximated block-diagonally, one block per
affine layer y = W ā (ā = (a, 1): the inputs with the homogeneous coordinate
that carries the bias), and each block by a Kronecker product:

    G_layer ≈ Γ ⊗ Ω        Ω = (1/N) Σ_i Σ_t ā_it ā_itᵀ        (inputs)
                           Γ = (1/T) Σ_i Σ_t Σ_k g_itk g_itkᵀ  (output cotangents)

for N examples, T spatial locations per example (T = 1 for a dense layer) and
the K backpropagated factor seeds g_k of :meth:`tinygrad2.Objective.capture`
(the seeds' 1/√N makes Σ_i a mean over examples). This is KFC's Ω ⊗ Γ: Ω sums
over locations and Γ averages over them. The order of the product is that of
θ: the weight gradient of a layer is Σ_it g ā_itᵀ, a (out, in + 1) matrix
stored row-major, so vec_row(g āᵀ) = g ⊗ ā and the block is ``kron(Γ, Ω)``
(Ω ⊗ Γ in the paper's column-major vec). With one example and one location
it equals the exact Gauss-Newton block (``python -m tinygrad2.verify`` and
tests/optimizers/test_kfac.py check that).

``factor`` chooses Γ's seeds: ``"exact"`` backpropagates a square root of the
loss Hessian (cross-entropy: C seeds √p_c (e_c - p)/√N), so Γ is the exact
Gauss-Newton factor; ``"sample"`` backpropagates one seed with labels drawn
from the model's predictive distribution (the paper's Monte-Carlo Fisher).

Both factors are exponential moving averages, X ← ε X + (1 - ε) X_new with
ε = min(1 - 1/k, ``factor_decay``) at the k-th update (the paper's choice; the
first update takes X_new whole).

**Parameters outside the layers** (BatchNorm γ and β, WeightNorm's g and v,
a closed-form problem's θ) get a diagonal model instead: an EMA of the
Hutchinson estimate d = z ⊙ (G z) of diag(G), z Rademacher on those entries
only (one Gauss-Newton product per step), and the update -g / (max(d, 0) + λ + η)
(an estimate can be negative where G has large off-diagonal entries).

**Damping.** The layer inverses use factored Tikhonov damping:

    Δ_W = -(Γ + γ/π I)⁻¹ ∇_W (Ω + π γ I)⁻¹,  γ = √(λ + η),
    π = √( (tr Ω / dim Ω) / (tr Γ / dim Γ) )

(the paper's π correction; η = ``weight_decay`` is an ℓ2 term η/2 ||θ||²
added to the loss, so it enters the gradient and the curvature). The
inverses are recomputed every ``inverse_every`` steps (T₃ in the paper) with
the λ of that step, and reused in between.

**Step.** With ``lr=None`` (default) the step is δ = α Δ + μ δ_prev, α and μ
minimising the quadratic model M(δ) = gᵀδ + ½ δᵀ(G + (λ + η) I)δ with exact
Gauss-Newton products (the paper's re-scaling and momentum; μ = 0 on the
first step or with ``momentum=False``): a 2 x 2 solve from one batched
product G [Δ, δ_prev]. With a number, δ = lr Δ.

**λ** adapts every ``adapt_every`` = T₁ steps (``adapt="lm"``) by the
Levenberg-Marquardt rule on ρ = (f(θ + δ) - f(θ)) / (gᵀδ + ½ δᵀ(G + ηI)δ):
ρ > ¾ -> λ ω₁, ρ < ¼ -> λ / ω₁ with ω₁ = (19/20)^T₁, and never below
``min_damping`` (not in the paper: on mini-batches ρ of the batch the step was
fitted to stays near 1, so λ fell to 1e-9 within 785 steps on the CIFAR-10
CNN and the next batches' steps blew up). With ``adapt="fixed"`` λ stays
``damping``.

**Rejection** (``reject=True``, not in the paper): every step evaluates f(θ + δ)
on its batch (one forward pass) and is not taken if the loss rose or is not
finite; λ is then raised by 1/ω₁ at once (the inverses take it at the next
step) and the momentum δ_prev is reset.
On small batches the quadratic model, built from that one batch's G, can ask
for a huge α or μ (a direction of tiny batch curvature); without rejection one
such step on the digits MLP (batch 64) sent the loss to 1e38 within ten
steps, faster than λ could grow. ``reject=False`` is the paper's method (f is
then evaluated only on the adaptation steps).

Not done here: the paper's separate adaptation of γ by a small grid search
(γ is tied to λ above), and its exact-inverse variant with eigen-decompositions.

==============  ==================================================
symbol          argument
==============  ==================================================
lr              ``lr`` (None: α and μ from the quadratic model)
λ               ``damping`` (initial; 0.01), floor ``min_damping`` (1e-4)
η               ``weight_decay`` (0)
ε               ``factor_decay`` (0.95)
T₃              ``inverse_every`` (10)
T₁              ``adapt_every`` (5)
==============  ==================================================

State: ``step``, ``damping`` (λ now), ``updates`` (factor updates so far),
``omega``/``gamma`` (Ω, Γ per layer, keyed by the weight's name), ``omega_inv``/
``gamma_inv`` (their damped inverses), ``diag`` (the EMA of d, zero on layer
entries), ``delta`` (the previous step), ``seed``, ``draws`` (random draws so
far: factor samples and Rademacher vectors), ``stale`` (the inverses must be
recomputed at the next step: after a rejected or non-finite step). A
non-finite direction leaves θ and the statistics as they were before the step
and raises λ. Per-step info: ``loss``,
``grad_norm``, ``grad_norm_inf``, ``lr`` (α), ``mu``, ``step_norm``,
``damping``, ``predicted`` (when the model's product is at hand: every step
with ``lr=None``, else on adaptation steps; else None), ``actual`` (every step
with ``reject``, else on adaptation steps), ``rho`` (when both are known),
``inverses_refreshed``, ``kfac_layers`` (layers with Kronecker blocks),
``fallback`` (None, "rejected" or "non_finite": the step was not taken).
"""
from __future__ import annotations

import math

from tinygrad2 import backend as B
from tinygrad2 import rademacher
from tinygrad2.capture import kronecker_factors

from .adahessian import SEED_LIMIT, SEED_STRIDE  # the j-th draw of a run seeded s: seed s · SEED_STRIDE + j
from .base import HyperparameterError, Optimizer, base_info, check_bool, check_choice, check_fraction, check_int, check_positive
from .newton import check_adapt, lm_update, reduction_ratio

LM_OMEGA = 19 / 20  # ω₁ = (19/20)^T₁


class KFAC(Optimizer):
    """KFAC(lr=None, damping=0.01, adapt="lm", factor="exact", factor_decay=0.95,
    inverse_every=10, adapt_every=5, momentum=True, reject=True, min_damping=1e-4, weight_decay=0,
    seed=0);
    the update, state and info: module docstring."""

    def __init__(self, lr=None, damping=0.01, adapt="lm", factor="exact", factor_decay=0.95, inverse_every=10,
                 adapt_every=5, momentum=True, reject=True, min_damping=1e-4, weight_decay=0.0, seed=0):
        self.lr = None if lr is None else check_positive("lr", lr)
        self.damping = check_positive("damping", damping)
        self.adapt = check_adapt(adapt)
        self.factor = check_choice("factor", factor, ("exact", "sample"))
        self.factor_decay = check_fraction("factor_decay", factor_decay)
        self.inverse_every = check_int("inverse_every", inverse_every, minimum=1)
        self.adapt_every = check_int("adapt_every", adapt_every, minimum=1)
        self.momentum = check_bool("momentum", momentum)
        self.reject = check_bool("reject", reject)
        self.min_damping = check_positive("min_damping", min_damping, allow_zero=True)
        if self.min_damping > self.damping:
            raise HyperparameterError(f"min_damping ({min_damping!r}) must not exceed damping ({damping!r})")
        self.weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
        self.seed = check_int("seed", seed, minimum=0)
        if seed >= SEED_LIMIT:
            raise HyperparameterError(f"seed must be < 2**31, got {seed!r}")

    def init(self, theta) -> dict:
        return self._new_state(theta, damping=float(self.damping), updates=0, omega={}, gamma={}, omega_inv={},
                               gamma_inv={}, diag=B.xp.zeros_like(theta), delta=B.xp.zeros_like(theta),
                               seed=self.seed, draws=0, stale=False)

    # ---- curvature statistics -------------------------------------------------------------
    @staticmethod
    def damped_inverses(omega, gamma, damping):
        """(Ω + πγI)⁻¹ and (Γ + γ/π I)⁻¹ with γ = √damping and the π correction."""
        xp = B.xp
        mean_omega, mean_gamma = float(xp.trace(omega)) / omega.shape[0], float(xp.trace(gamma)) / gamma.shape[0]
        pi = math.sqrt(mean_omega / mean_gamma) if mean_omega > 0 and mean_gamma > 0 else 1.0
        root = math.sqrt(damping)
        eye = lambda m: xp.eye(m.shape[0], dtype=m.dtype)  # noqa: E731
        return xp.linalg.inv(omega + pi * root * eye(omega)), xp.linalg.inv(gamma + root / pi * eye(gamma))

    def _draw_seed(self, state, draws):
        return state["seed"] * SEED_STRIDE + draws

    def _update_statistics(self, objective, theta, layers, state):
        """EMAs of Ω, Γ per layer and of the diagonal on the other entries."""
        updates = state["updates"] + 1
        keep = min(1 - 1 / updates, self.factor_decay)
        omega, gamma = dict(state["omega"]), dict(state["gamma"])
        covered = B.xp.zeros(theta.shape, dtype=bool)
        for layer in layers:
            key = layer.weight
            if key in omega and omega[key].shape[0] != layer.inputs.shape[1] + (layer.bias is not None):
                raise ValueError(f"KFAC: layer '{key}' changed its input size since the state was made")
            new_omega, new_gamma = kronecker_factors(layer)
            omega[key] = new_omega if key not in omega else keep * omega[key] + (1 - keep) * new_omega
            gamma[key] = new_gamma if key not in gamma else keep * gamma[key] + (1 - keep) * new_gamma
            for name in (layer.weight, layer.bias):
                if name is not None:
                    covered[objective.layout[name].slice] = True
        diag, draws = state["diag"], state["draws"] + 1
        if not bool(covered.all()):
            z = rademacher(theta.shape, seed=self._draw_seed(state, draws), dtype=theta.dtype) * ~covered
            draws += 1
            new_diag = z * objective.ggn_vp(theta, z)
            diag = new_diag if updates == 1 else keep * diag + (1 - keep) * new_diag
        return {"updates": updates, "omega": omega, "gamma": gamma, "diag": diag, "draws": draws}, covered

    # ---- the step ----------------------------------------------------------------------------
    def direction(self, objective, g, layers, covered, state):
        """Δ = -(K-FAC model + damping)⁻¹ g on the layers, -g / (d + λ + η) elsewhere."""
        xp = B.xp
        lam = state["damping"] + self.weight_decay
        delta = xp.where(covered, 0, -g / (xp.maximum(state["diag"], 0) + lam))  # the estimate may dip below 0
        layout = objective.layout
        for layer in layers:
            w = layout[layer.weight]
            parts = [g[w.slice].reshape(w.shape[0], -1)]
            if layer.bias is not None:
                parts.append(g[layout[layer.bias].slice].reshape(-1, 1))
            grad_matrix = xp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
            step = -(state["gamma_inv"][layer.weight] @ grad_matrix @ state["omega_inv"][layer.weight])
            delta[w.slice] = step[:, : w.size // w.shape[0]].reshape(-1)
            if layer.bias is not None:
                delta[layout[layer.bias].slice] = step[:, -1]
        return delta

    def step(self, objective, theta, state):
        self._check_state(state, theta)
        xp = B.xp
        t = state["step"] + 1
        sample_seed = self._draw_seed(state, state["draws"])
        if not hasattr(objective, "capture"):
            raise TypeError(f"KFAC.step: the objective ({type(objective).__name__}) has no capture(theta, factor, "
                            f"seed), which K-FAC reads its layers and gradient from (tinygrad2.ObjectiveInterface)")
        cap = objective.capture(theta, factor=self.factor, seed=sample_seed)
        loss, g = cap.loss, cap.grad + self.weight_decay * theta
        before = state
        stats, covered = self._update_statistics(objective, theta, cap.layers, state)
        state = {**state, **stats}
        refresh = ((t - 1) % self.inverse_every == 0 or state["stale"]
                   or set(state["omega_inv"]) != set(state["omega"]))
        if refresh:
            inverses = {key: self.damped_inverses(state["omega"][key], state["gamma"][key],
                                                  state["damping"] + self.weight_decay) for key in state["omega"]}
            state["omega_inv"] = {key: pair[0] for key, pair in inverses.items()}
            state["gamma_inv"] = {key: pair[1] for key, pair in inverses.items()}
        Delta = self.direction(objective, g, cap.layers, covered, state)

        info = base_info(loss, cap.grad)
        drop = LM_OMEGA ** self.adapt_every  # ω₁ = (19/20)^T₁
        if not bool(xp.isfinite(Delta).all()):  # keep the statistics of before this step: they may be the cause
            info.update(lr=0.0, mu=0.0, step_norm=0.0, damping=state["damping"], predicted=None, actual=None,
                        rho=None, inverses_refreshed=refresh, kfac_layers=len(cap.layers), fallback="non_finite")
            boosted = before["damping"] / drop if self.adapt == "lm" else before["damping"]
            return theta, {**before, "step": t, "delta": xp.zeros_like(theta), "damping": boosted,
                           "stale": True}, info
        lam = state["damping"] + self.weight_decay
        prev = state["delta"]
        use_prev = self.lr is None and self.momentum and bool(xp.any(prev != 0))
        directions = xp.stack([Delta, prev]) if use_prev else Delta[None]
        adapt_now = self.adapt == "lm" and t % self.adapt_every == 0
        alpha, mu = self.lr, 0.0
        GD = objective.ggn_vp(theta, directions) if self.lr is None else None
        if self.lr is None:
            M = GD @ directions.T + lam * (directions @ directions.T)  # (G + λI) Gram matrix of [Δ, δ_prev]
            b = directions @ g
            coef = _solve_small(M, -b)
            alpha, mu = (float(coef[0]), float(coef[1]) if use_prev else 0.0)
        delta = alpha * Delta + (mu * prev if use_prev else 0.0)
        theta_new = theta + delta
        predicted = rho = None
        if self.lr is None or adapt_now:
            Gdelta = (alpha * GD[0] + (mu * GD[1] if use_prev else 0.0)) if GD is not None \
                else objective.ggn_vp(theta, delta)
            predicted = float(g @ delta + 0.5 * (delta @ Gdelta + self.weight_decay * (delta @ delta)))
        actual = None
        if self.reject or adapt_now:
            l2 = 0.5 * self.weight_decay * float(theta_new @ theta_new - theta @ theta)
            actual = objective.loss(theta_new) - loss + l2
            if predicted is not None:
                rho = reduction_ratio(actual, predicted)
        rejected = self.reject and not (math.isfinite(actual) and actual <= 0)
        new_damping = state["damping"]
        if adapt_now:
            new_damping = lm_update(state["damping"], rho, boost=1 / drop, drop=drop, min_damping=self.min_damping)
        elif rejected and self.adapt == "lm":
            new_damping = state["damping"] / drop
        info.update(lr=0.0 if rejected else float(alpha), mu=0.0 if rejected else float(mu),
                    step_norm=0.0 if rejected else float(xp.linalg.norm(delta)), damping=state["damping"],
                    predicted=predicted, actual=actual, rho=rho, inverses_refreshed=refresh,
                    kfac_layers=len(cap.layers), fallback="rejected" if rejected else None)
        if rejected:  # the raised λ reaches the inverses at the next step
            return theta, {**state, "step": t, "delta": xp.zeros_like(theta), "damping": new_damping,
                           "stale": True}, info
        return theta_new, {**state, "step": t, "delta": delta, "damping": new_damping, "stale": False}, info


def _solve_small(M, rhs):
    """The 1 x 1 or 2 x 2 system M c = rhs; a singular M falls back to least squares
    (checked by the result, since CuPy's solve does not raise on a singular M),
    and a system with no finite solution gives c = 0 (no step)."""
    xp = B.xp
    try:
        coef = xp.linalg.solve(M, rhs)
    except xp.linalg.LinAlgError:
        coef = None
    if coef is None or not bool(xp.isfinite(coef).all()):
        try:  # NumPy's lstsq raises on a non-finite M ("SVD did not converge")
            coef = xp.linalg.lstsq(M, rhs, rcond=None)[0]
        except xp.linalg.LinAlgError:
            coef = None
    return coef if coef is not None and bool(xp.isfinite(coef).all()) else xp.zeros_like(rhs)
