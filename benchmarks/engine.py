"""Benchmark: tinygrad2 against a hand-written NumPy MLP (and torch, if present).

    python -m benchmarks.engine            # full run (~0.75 s per cell)
    python -m benchmarks.engine --quick    # tiny run (a smoke test, a few seconds)
    python -m benchmarks.engine --profile  # + where tinygrad2's time goes at batch 64
    python -m benchmarks.engine --directions  # + time per direction of K-direction HVP passes, best K
    python -m benchmarks.engine --composed-loss  # loss as log_softmax + indexing + mean
    options: --threads N (BLAS threads; default 1, 0 = library default), --rounds R,
             --seed S, --data-dir DIR, --no-verify (see benchmarks.harness)

Model: MLP 784-32-10 (linear, ReLU, linear), softmax cross-entropy (mean over
the batch, integer labels), float32, at batch 64 and batch 1000, on the first
1,000 MNIST training images (read by ``experiments.data``: ``--data-dir`` >
``$TINYGRAD2_DATA`` > the user cache folder).

Contenders, timed interleaved (a shuffled round-robin, so that slow drifts of a
noisy shared machine hit every contender alike), median of many repeats after
a warm-up (``benchmarks.harness.run_rounds``):

* NumPy: ``benchmarks.reference.mlp`` -- manual backprop for the gradient and
  Pearlmutter's R-operator (forward R-pass + backward R-pass) for H v.
* tinygrad2 "module": separate leaves W1, b1, W2, b2, as a training loop holds
  them; grad = forward + ``loss.backward()``; HVP = the same with each leaf
  carrying its slice of v as a tangent (forward-over-reverse), read from
  ``param.grad.tangent``.
* tinygrad2 "flat": the functional API on one flat theta, sliced and reshaped
  inside f: ``tinygrad2.value_and_grad(f)(theta)`` and ``tinygrad2.hvp(f, theta, v)``.
* torch eager (only when ``import torch`` works): grad by ``torch.autograd.grad``,
  HVP by ``torch.func.jvp(torch.func.grad(f))`` (forward-over-reverse).

Every "grad" call returns the loss and the gradient; every "HVP" call returns
one Hessian-vector product (K = 1 direction). One more cell pushes K = 16
random directions through one flat HVP pass; its paired ratio to the flat
gradient is reported divided by 16 (the cost per direction), beside the same
16 directions through the hand-written NumPy R-pass in its best layout
(``reference.mlp.hvp_directions``: what NumPy code can reach without an engine).

The tinygrad2 loss is ``logits.cross_entropy(y)`` (the engine's fused
primitive) when the engine has it, else (or with ``--composed-loss``)
``-logits.log_softmax()[arange(n), y].mean()``.

Before timing, the NumPy reference is validated against tinygrad2's gradient
and HVP (both parameter styles, both loss spellings, plus the engine's
reverse-over-reverse HVP, and K = 3 directions in one pass, the engine's and
the hand-written one, against three single HVPs) in float64 on a small
network; the script aborts if they disagree by more than 1e-10 (relative to
the largest entry).
"""
from __future__ import annotations

import sys
import time
import timeit

import numpy as np

import tinygrad2
from tinygrad2 import Tensor

from . import harness as H
from .reference import mlp as ref

NAME = "benchmarks.engine"
SIZES = (784, 32, 10)
BATCHES = (64, 1000)
VALIDATION_TOL = 1e-10

# targets: tinygrad2 HVP <= 2.0x its own gradient; tinygrad2 gradient <= the
# given multiple of the hand-written NumPy gradient
HVP_OVER_GRAD_TARGET = 2.0
DIRECTIONS = 16  # the batched-directions cell: K HVPs in one pass, reported per direction
GRAD_OVER_NUMPY_TARGET = {64: 2.5, 1000: 1.5}


# ================================================================ tinygrad2 model


# "fused": Tensor.cross_entropy (one primitive) when the engine has it;
# "composed": log_softmax, pick the label entries by indexing, mean.
LOSS_STYLE = "fused" if hasattr(Tensor, "cross_entropy") else "composed"


