"""Curvature telemetry: probes measured on a fixed probe batch at chosen steps of any run.

A probe is one function ``probe(ctx) -> {column: value}`` with a cost forecast
``cost(ctx) -> Cost``; :data:`PROBES` lists them by name. ``ctx`` is a
:class:`ProbeContext`: the probe batch's objective, the parameters θ_t after
step t, the point θ_{t-1} the step started from and the optimizer with its
state, so that probes of the curvature (at θ_t) and probes of the last step
(at θ_{t-1}, where it was computed) both have what they need. Values are
floats; a probe with several values (top-k eigenvalues, one per layer) names
its columns ``probe:label`` (``lambda_max:0``, ``grad_spectral_norm:fc.weight``);
``time:probe`` holds the seconds each probe took.

======================  =====================================================================
probe                   what it measures (on the probe batch)
======================  =====================================================================
``lambda_max``          the top-3 eigenvalues of H at θ_t (Lanczos)
``lambda_min``          the smallest eigenvalue of H at θ_t (Lanczos, most negative curvature)
``ggn_lambda_max``      the top eigenvalue of the Gauss-Newton matrix G at θ_t
``trace``               tr(H) at θ_t by Hutch++ (60 products), and its standard error
``density``             a spectral density snapshot of H at θ_t: stochastic Lanczos quadrature
                        nodes and weights (4 probes x 30 steps), to histogram over training
``sharpness_ratio``     lr · λ_max(H(θ_t)) (λ_max shared with ``lambda_max`` when both run): the
                        edge-of-stability quantity (Cohen et al. 2021;
                        near 2 for SGD once training sits at the edge); lr = the step length
                        the last step used (``info["lr"]``, else the optimizer's ``lr``); NaN
                        where neither exists (step 0 of a method that chooses its own step)
``grad_noise``          at θ_t over 8 training mini-batches of the run's batch size: tr(Σ) of
                        the per-example gradient covariance, |G|² of the mean gradient
                        (unbiased) and the simple noise scale B_simple = tr(Σ) / |G|²
                        (McCandlish et al. 2018, "An Empirical Model of Large-Batch
                        Training", Appendix A)
``diag_error``          the relative error ||d - |diag H| || / ||diag H|| of the optimizer's
                        Hessian-diagonal estimate d (AdaHessian's and the Hybrid's D = averaged
                        |z ⊙ Hz|, compared with |diag H| averaged the same way; SGD-PH's
                        momentum-averaged |row sums| on the 1-D tensors) against the exact
                        diagonal at θ_{t-1} on the probe batch, overall and per tensor; for
                        AdaHessian also of the RMS average √(v / (1 - β₂ᵗ)) it divides by
``newton_cosine``       cos∠(θ_t - θ_{t-1}, d) for the exact damped Newton step
                        d = -(H + λI)⁻¹ g and Gauss-Newton step -(G + λI)⁻¹ g at θ_{t-1}
                        (dense solves; λ = 1e-4 · max|eig|); for L-BFGS also sᵀHs and sᵀy of
                        its newest pair (they agree on a quadratic), for HF the CG residual
                        ||r|| / ||g|| of the step
``grad_spectral_norm``  per weight tensor at θ_t: the largest singular value of its gradient
                        matrix (out, in); a conv kernel's per filter (in, kh·kw), averaged
                        (the ResNet18 paper's Figure 7 quantity)
``dead_units``          per captured layer (nets' Linear and Conv2d): the fraction of its input
                        units (channels of a convolution) that are zero on every example of
                        the probe batch, i.e. dead ReLUs of the layer before
``offdiag_mass``        per parameter tensor g of at most ``OFFDIAG_MAX`` entries:
                        ||H_gg - diag(H_gg)||_F / ||diag(H_gg)||_F (exact block from |g|
                        products; BN γ blocks included): how much a diagonal model ignores
======================  =====================================================================

Costs are forecast before a probe runs (:func:`forecast`): Hessian-vector
products and the bytes of any dense matrix. A probe over the run's budget
(``max_products`` products, ``memory.default_memory_budget`` bytes), or one
that does not apply (``diag_error`` for an optimizer without an estimate), is
skipped for the whole run with one line saying why; it never stops the run.
Random directions are seeded by (run seed, step), so a resumed run measures
exactly what an uninterrupted one would.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np  # host-side only: small dense summaries

from tinygrad2 import backend as B
from tinygrad2 import memory, spectrum

LAMBDA_K = 3            # eigenvalues of lambda_max
TRACE_MATVECS = 60      # products of the Hutch++ trace
DENSITY_PROBES, DENSITY_STEPS = 4, 30
NOISE_BATCHES = 8       # mini-batches of grad_noise
OFFDIAG_MAX = 512       # offdiag_mass measures blocks of at most this many entries
NEWTON_DAMPING = 1e-4   # λ of newton_cosine, relative to max |eigenvalue|
DEFAULT_MAX_PRODUCTS = 5000


@dataclass
class ProbeContext:
    """What a probe may read (module docstring). ``batches``: a callable
    ``(count, seed) -> [(X, y), ...]`` of training mini-batches (grad_noise)."""

    objective: object
    theta: object
    step: int = 0
    seed: int = 0
    prev_theta: object = None
    optimizer: object = None
    state: dict | None = None
    info: dict = field(default_factory=dict)
    batches: object = None
    cache: dict = field(default_factory=dict, repr=False)  # results probes share within one call

    def rng_seed(self, salt):
        return [int(self.seed), int(self.step), salt]


@dataclass(frozen=True)
class Cost:
    products: int = 0          # Hessian- or GGN-vector products (one per direction)
    dense_bytes: int = 0       # any dense matrix held at once
    reason: str | None = None  # not applicable: why


def _matvec(ctx, which="hvp", theta=None):
    theta = ctx.theta if theta is None else theta
    product = getattr(ctx.objective, which)
    return lambda V: product(theta, V)


def _n(ctx):
    return int(ctx.theta.shape[0])


def _seed(ctx, salt):
    return int(np.random.SeedSequence(ctx.rng_seed(salt)).generate_state(1)[0])


# ---------------------------------------------------------------- spectrum


def _top_eigenvalues(ctx):
    """The top LAMBDA_K eigenvalues of H at θ_t, computed once per context (lambda_max and
    sharpness_ratio both read them)."""
    if "top" not in ctx.cache:
        values = spectrum.top_eigenvalues(_matvec(ctx), _n(ctx), k=min(LAMBDA_K, _n(ctx) - 1) or 1,
                                          seed=_seed(ctx, 1))
        ctx.cache["top"] = [float(v) for v in B.to_host(values)]
    return ctx.cache["top"]


def lambda_max(ctx):
    return {f"lambda_max:{i}": v for i, v in enumerate(_top_eigenvalues(ctx))}


def lambda_min(ctx):
    value = spectrum.top_eigenvalues(_matvec(ctx), _n(ctx), k=1, which="SA", seed=_seed(ctx, 2))[0]
    return {"lambda_min": float(value)}


def ggn_lambda_max(ctx):
    return {"ggn_lambda_max": float(spectrum.top_eigenvalues(_matvec(ctx, "ggn_vp"), _n(ctx), k=1,
                                                              seed=_seed(ctx, 3))[0])}


def trace(ctx):
    estimate, error = spectrum.trace_hutchpp(_matvec(ctx), _n(ctx), TRACE_MATVECS, seed=_seed(ctx, 4))
    return {"trace": float(estimate), "trace:stderr": float(error)}


def density(ctx):
    nodes, weights = spectrum.slq_quadrature(_matvec(ctx), _n(ctx), DENSITY_STEPS, DENSITY_PROBES,
                                             seed=_seed(ctx, 5))
    nodes, weights = B.to_host(nodes).ravel(), B.to_host(weights).ravel()
    out = {f"density:node{i}": float(v) for i, v in enumerate(nodes)}
    out.update({f"density:weight{i}": float(v) for i, v in enumerate(weights)})
    return out


def _step_lr(ctx):
    lr = ctx.info.get("lr") if ctx.info else None
    if lr is None:
        lr = getattr(ctx.optimizer, "lr", None)
    return None if lr is None or not isinstance(lr, (int, float)) else float(lr)


def sharpness_ratio(ctx):
    top = _top_eigenvalues(ctx)[0]
    lr = _step_lr(ctx)
    return {"sharpness_ratio": math.nan if lr is None else lr * top, "sharpness_ratio:lr": math.nan if lr is None else lr}


# ---------------------------------------------------------------- gradient noise


def grad_noise(ctx):
    batches = ctx.batches(NOISE_BATCHES, _seed(ctx, 6))
    if len(batches) < 2:
        raise NotImplementedError(f"grad_noise needs at least 2 training mini-batches, the training set has "
                                  f"{len(batches)}")
    grads = np.stack([B.to_host(ctx.objective.with_batch(X, y).grad(ctx.theta)) for X, y in batches]).astype(float)
    size = len(batches[0][1])
    mean = grads.mean(axis=0)
    batch_var = ((grads - mean) ** 2).sum(axis=1).sum() / (len(grads) - 1)   # tr Cov of one batch's gradient
    trace_sigma = batch_var * size                                           # per example: Cov_batch = Σ / b
    g2 = max(float(mean @ mean) - batch_var / len(grads), 0.0)               # unbiased |G|²
    return {"grad_noise:trace_sigma": float(trace_sigma), "grad_noise:g2": g2,
            "grad_noise:b_simple": float(trace_sigma / g2) if g2 > 0 else math.inf}


# ---------------------------------------------------------------- the optimizer's curvature


def _diag_estimate(ctx):
    """(estimate, entries it covers (None: all), the AdaHessian whose averaging it used) or None."""
    state, name = ctx.state or {}, type(ctx.optimizer).__name__
    if name == "AdaHessian":
        return state["D"], None, ctx.optimizer
    if name == "Hybrid":  # its AdaHessian phase
        return (state["ada"]["D"], None, ctx.optimizer._ada) if state.get("phase") == "adahessian" else None
    if name == "SGDPH":
        covered = B.xp.zeros(ctx.theta.shape, dtype=bool)
        for p in ctx.optimizer.one_d(ctx.objective.layout):
            covered[p.slice] = True
        return state["diag"], covered, None
    return None


def diag_error(ctx):
    estimate, covered, averaging = _diag_estimate(ctx)
    exact = B.xp.abs(ctx.objective.hessian_diag(ctx.prev_theta, "exact"))  # both estimates are of |diag H|
    if averaging is not None:
        exact = averaging.average(exact, ctx.objective.layout)
    est, ex = B.to_host(estimate).astype(float), B.to_host(exact).astype(float)
    mask = np.ones(ex.shape, bool) if covered is None else B.to_host(covered)
    out = {"diag_error": _rel(est[mask], ex[mask])}
    if averaging is not None:  # what AdaHessian divides by: the RMS average √(v / (1 - β₂ᵗ)) of its estimates
        state = ctx.state["ada"] if "ada" in ctx.state else ctx.state
        rms = B.to_host(B.xp.sqrt(state["v"] / (1 - averaging.betas[1] ** state["step"]))).astype(float)
        out["diag_error:rms"] = _rel(rms, ex)
    for p in ctx.objective.layout:
        if mask[p.slice].any():
            out[f"diag_error:{p.name}"] = _rel(est[p.slice], ex[p.slice])
    return out


def _rel(got, want):
    norm = float(np.linalg.norm(want))
    return float(np.linalg.norm(got - want)) / norm if norm > 0 else math.nan


def newton_cosine(ctx):
    theta = ctx.prev_theta
    g = B.to_host(ctx.objective.grad(theta)).astype(float)
    update = B.to_host(ctx.theta - theta).astype(float)
    out = {}
    for key, dense in (("newton_cosine:newton", ctx.objective.hessian),
                       ("newton_cosine:gauss_newton", ctx.objective.ggn)):
        M = B.to_host(dense(theta)).astype(float)
        M = (M + M.T) / 2
        eig = np.linalg.eigvalsh(M)
        lam = NEWTON_DAMPING * max(abs(eig[0]), abs(eig[-1]), 1e-30)
        step = -np.linalg.lstsq(M + lam * np.eye(len(g)), g, rcond=None)[0]
        out[key] = _cos(update, step)
    state = ctx.state or {}
    if "cg_residual" in ctx.info:  # HessianFree / GaussNewton: how far CG got towards its own Newton step
        out["newton_cosine:cg_residual"] = float(ctx.info["cg_residual"])
    if type(ctx.optimizer).__name__ == "LBFGS" and state.get("S"):
        s, y = state["S"][-1], state["Y"][-1]
        out["newton_cosine:lbfgs_sHs"] = float(B.to_host(s @ ctx.objective.hvp(theta, s)))
        out["newton_cosine:lbfgs_sy"] = float(B.to_host(s @ y))
    return out


def _cos(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else math.nan


# ---------------------------------------------------------------- layers


def grad_spectral_norm(ctx):
    grad = B.to_host(ctx.objective.grad(ctx.theta)).astype(float)
    out = {}
    for p in ctx.objective.layout:
        if len(p.shape) < 2:
            continue
        G = grad[p.slice].reshape(p.shape)
        if G.ndim == 2:
            out[f"grad_spectral_norm:{p.name}"] = float(np.linalg.norm(G, 2))
        else:  # per filter: (in, kh·kw), averaged over filters
            per = G.reshape(G.shape[0], G.shape[1], -1)
            out[f"grad_spectral_norm:{p.name}"] = float(np.mean(np.linalg.norm(per, 2, axis=(1, 2))))
    return out


def dead_unit_counts(objective, theta):
    """{layer: (dead, units)} for every captured layer but the first: its input
    units (channels of a convolution) that are zero on every example."""
    out = {}
    for layer in objective.capture(theta).layers[1:]:  # the first layer's inputs are the data
        a = B.to_host(layer.inputs)
        channels = objective.layout[layer.weight].shape[1]
        alive = np.abs(a).reshape(a.shape[0], channels, -1).max(axis=(0, 2)) > 0
        out[layer.name] = (int((~alive).sum()), int(alive.size))
    return out


def dead_units(ctx):
    return {f"dead_units:{name}": dead / units for name, (dead, units) in
            dead_unit_counts(ctx.objective, ctx.theta).items()}


def dense_blocks(objective, theta, groups, chunk=64):
    """{group name: the dense block H_gg (host, float64, symmetrized)} of each
    parameter group g, from |g| unit-direction HVPs batched across the groups
    in chunks of ``chunk`` directions."""
    xp, n = B.xp, len(theta)
    units = [(p, i) for p in groups for i in range(p.slice.start, p.slice.stop)]
    rows = {p.name: [] for p in groups}
    for a in range(0, len(units), chunk):
        part = units[a:a + chunk]
        V = xp.zeros((len(part), n), dtype=theta.dtype)
        V[xp.arange(len(part)), xp.asarray([i for _, i in part])] = 1
        HV = objective.hvp(theta, V)
        for r, (p, _) in enumerate(part):
            rows[p.name].append(B.to_host(HV[r, p.slice]))
    blocks = {}
    for p in groups:
        Hgg = np.asarray(rows[p.name], dtype=np.float64)
        blocks[p.name] = (Hgg + Hgg.T) / 2
    return blocks


def offdiag_ratio(Hgg):
    """||H_gg - diag(H_gg)||_F / ||diag(H_gg)||_F."""
    diag = np.diag(Hgg)
    norm = float(np.linalg.norm(diag))
    return float(np.linalg.norm(Hgg - np.diag(diag))) / norm if norm > 0 else math.nan


def offdiag_mass(ctx):
    groups = [p for p in ctx.objective.layout if p.size <= OFFDIAG_MAX]
    return {f"offdiag_mass:{name}": offdiag_ratio(H) for name, H in
            dense_blocks(ctx.objective, ctx.theta, groups).items()}


# ---------------------------------------------------------------- the table and forecasts


def _dense_bytes(ctx, copies=1):
    return copies * _n(ctx) ** 2 * 8


def _lanczos_products(ctx):
    return min(_n(ctx), 20 * LAMBDA_K + 40)


def _diag_reason(ctx):
    if ctx.prev_theta is None:
        return "no step taken yet"
    if type(ctx.optimizer).__name__ not in ("AdaHessian", "SGDPH", "Hybrid"):
        return f"{type(ctx.optimizer).__name__} keeps no Hessian-diagonal estimate (AdaHessian, SGD-PH, Hybrid do)"
    return None


@dataclass(frozen=True)
class Probe:
    name: str
    fn: object
    cost: object


PROBES = {p.name: p for p in (
    Probe("lambda_max", lambda_max, lambda ctx: Cost(_lanczos_products(ctx))),
    Probe("lambda_min", lambda_min, lambda ctx: Cost(_lanczos_products(ctx))),
    Probe("ggn_lambda_max", ggn_lambda_max, lambda ctx: Cost(_lanczos_products(ctx))),
    Probe("trace", trace, lambda ctx: Cost(TRACE_MATVECS)),
    Probe("density", density, lambda ctx: Cost(DENSITY_PROBES * DENSITY_STEPS)),
    Probe("sharpness_ratio", sharpness_ratio, lambda ctx: Cost(_lanczos_products(ctx))),
    Probe("grad_noise", grad_noise, lambda ctx: Cost(
        NOISE_BATCHES, reason=None if ctx.batches is not None else "no training batches given")),
    Probe("diag_error", diag_error, lambda ctx: Cost(_n(ctx), reason=_diag_reason(ctx))),
    Probe("newton_cosine", newton_cosine, lambda ctx: Cost(
        2 * _n(ctx), _dense_bytes(ctx, 3), reason=None if ctx.prev_theta is not None else "no step taken yet")),
    Probe("grad_spectral_norm", grad_spectral_norm, lambda ctx: Cost(1)),
    Probe("dead_units", dead_units, lambda ctx: Cost(1)),
    Probe("offdiag_mass", offdiag_mass, lambda ctx: Cost(
        sum(p.size for p in ctx.objective.layout if p.size <= OFFDIAG_MAX))),
)}


def check_names(names, where="probes"):
    """The probe names, validated (a ValueError naming the unknown ones and the choices)."""
    names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise ValueError(f"{where}: unknown probe{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"choose from {', '.join(PROBES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: a probe is named twice in {names}")
    return names


def forecast(name, ctx, max_products=DEFAULT_MAX_PRODUCTS, memory_budget=None):
    """None if probe ``name`` can run in ``ctx`` within the budget, else one line saying why not."""
    cost = PROBES[name].cost(ctx)
    if cost.reason:
        return f"probe {name} skipped: {cost.reason}"
    if cost.products > max_products:
        return (f"probe {name} skipped: it needs about {cost.products:,} curvature products per call "
                f"(n = {_n(ctx):,}), over the budget of {max_products:,}")
    budget = memory.default_memory_budget if memory_budget is None else memory_budget
    if cost.dense_bytes > budget:
        return (f"probe {name} skipped: it needs {cost.dense_bytes / 2**20:,.0f} MiB of dense matrices "
                f"(n = {_n(ctx):,}), over the memory budget of {budget / 2**20:,.0f} MiB")
    return None


def run_probes(names, ctx, skipped=None, max_products=DEFAULT_MAX_PRODUCTS, log=None):
    """{column: value} of every probe in ``names`` that its forecast allows.
    ``skipped`` ({name: reason}, updated): probes already skipped in this run,
    not forecast again; each new skip is logged once with ``log``."""
    skipped = {} if skipped is None else skipped
    values = {}
    for name in names:
        if name in skipped:
            continue
        if name == "diag_error" and _diag_reason(ctx) is None and _diag_estimate(ctx) is None:
            continue  # the Hybrid before its switch: no estimate yet, not a skip
        reason = forecast(name, ctx, max_products)
        if reason is not None:
            if ctx.prev_theta is None and "no step taken yet" in reason:
                continue  # a step probe at step 0: nothing to measure yet, not a skip
            skipped[name] = reason
            if log is not None:
                log(reason)
            continue
        start = time.perf_counter()
        try:
            values.update(PROBES[name].fn(ctx))
        except (NotImplementedError, memory.CurvatureMemoryError, np.linalg.LinAlgError, FloatingPointError) as err:
            skipped[name] = f"probe {name} skipped: {' '.join(str(err).split())}"
            if log is not None:
                log(skipped[name])
            continue
        values[f"time:{name}"] = time.perf_counter() - start
    return values


def probe_indices(n_train, size, seed):
    """The probe batch: ``size`` training indices drawn without replacement
    by a generator seeded (seed, "probe"), sorted (at most all n_train)."""
    rng = np.random.default_rng([int(seed), 0x70726F6265])  # "probe"
    return np.sort(rng.choice(n_train, min(int(size), n_train), replace=False))


class Prober:
    """The probes of one training run, for the run loop or one's own loop::

        prober = Prober(["lambda_max", "newton_cosine"], probe_objective, every=50, seed=0)
        values = prober(step, theta, prev_theta=..., optimizer=opt, state=state, info=info)

    ``probe_objective``: the Objective on the probe batch. ``batches(count,
    seed)``: training mini-batches for ``grad_noise``. Each call returns
    {column: value}, including ``time:name`` (the seconds each probe took);
    probes that do not fit the budget are skipped for the rest of the run
    with one line (``log``)."""

    def __init__(self, names, objective, every, seed=0, batches=None, max_products=DEFAULT_MAX_PRODUCTS, log=print):
        self.names = check_names(names)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"probes: every must be an int >= 1 (steps between probes), got {every!r}")
        self.objective, self.every, self.seed = objective, every, seed
        self.batches, self.max_products, self.log = batches, max_products, log
        self.skipped = {}

    def due(self, step):
        return step % self.every == 0

    def __call__(self, step, theta, prev_theta=None, optimizer=None, state=None, info=None):
        ctx = ProbeContext(self.objective, theta, step, self.seed, prev_theta, optimizer, state, info or {},
                           self.batches)
        return run_probes(self.names, ctx, self.skipped, self.max_products, self.log)