def tg_loss(W1, b1, W2, b2, X, rows, y):
    """The same model written with tinygrad2 Tensors."""
    h = (X @ W1 + b1).relu()
    logits = h @ W2 + b2
    if LOSS_STYLE == "fused":
        return logits.cross_entropy(y)
    return -logits.log_softmax(axis=-1)[rows, y].mean()


def make_tg_module(X, y):
    """Module style: one leaf per parameter."""
    Xt, rows = Tensor(X), np.arange(X.shape[0])

    def grad(params):
        leaves = [Tensor(p, requires_grad=True) for p in params]
        loss = tg_loss(*leaves, Xt, rows, y)
        loss.backward()
        return loss.item(), tuple(p.grad.data for p in leaves)

    def hvp(params, V):
        leaves = [Tensor(p, requires_grad=True, tangent=v) for p, v in zip(params, V)]
        loss = tg_loss(*leaves, Xt, rows, y)
        loss.backward(tangents_only=True)  # only the tangents (H v) are read
        return tuple(p.grad.tangent[0] for p in leaves)

    return grad, hvp


def make_tg_flat_f(X, y, shapes):
    """f(theta) -> loss, with W1, b1, W2, b2 sliced out of theta and reshaped."""
    Xt, rows = Tensor(X), np.arange(X.shape[0])
    bounds = ref.bounds(shapes)

    def f(theta):
        W1, b1, W2, b2 = (theta[a:b].reshape(s) for a, b, s in bounds)
        return tg_loss(W1, b1, W2, b2, Xt, rows, y)

    return f


def make_tg_flat(X, y, shapes):
    """Flat style: the functional API on f(theta), which slices and reshapes
    one 1-D parameter vector."""
    f = make_tg_flat_f(X, y, shapes)
    value_and_grad = tinygrad2.value_and_grad(f)

    def grad(theta):
        return value_and_grad(theta)

    def hvp(theta, v):
        return tinygrad2.hvp(f, theta, v)

    return grad, hvp


# ================================================================ torch (optional)


def make_torch(X, y):
    """torch eager grad and forward-over-reverse HVP, or None without torch."""
    torch = H.import_torch()
    if torch is None:
        return None
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def loss_fn(W1, b1, W2, b2):
        h = torch.relu(Xt @ W1 + b1)
        return torch.nn.functional.cross_entropy(h @ W2 + b2, yt)

    def grad(params):
        leaves = [p.detach().requires_grad_(True) for p in params]
        loss = loss_fn(*leaves)
        grads = torch.autograd.grad(loss, leaves)
        return loss.item(), grads

    grad_fn = torch.func.grad(loss_fn, argnums=(0, 1, 2, 3))

    def hvp(params, V):
        _, hv = torch.func.jvp(grad_fn, tuple(params), tuple(V))
        return hv

    to_torch = lambda arrays: tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
    return grad, hvp, to_torch, torch.__version__


# ================================================================ validation


def _rel_err(a, b):
    a, b = np.concatenate([np.ravel(t) for t in a]), np.concatenate([np.ravel(t) for t in b])
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def validate(rng):
    """float64, small sizes: the NumPy reference against tinygrad2, both
    parameter styles and every loss spelling the engine supports."""
    global LOSS_STYLE
    chosen = LOSS_STYLE
    styles = ["composed"] + (["fused"] if hasattr(Tensor, "cross_entropy") else [])
    seed = int(rng.integers(1 << 31))  # the same network and data for every style
    try:
        for style in styles:
            LOSS_STYLE = style
            _validate(np.random.default_rng(seed), style)
    finally:
        LOSS_STYLE = chosen


def _validate(rng, style):
    d_in, d_hidden, d_out, n = 13, 7, 5, 11
    params = ref.init_params(rng, d_in, d_hidden, d_out, dtype=np.float64)
    V = tuple(rng.standard_normal(p.shape) for p in params)
    X = rng.standard_normal((n, d_in))
    y = rng.integers(0, d_out, n)
    shapes = [p.shape for p in params]

    loss_ref, g_ref = ref.loss_and_grad(params, X, y)
    loss_r2, g_r2, hv_ref = ref.hvp(params, X, y, V)
    mod_grad, mod_hvp = make_tg_module(X, y)
    flat_grad, flat_hvp = make_tg_flat(X, y, shapes)
    theta, v = ref.flatten(params), ref.flatten(V)

    loss_mod, g_mod = mod_grad(params)
    loss_flat, g_flat = flat_grad(theta)
    hv_mod = mod_hvp(params, V)
    hv_flat = flat_hvp(theta, v)
    hv_ror = tinygrad2.hvp_reverse_over_reverse(
        make_tg_flat_f(X, y, shapes), theta, v)  # the engine's independent route
    V3 = np.stack([v] + [rng.standard_normal(theta.size) for _ in range(2)])  # K = 3 in one pass
    hv3_ref = np.stack([ref.flatten(ref.hvp(params, X, y, ref.unflatten(d, shapes))[2]) for d in V3])

    checks = {
        "loss (module)": abs(loss_mod - loss_ref) / abs(loss_ref),
        "loss (flat)": abs(loss_flat - loss_ref) / abs(loss_ref),
        "loss (R-op pass)": abs(loss_r2 - loss_ref) / abs(loss_ref),
        "grad (R-op pass) vs manual backprop": _rel_err(g_r2, g_ref),
        "grad tinygrad2 module vs NumPy": _rel_err(g_mod, g_ref),
        "grad tinygrad2 flat   vs NumPy": _rel_err([g_flat], [ref.flatten(g_ref)]),
        "HVP  tinygrad2 module vs NumPy R-op": _rel_err(hv_mod, hv_ref),
        "HVP  tinygrad2 flat   vs NumPy R-op": _rel_err([hv_flat], [ref.flatten(hv_ref)]),
        "HVP  tinygrad2 rev-over-rev vs R-op": _rel_err([hv_ror], [ref.flatten(hv_ref)]),
        "HVP  K=3 NumPy R-op pass vs R-op each": _rel_err([ref.hvp_directions(params, X, y, V3)], [hv3_ref]),
        "HVP  K=3 tinygrad2 flat vs R-op each": _rel_err([flat_hvp(theta, V3)], [hv3_ref]),
    }
    # the R-op HVP must not be trivially small: compare against a finite
    # difference of the reference gradient as a sanity check of scale
    eps = 1e-6
    plus = ref.loss_and_grad(tuple(p + eps * d for p, d in zip(params, V)), X, y)[1]
    minus = ref.loss_and_grad(tuple(p - eps * d for p, d in zip(params, V)), X, y)[1]
    fd = tuple((a - b) / (2 * eps) for a, b in zip(plus, minus))
    fd_err = _rel_err(fd, hv_ref)

    print(f"validation, loss {style} (float64, MLP {d_in}-{d_hidden}-{d_out}, batch {n}; "
          f"max |diff| / max |ref|, tolerance {VALIDATION_TOL:g}):")
    failed = []
    for name, err in checks.items():
        ok = err <= VALIDATION_TOL
        print(f"  {name:<40s} {err:9.2e}  {'ok' if ok else 'FAIL'}")
        if not ok:
            failed.append(name)
    print(f"  {'HVP  R-op vs central finite difference':<40s} {fd_err:9.2e}  "
          f"{'ok' if fd_err < 1e-6 else 'FAIL'} (tolerance 1e-6, O(eps^2) truncation)")
    if fd_err >= 1e-6:
        failed.append("finite difference")
    if failed:
        print("ABORT: the NumPy reference and tinygrad2 disagree: " + ", ".join(failed))
        sys.exit(1)


# ================================================================ timing


def run_batch(batch, X, y, params, V, torch_kit, args, rng):
    Xb, yb = X[:batch], y[:batch]
    shapes = [p.shape for p in params]
    theta, v = ref.flatten(params), ref.flatten(V)
    v16 = rng.standard_normal((DIRECTIONS, theta.size)).astype(theta.dtype)
    mod_grad, mod_hvp = make_tg_module(Xb, yb)
    flat_grad, flat_hvp = make_tg_flat(Xb, yb, shapes)

    # float32 sanity: every contender computes the same numbers
    _, g_np, hv_np = ref.hvp(params, Xb, yb, V)
    errs = {
        "module grad": _rel_err(mod_grad(params)[1], g_np),
        "flat grad": _rel_err([flat_grad(theta)[1]], [ref.flatten(g_np)]),
        "module HVP": _rel_err(mod_hvp(params, V), hv_np),
        "flat HVP": _rel_err([flat_hvp(theta, v)], [ref.flatten(hv_np)]),
        f"flat HVP K={DIRECTIONS}": _rel_err([flat_hvp(theta, v16)], [ref.hvp_directions(params, Xb, yb, v16)]),
    }
    cells = {
        "np_grad": lambda: ref.loss_and_grad(params, Xb, yb),
        "np_hvp": lambda: ref.hvp(params, Xb, yb, V),
        "mod_grad": lambda: mod_grad(params),
        "mod_hvp": lambda: mod_hvp(params, V),
        "flat_grad": lambda: flat_grad(theta),
        "flat_hvp": lambda: flat_hvp(theta, v),
    }
    if torch_kit is not None:
        t_grad, t_hvp, to_torch, _ = torch_kit.make(Xb, yb)
        tp, tV = to_torch(params), to_torch(V)
        errs["torch grad"] = _rel_err([g.numpy() for g in t_grad(tp)[1]], g_np)
        errs["torch HVP"] = _rel_err([h.numpy() for h in t_hvp(tp, tV)], hv_np)
        cells["torch_grad"] = lambda: t_grad(tp)
        cells["torch_hvp"] = lambda: t_hvp(tp, tV)
    worst = max(errs.values())
    if worst > 1e-3:
        print(f"WARNING: float32 results disagree at batch {batch}: {errs}")
    timings = H.run_rounds(cells, rng, rounds=args.rounds, target_s=args.target, min_rounds=args.min_reps,
                           max_rounds=args.max_reps, warmup_s=args.warmup)
    paired = {
        f"{style} grad/NumPy grad": timings.ratio(f"{key}_grad", "np_grad")
        for style, key in (("module", "mod"), ("flat", "flat"))
    }
    paired.update({
        f"{style} HVP/grad": timings.ratio(f"{key}_hvp", f"{key}_grad")
        for style, key in (("module", "mod"), ("flat", "flat"))
    })
    # K directions in one pass, flat and by hand (best layout), timed apart with warm_each: a gradient
    # timed right after a 20 ms pass runs on evicted caches (batch 1000, one process: 0.83-0.84x shuffled
    # among the other cells, 0.85-0.87x warm)
    passes = H.run_rounds({"flat_grad": cells["flat_grad"], "flat_hvp16": lambda: flat_hvp(theta, v16),
                           "np_hvp16": lambda: ref.hvp_directions(params, Xb, yb, v16)},
                          rng, rounds=args.rounds, target_s=args.target, min_rounds=args.min_reps,
                          max_rounds=args.max_reps, warmup_s=args.warmup, warm_each=True, equal_rounds=True)
    for who, key in (("flat", "flat_hvp16"), ("NumPy R-op", "np_hvp16")):
        paired[f"{who} HVP per direction (K={DIRECTIONS} in one pass)/flat grad"] = passes.ratio(
            key, "flat_grad").scaled(DIRECTIONS)
    paired[f"flat K={DIRECTIONS} pass/NumPy K={DIRECTIONS} pass"] = passes.ratio("flat_hvp16", "np_hvp16")
    return timings.medians, timings.reps, worst, paired


class _TorchKit:
    def __init__(self, version):
        self.version = version

    def make(self, X, y):
        return make_torch(X, y)


def _us(seconds):
    return f"{seconds * 1e6:,.0f} us" if seconds < 0.1 else f"{seconds * 1e3:,.1f} ms"


def _mark(ok):
    return "PASS" if ok else "FAIL"


def print_table(results, torch_kit):
    head = ["batch", "tinygrad2", "grad tg2", "grad NumPy", "ratio",
            "HVP tg2", "HVP NumPy R-op", "tg2 HVP/grad", "HVP<=2.0x grad", "grad vs NumPy target"]
    if torch_kit is not None:
        head += ["grad torch", "HVP torch"]
    rows = []
    for batch, (med, _, _, paired) in results.items():
        for style, key in (("module", "mod"), ("flat", "flat")):
            g, h = med[f"{key}_grad"], med[f"{key}_hvp"]
            ratio, hg = paired[f"{style} grad/NumPy grad"], paired[f"{style} HVP/grad"]
            target = GRAD_OVER_NUMPY_TARGET[batch]
            row = [str(batch), style, _us(g), _us(med["np_grad"]), f"{ratio:.2f}",
                   _us(h), _us(med["np_hvp"]), f"{hg:.2f}",
                   _mark(hg.median <= HVP_OVER_GRAD_TARGET),
                   f"{_mark(ratio.median <= target)} (<= {target}x)"]
            if torch_kit is not None:
                row += [_us(med["torch_grad"]), _us(med["torch_hvp"])]
            rows.append(row)
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


# ================================================================ profile (--profile)


def profile_batch64(X, y, params, V, rng):
    """Where tinygrad2's time goes at batch 64: primitive applications per
    call, time inside the primitives' array code (their forward/jvp rules;
    matmul split out) versus the rest (engine bookkeeping and the glue NumPy
    calls in vjp rules), the per-application engine cost on tiny arrays, and a
    cProfile listing."""
    import cProfile
    import pstats
    from collections import Counter
    P = sys.modules["tinygrad2.primitives"]  # (the package rebinds the name `primitives` to REGISTRY)

    batch = 64
    Xb, yb = X[:batch], y[:batch]
    shapes = [p.shape for p in params]
    theta, v = ref.flatten(params), ref.flatten(V)
    v16 = rng.standard_normal((DIRECTIONS, theta.size)).astype(theta.dtype)
    mod_grad, mod_hvp = make_tg_module(Xb, yb)
    flat_grad, flat_hvp = make_tg_flat(Xb, yb, shapes)
    jobs = {
        "module grad": lambda: mod_grad(params),
        "module HVP": lambda: mod_hvp(params, V),
        "flat grad": lambda: flat_grad(theta),
        "flat HVP": lambda: flat_hvp(theta, v),
    }
    reps = 400
    print(f"\n== profile at batch {batch} (loss: {LOSS_STYLE}; {reps} calls each) ==")

    # -- uninstrumented medians, interleaved like the benchmark
    plain = H.run_rounds(dict(jobs, np_grad=lambda: ref.loss_and_grad(params, Xb, yb),
                              np_hvp=lambda: ref.hvp(params, Xb, yb, V)),
                         rng, target_s=0.3, min_rounds=100, max_rounds=3000, warmup_s=0.1).medians

    # -- instrument: count apply() per primitive and time the rules' array code
    counts = Counter()
    saved_apply = P.Primitive.__call__  # every primitive application goes through it
    timer = H.RuleTimer(P.REGISTRY)  # some rules call other primitives' forward: the outermost only
    kernel_t, kernel_n = timer.spent, timer.calls

    def counting_apply(prim, *inputs, **params):
        counts[prim.name] += 1
        return saved_apply(prim, *inputs, **params)

    breakdown = {}
    try:
        P.Primitive.__call__ = counting_apply
        timer.install()
        print("median: uninstrumented; mean: instrumented run, which the split on the right divides")
        print(f"{'':12s} {'median':>8s} {'mean':>8s} {'applies':>7s} {'fwd':>4s} {'bwd':>4s} "
              f"{'matmul rules':>12s} {'other rules':>11s} {'rest (engine+glue)':>18s}")
        for name, fn in jobs.items():
            counts.clear()
            _forward_only(name, Xb, yb, params, V, shapes, theta, v)
            n_fwd = sum(counts.values())
            counts.clear()
            fn()
            total_counts = dict(counts)
            n_total = sum(total_counts.values())
            for _ in range(20):
                fn()
            timer.clear()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            t = (time.perf_counter() - t0) / reps  # mean, like the rule times
            kt = {k: v / reps for k, v in kernel_t.items()}
            breakdown[name] = (kt, {k: n / reps for k, n in kernel_n.items()}, total_counts)
            mm = kt.get("matmul.forward", 0) + kt.get("matmul.jvp", 0)
            other = sum(kt.values()) - mm
            print(f"{name:12s} {plain[name]*1e6:6.0f}us {t*1e6:6.0f}us {n_total:7d} {n_fwd:4d} "
                  f"{n_total-n_fwd:4d} {mm*1e6:10.0f}us {other*1e6:9.0f}us "
                  f"{(t-mm-other)*1e6:9.0f}us ({(t-mm-other)/t:4.0%})")
    finally:
        P.Primitive.__call__ = saved_apply
        timer.restore()
    print(f"{'NumPy ref':12s} grad {plain['np_grad']*1e6:.0f}us, R-op HVP {plain['np_hvp']*1e6:.0f}us "
          f"(all of it array code)")
    for name, (kt, kn, total_counts) in breakdown.items():
        print(f"\n{name}: applications per call: "
              + ", ".join(f"{k} {c}" for k, c in sorted(total_counts.items(), key=lambda kv: -kv[1])))
        print("  rule time per call: " + ", ".join(
            f"{k} {t*1e6:.0f}us/{kn[k]:.0f}" for k, t in sorted(kt.items(), key=lambda kv: -kv[1])))

    # -- engine cost per application on tiny arrays (a chain of y = y * c)
    a = np.ones(3, np.float32)

    def chain(requires_grad, tangent, backward, n=100):
        x = Tensor(a, requires_grad=requires_grad, tangent=a if tangent else None)
        out = x
        for _ in range(n):
            out = out * 1.0001
        if backward:
            out.sum().backward()

    def per_op(fn, n=100):
        return min(timeit.repeat(fn, number=20, repeat=15)) / 20 / n

    raw = min(timeit.repeat(lambda: [a * 1.0001 for _ in range(100)], number=20, repeat=15)) / 2000
    print("\nper primitive application on a 3-element array (chain y = y * 1.0001):")
    print(f"  raw NumPy multiply {raw*1e6:.2f}us; "
          f"apply {per_op(lambda: chain(False, False, False))*1e6:.2f}us; "
          f"apply recording {per_op(lambda: chain(True, False, False))*1e6:.2f}us; "
          f"apply + backward {per_op(lambda: chain(True, False, True))*1e6:.2f}us; "
          f"apply with tangent {per_op(lambda: chain(False, True, False))*1e6:.2f}us; "
          f"apply with tangent + backward {per_op(lambda: chain(True, True, True))*1e6:.2f}us")

    for name in ("module grad", "module HVP"):
        fn = jobs[name]
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(reps):
            fn()
        prof.disable()
        print(f"\n-- cProfile, {name}, batch {batch}, {reps} calls (top 18 by tottime) --")
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)


def _forward_only(name, Xb, yb, params, V, shapes, theta, v):
    """Run just the forward pass of a profiled job (to split apply counts)."""
    Xt, rows = Tensor(Xb), np.arange(Xb.shape[0])
    tangents = V if "HVP" in name else (None,) * 4
    if name.startswith("module"):
        leaves = [Tensor(p, requires_grad=True, tangent=t) for p, t in zip(params, tangents)]
        tg_loss(*leaves, Xt, rows, yb)
    else:
        th = Tensor(theta, requires_grad=True, tangent=v if "HVP" in name else None)
        make_tg_flat_f(Xb, yb, shapes)(th)


def _time_n(fn, n):
    for _ in range(20):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# ================================================================ main


SWEEP_K = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def directions_sweep(X, y, params, args, rng):
    """Per-direction time of one HVP pass with K directions, divided by the
    flat gradient's time, paired within rounds, for every K in SWEEP_K and
    batch in BATCHES; prints the table and the best K of each batch (the
    dense-curvature planner's ``tinygrad2.memory.preferred_chunk`` comes
    from this table)."""
    shapes = [p.shape for p in params]
    theta = ref.flatten(params)
    print(f"\n== directions sweep: one HVP pass with K directions, time per direction / flat gradient "
          f"(median [min-max] of paired ratios over rounds) ==")
    print("| batch | " + " | ".join(f"K={k}" for k in SWEEP_K) + " | best K |")
    print("|---" * (len(SWEEP_K) + 2) + "|")
    best, floors = {}, {}
    for batch in BATCHES:
        flat_grad, flat_hvp = make_tg_flat(X[:batch], y[:batch], shapes)
        cells = {"grad": lambda: flat_grad(theta)}
        for k in SWEEP_K:
            V = rng.standard_normal((k, theta.size)).astype(theta.dtype)
            cells[f"K{k}"] = (lambda V=V: flat_hvp(theta, V))
        # the floor of any K-direction pass: its two first-layer products, X W1' and Xᵀ δ1' for
        # every direction, as one GEMM of K·hidden columns each (what the engine's fold runs)
        Xb, cols = X[:batch], DIRECTIONS * shapes[0][1]
        W_dirs = rng.standard_normal((Xb.shape[1], cols)).astype(Xb.dtype)
        D_dirs = rng.standard_normal((batch, cols)).astype(Xb.dtype)
        cells["floor"] = lambda: (Xb @ W_dirs, Xb.T @ D_dirs)
        # warm_each: a gradient timed right after a K = 256 pass ran on evicted caches, up to 1.3x
        # slower, which flattered the large K (batch 1000, K = 16: 0.68x against 0.84x warm)
        timings = H.run_rounds(cells, rng, rounds=args.rounds or (3 if args.quick else 15),
                               warmup_s=0.01 if args.quick else 0.2, warm_each=True)
        per = {k: timings.ratio(f"K{k}", "grad") for k in SWEEP_K}
        floors[batch] = timings.ratio("floor", "grad").scaled(DIRECTIONS)
        scaled = {k: r.scaled(k) for k, r in per.items()}
        best[batch] = min(scaled, key=lambda k: scaled[k].median)
        print(f"| {batch} | " + " | ".join(f"{r.median:.2f} [{r.lo:.2f}-{r.hi:.2f}]" for r in scaled.values())
              + f" | {best[batch]} |")
    print(f"floor at K={DIRECTIONS}: the first layer's two {shapes[0][0]}-wide products per direction alone "
          f"(X W1' and X^T d1', one folded GEMM each) / gradient: "
          + ", ".join(f"{r.median:.2f}x [{r.lo:.2f}-{r.hi:.2f}] at batch {b}" for b, r in floors.items()))
    print(f"planner: tinygrad2.memory.preferred_chunk = {tinygrad2.memory.preferred_chunk} "
          f"(best K here: " + ", ".join(f"{k} at batch {b}" for b, k in best.items()) + ")")
    return best


def main(argv=None):
    ap = H.make_parser(__doc__, threads=1, seed=True,
                       quick_help="tiny run (~0.03 s per cell; a smoke test)",
                       profile_help="also print where tinygrad2's time goes at batch 64",
                       rounds_help="timed rounds per cell (default: calibrated for ~0.75 s per cell, "
                                   "--quick ~0.03 s)")
    ap.add_argument("--composed-loss", action="store_true",
                    help="write the loss as log_softmax + label indexing + mean even when "
                         "the engine has the fused Tensor.cross_entropy")
    ap.add_argument("--directions", action="store_true",
                    help=f"also sweep the directions per HVP pass, K in {', '.join(map(str, SWEEP_K))}: "
                         f"time per direction / gradient, and the best K per batch")
    args = ap.parse_args(argv)
    global LOSS_STYLE
    if args.composed_loss:
        LOSS_STYLE = "composed"
    if args.quick:
        args.target, args.min_reps, args.max_reps, args.warmup = 0.03, 5, 2000, 0.01
    else:
        args.target, args.min_reps, args.max_reps, args.warmup = 0.75, 50, 20000, 0.3

    rng = np.random.default_rng(args.seed)
    # one BLAS thread by default: on a shared 2-core box a multi-threaded BLAS
    # stalls whenever a neighbour takes a core
    H.setup(NAME, args)
    print(f"tinygrad2 engine benchmark: MLP {'-'.join(map(str, SIZES))} (linear, ReLU, linear), "
          f"softmax cross-entropy (mean), float32")
    print("loss written as: " + ("Tensor.cross_entropy (fused primitive)" if LOSS_STYLE == "fused"
                                 else "log_softmax + label indexing + mean (composed)"))
    validate(np.random.default_rng(1234))

    n = max(BATCHES)
    X, y, what = H.mnist_train(NAME, args, n)
    X = X.reshape(n, -1)
    print(f"data: {what}")
    params = ref.init_params(rng, *SIZES, dtype=np.float32)
    V = tuple(rng.standard_normal(p.shape).astype(np.float32) for p in params)

    kit = make_torch(X[:2], y[:2])
    torch_kit = _TorchKit(kit[3]) if kit is not None else None
    if torch_kit is not None:
        print(f"torch {torch_kit.version} found: torch eager columns added")
    else:
        print("torch: not importable (pip install '.[compare]'): torch columns skipped")

    results = {}
    for batch in BATCHES:
        results[batch] = run_batch(batch, X, y, params, V, torch_kit, args, rng)
    per_cell = f"{args.rounds} rounds" if args.rounds else f"~{args.target:g} s per cell"
    print(f"\ntiming: median of interleaved repeats ({per_cell} after "
          f"{args.warmup:g} s warm-up); grad = loss + gradient, HVP = one H v (K = 1);\n"
          f"ratio and HVP/grad columns: median over rounds of the paired ratio within a round "
          f"(the contenders run in a shuffled round-robin)")
    for batch, (_, reps, worst, _) in results.items():
        print(f"  batch {batch}: repeats per cell "
              + ", ".join(f"{k} {n}" for k, n in reps.items())
              + f"; float32 max rel. diff vs NumPy {worst:.1e}")
    print()
    print_table(results, torch_kit)
    print()
    for batch, (med, *_) in results.items():
        print(f"  batch {batch}: NumPy R-op HVP/grad = {med['np_hvp'] / med['np_grad']:.2f}x"
              f"; tg2 module/flat grad = {med['mod_grad'] / med['flat_grad']:.2f}x")
    print("noise check, the same ratios as ratios of the medians above "
          "(far from the table's = the run was noisy, rerun):")
    for batch, (med, *_) in results.items():
        print(f"  batch {batch}: " + ", ".join(
            f"{style} grad/NumPy grad {med[key + '_grad'] / med['np_grad']:.2f}x"
            for style, key in (("module", "mod"), ("flat", "flat"))) + ", " + ", ".join(
            f"{style} HVP/grad {med[key + '_hvp'] / med[key + '_grad']:.2f}x"
            for style, key in (("module", "mod"), ("flat", "flat"))))
    print("paired ratios, median [min-max] over the rounds:")
    for batch, (*_, paired) in results.items():
        print(f"  batch {batch}: " + ", ".join(f"{k} {r.spread()}" for k, r in paired.items()))
    print(f"targets: tg2 HVP <= {HVP_OVER_GRAD_TARGET}x its own grad; tg2 grad <= "
          + " / ".join(f"{t}x NumPy at batch {b}" for b, t in GRAD_OVER_NUMPY_TARGET.items()))

    if args.directions:
        directions_sweep(X, y, params, args, rng)
    if args.profile:
        profile_batch64(X, y, params, V, rng)


if __name__ == "__main__":
    main()
