"""Benchmark: dense Hessians, tinygrad2's Objective against a hand-written
NumPy R-operator (and torch.func when torch is importable).

    python -m benchmarks.curvature             # full Hessians, 3 runs per chunk
    python -m benchmarks.curvature --quick     # tiny: one chunk (K <= 32) of rows, 1 run (a smoke test)
    python -m benchmarks.curvature --profile   # + where tinygrad2's time goes (1 BLAS thread)
    options: --threads N (BLAS threads; default 0 = BLAS's own), --chunk K, --rounds R (alias
             --repeats: runs per chunk), --cases digits mnist, --data-dir DIR, --no-verify

Cases (mean softmax cross-entropy, tanh hidden layer -- smooth, so the dense
Hessian is the exact second derivative everywhere):

* digits: MLP 64-32-10 on all 1,797 scikit-learn digits (pixels / 16, through
  ``experiments.data.load_digits``), float64; target: tinygrad2 time <= 1.0x
  the NumPy reference;
* mnist:  MLP 784-16-10 on the first 1,000 MNIST training images (pixels / 255)
  read by ``experiments.data`` (``--data-dir`` > ``$TINYGRAD2_DATA`` > the user
  cache folder), float32; target <= 1.2x.

Contenders, all assembling H from chunks of K unit directions, the same K
(tinygrad2's own automatic choice unless --chunk):

* tinygrad2: ``Objective(model_fn, "cross_entropy", X, y, layout)``: one
  batched forward-over-reverse ``hvp`` per chunk (what ``hessian`` loops over);
* NumPy R-op: ``benchmarks.reference.hessian`` -- Pearlmutter's forward and
  backward R-pass written out by hand, K directions at once, every product one
  GEMM;
* torch (optional, only if importable; never installed by this script):
  ``torch.func.vmap`` of ``jvp(grad(f))`` over the chunk.

tinygrad2's engine treats a parameter block whose tangent is zero in every
direction as a symbolic zero (unit directions inside W1 skip every product
with the W2, b1, b2 tangents); the R-op does the dense work. So a second table
times tinygrad2's ``hvp`` against the R-op's on 4 chunks of dense random
directions, where nothing can be skipped: the engine's own efficiency.

Validation first: on two row blocks in float64 every contender must agree with
the NumPy R-op to 1e-12 (relative, Frobenius); the timed results are compared
again in the case's dtype.

Timing: for every chunk each contender runs R times, interleaved with the
others (the order alternates), and its fastest run counts; the chunks' times
are summed. On a shared machine this keeps bursts of other load out of the
comparison (whole-Hessian wall times varied by 2x between identical runs).
The per-chunk ratios (each chunk's fastest tinygrad2 run over the R-op's) are
reported too, median and spread (min - max).

Memory: each contender assembles the rows once more in its own subprocess,
tinygrad2 through ``Objective.hessian`` itself, under tracemalloc (NumPy
reports its buffers to it; torch's allocator does not, so torch gets only the
growth of the peak RSS; with --quick the subprocesses run at once and torch's
is left out). The peak is compared with the result's own size plus
one chunk's irreducible working set, K · itemsize · (n + N (H + C)): the K
directions and one tangent per layer output (target <= 1.5x). tinygrad2's own
forecast (``Objective.memory_forecast``) is printed beside it.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from tinygrad2 import Layout, Objective, Tensor
from tinygrad2.directions import unit_rows as _unit_rows

from . import harness as H
from .reference import hessian as ref

NAME = "benchmarks.curvature"
CASES = {
    "digits": dict(sizes=(64, 32, 10), batch=1797, dtype="float64", target=1.0),
    "mnist": dict(sizes=(784, 16, 10), batch=1000, dtype="float32", target=1.2),
}
ACTIVATION = "tanh"
MEMORY_TARGET = 1.5
QUICK_CHUNK = 32  # --quick caps tinygrad2's chunk at this (unless --chunk says otherwise)
VALIDATION_TOL = 1e-12


# ================================================================ data and model


def load_case(name, args):
    """(X, y, theta, description) for a case; theta drawn with a fixed seed:
    W ~ N(0, 1/fan_in), b ~ N(0, 0.1²)."""
    case = CASES[name]
    D, Hd, C = case["sizes"]
    N, dt = case["batch"], np.dtype(case["dtype"])
    rng = np.random.default_rng(0)
    if name == "digits":
        X, y = H.digits_all()
        what = "scikit-learn digits (all 1,797, via experiments.data.load_digits)"
    else:
        X, y, what = H.mnist_train(NAME, args, N)
        X = X.reshape(N, -1)
    theta = np.concatenate([
        rng.standard_normal(D * Hd) / np.sqrt(D), 0.1 * rng.standard_normal(Hd),
        rng.standard_normal(Hd * C) / np.sqrt(Hd), 0.1 * rng.standard_normal(C),
    ])
    return np.ascontiguousarray(X, dt), y, theta.astype(dt), what


def make_objective(name, X, y):
    D, Hd, C = CASES[name]["sizes"]
    layout = Layout([("W1", (D, Hd), "weight"), ("b1", (Hd,), "bias"),
                     ("W2", (Hd, C), "weight"), ("b2", (C,), "bias")])

    def model(theta, X):
        p = layout.unflatten(theta)
        return getattr(X @ p["W1"] + p["b1"], ACTIVATION)() @ p["W2"] + p["b2"]

    return Objective(model, "cross_entropy", X, y, layout, memory_budget=float("inf"))


def torch_available():
    return H.import_torch() is not None  # (needs the functional transforms, torch.func)


def torch_chunk(name, X, y, theta, threads):
    """torch eager, the same assembly: ``vmap`` over a chunk of unit vectors
    of the forward-over-reverse HVP ``jvp(grad(f))`` (torch.func)."""
    import torch
    from torch.func import grad, jvp, vmap

    if threads is not None:
        torch.set_num_threads(threads)
    D, Hd, C = CASES[name]["sizes"]
    (sW1, sb1, sW2, sb2), n = ref.sizes(D, Hd, C)
    Xt, yt, th = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(theta)
    act = torch.tanh if ACTIVATION == "tanh" else torch.relu

    def f(t):
        W1, b1, W2, b2 = t[sW1].reshape(D, Hd), t[sb1], t[sW2].reshape(Hd, C), t[sb2]
        return torch.nn.functional.cross_entropy(act(Xt @ W1 + b1) @ W2 + b2, yt)

    batched_hvp = vmap(lambda v: jvp(grad(f), (th,), (v,))[1])

    def rows(a, b):
        E = torch.zeros((b - a, n), dtype=th.dtype)
        E[torch.arange(b - a), torch.arange(a, b)] = 1
        return batched_hvp(E).numpy()

    return rows


def contenders(name, X, y, theta, threads=None, only=None):
    """{contender: rows(a, b) -> H[a:b]}: one chunk of unit directions per
    call, and tinygrad2's Objective (whose ``hessian`` loops over the same
    ``hvp`` calls). ``only``: build just that contender."""
    obj = make_objective(name, X, y)
    obj.bytes_per_direction(theta)  # the probe pass, outside any measurement
    n, dt, sizes = theta.shape[0], theta.dtype, CASES[name]["sizes"]
    fns = {
        "tinygrad2": lambda a, b: obj.hvp(theta, _unit_rows(a, b, n, dt)),
        "NumPy R-op": lambda a, b: ref.hessian(theta, X, y, sizes, ACTIVATION, chunk=b - a, rows=(a, b)),
    }
    if only in (None, "torch") and torch_available():
        fns["torch"] = torch_chunk(name, X, y, theta, threads)
    return ({only: fns[only]} if only else fns), obj


def assemble(fn, theta, rows, chunk):
    start, stop = rows
    out = np.empty((stop - start, theta.shape[0]), theta.dtype)
    for a in range(start, stop, chunk):
        b = min(stop, a + chunk)
        out[a - start:b - start] = fn(a, b)
    return out


def rel_error(a, b):
    return float(np.linalg.norm(a - b)) / max(float(np.linalg.norm(b)), 1e-300)


# ================================================================ one case


def automatic_chunk(name, X, y, theta):
    """The chunk tinygrad2's automatic choice makes for the full Hessian."""
    obj = make_objective(name, X, y)
    n = theta.shape[0]
    return obj.memory_forecast(theta, n * n, n)[0]


def validate(name, X, y, theta, chunk):
    """float64, two row blocks (the middle of W1, and the tail: W1's end, b1,
    W2, b2): every contender must agree with the NumPy R-op to VALIDATION_TOL."""
    X64, th64 = X.astype(np.float64), theta.astype(np.float64)
    n = theta.shape[0]
    fns, _ = contenders(name, X64, y, th64)
    worst = {}
    for a in (max(0, n // 2 - chunk // 2), n - chunk):
        want = fns["NumPy R-op"](a, a + chunk)
        if not np.any(want):
            raise SystemExit(f"ABORT: validation rows {a}.. of the {name} Hessian are all zero")
        for k, fn in fns.items():
            worst[k] = max(worst.get(k, 0.0), rel_error(fn(a, a + chunk), want))
    bad = {k: e for k, e in worst.items() if e > VALIDATION_TOL}
    if bad:
        raise SystemExit(f"ABORT: {name}: contenders disagree with the NumPy R-op: {bad}")
    return worst


def time_case(name, X, y, theta, chunk, rows, repeats, threads):
    """Seconds per contender for the rows: for every chunk, each contender
    runs ``repeats`` times, interleaved (the order alternates), and its
    fastest run counts; the chunks' times are summed. On a shared machine
    this keeps bursts of other load out of the comparison. Also returns the
    assembled rows' agreement with the NumPy R-op, and the per-chunk ratios
    {contender: [fastest time / the R-op's fastest time, per chunk]}."""
    fns, _ = contenders(name, X, y, theta, threads)
    names = list(fns)
    total = {k: 0.0 for k in names}
    results = {k: np.empty((rows[1] - rows[0], theta.shape[0]), theta.dtype) for k in names}
    per_chunk = {k: [] for k in names if k != "NumPy R-op"}
    for i, a in enumerate(range(rows[0], rows[1], chunk)):
        b = min(rows[1], a + chunk)
        best, first = H.fastest_interleaved({k: (lambda k=k: fns[k](a, b)) for k in names}, repeats, i % 2 == 1)
        for k in names:
            results[k][a - rows[0]:b - rows[0]] = first[k]
            total[k] += best[k]
        del first
        for k in per_chunk:
            per_chunk[k].append(best[k] / best["NumPy R-op"])
    agree = {k: rel_error(results[k], results["NumPy R-op"]) for k in names if k != "NumPy R-op"}
    return total, agree, per_chunk


def time_dense(name, X, y, theta, chunk, repeats, chunks=4):
    """Seconds of tinygrad2's ``hvp`` and the R-op's ``hvp`` on ``chunks``
    chunks of dense random directions (N(0, 1) entries), interleaved as in
    ``time_case``; and their largest relative disagreement."""
    obj = make_objective(name, X, y)
    rng = np.random.default_rng(1)
    fns = {"tinygrad2": lambda V: obj.hvp(theta, V),
           "NumPy R-op": lambda V: ref.hvp(theta, X, y, CASES[name]["sizes"], V, ACTIVATION)}
    total, worst = {k: 0.0 for k in fns}, 0.0
    for i in range(chunks):
        V = rng.standard_normal((chunk, theta.shape[0])).astype(theta.dtype)
        best, outs = H.fastest_interleaved({k: (lambda k=k: fns[k](V)) for k in fns}, repeats, i % 2 == 1)
        worst = max(worst, rel_error(outs["tinygrad2"], outs["NumPy R-op"]))
        for k in fns:
            total[k] += best[k]
    return total, worst


def measure_memory(name, names, chunk, rows, args, parallel=False):
    """{contender: peak memory} of each contender assembling the rows, each in
    a fresh subprocess (the same thread and data options); ``parallel``: the
    subprocesses run at once (each measures only its own memory)."""
    import tempfile

    runs = {}
    for k in names:
        cmd = H.child_command(NAME, args) + ["--child", k, "--case", name, "--chunk", str(chunk),
                                             "--rows", str(rows[0]), str(rows[1])]
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        runs[k] = (subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=H.ROOT), out, err)
        if not parallel:
            runs[k][0].wait()
    result = {}
    for k, (proc, out, err) in runs.items():
        proc.wait()
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"{NAME}: the memory measurement of {k} on {name} failed:\n{err.read()}")
        result[k] = json.loads(out.read().strip().splitlines()[-1])
        out.close()
        err.close()
    return result


def _peak_rss(reset=False):
    """The peak resident set (VmHWM, bytes); ``reset=True`` first resets it to
    the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    if reset:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(args):
    """Subprocess body: set up, then trace one assembly. tinygrad2 runs the
    real ``Objective.hessian`` when the rows are the whole matrix.
    ``peak``: tracemalloc's peak (NumPy buffers; torch's allocator is not
    traced); ``rss``: the peak resident set during the run minus the
    resident set before it."""
    X, y, theta, _ = load_case(args.case, args)
    rows, n = tuple(args.rows), theta.shape[0]
    threads = args.threads if args.threads > 0 else None
    fns, obj = contenders(args.case, X, y, theta, threads, only=args.child)
    if args.child == "tinygrad2" and rows == (0, n):
        run = lambda: obj.hessian(theta, chunk=args.chunk)
    else:
        run = lambda: assemble(fns[args.child], theta, rows, args.chunk)
    with H.thread_limit(threads):
        base = _peak_rss(reset=True)
        tracemalloc.start()
        out = run()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss = _peak_rss() - base
    print(json.dumps({"peak": peak, "rss": rss, "result": out.nbytes}))


# ================================================================ profile


def primitive_times(obj, theta, E, reps):
    """Per primitive call site: the time of each primitive call (forward +
    jvp; in the backward pass, the vjp rules' Tensor ops), min over ``reps``
    passes.
    Returns (total hvp seconds, {(phase, primitive, input shapes): seconds})."""
    P = importlib.import_module("tinygrad2.primitives")
    stats, phase = {}, ["forward"]
    call, backward = P.Primitive.__call__, Tensor.backward

    def timed_call(prim, *inputs, **params):
        t0 = time.perf_counter()
        out = call(prim, *inputs, **params)
        shapes = " ".join(f"{x.shape}{'*' if x.tangent is not None else ''}" for x in inputs)
        stats.setdefault((phase[0], prim.name, shapes), []).append(time.perf_counter() - t0)
        return out

    def timed_backward(self, *a, **k):
        phase[0] = "backward"
        try:
            return backward(self, *a, **k)
        finally:
            phase[0] = "forward"

    totals = []
    P.Primitive.__call__, Tensor.backward = timed_call, timed_backward
    try:
        for _ in range(reps):
            t0 = time.perf_counter()
            obj.hvp(theta, E)
            totals.append(time.perf_counter() - t0)
    finally:
        P.Primitive.__call__, Tensor.backward = call, backward
    # one pass's time per call site: the fastest repeat of each call
    return min(totals), {k: min(v) * len(v) / reps for k, v in stats.items()}


def profile_case(name, X, y, theta, chunk, threads, reps=5):
    """One chunk of unit directions at the start of W1 and one chunk of dense
    random directions: tinygrad2 per primitive call site, and the reference
    per R-pass step."""
    obj = make_objective(name, X, y)
    n, sizes = theta.shape[0], CASES[name]["sizes"]
    directions = {
        f"unit directions e_0..e_{chunk - 1} (inside W1)": _unit_rows(0, chunk, n, theta.dtype),
        "dense random directions": np.random.default_rng(1).standard_normal((chunk, n)).astype(theta.dtype),
    }
    ms = lambda t: f"{1e3 * t:8.1f} ms"
    for what, V in directions.items():
        with H.thread_limit(threads):
            total, sites = primitive_times(obj, theta, V, reps)
            ref_steps, ref_totals = {}, []
            for _ in range(reps):
                last = [time.perf_counter()]
                t0 = last[0]

                def tick(label):
                    t = time.perf_counter()
                    ref_steps.setdefault(label, []).append(t - last[0])
                    last[0] = t

                ref.hvp(theta, X, y, sizes, V, ACTIVATION, tick=tick)
                ref_totals.append(time.perf_counter() - t0)
        print(f"\n--- profile: {name}, {what}, K = {chunk} (min of {reps}, {threads} BLAS thread(s)) ---")
        print(f"tinygrad2 hvp per primitive call site (* = carries a K-tangent): {ms(total)} (with timers)")
        for key, t in sorted(sites.items(), key=lambda kv: -kv[1]):
            if t >= 5e-4:
                print(f"  {ms(t)}  {key[0]:8s} {key[1]:18s} {key[2]}")
        print(f"NumPy R-op hvp: {ms(min(ref_totals))}; per step:")
        for label, ts in ref_steps.items():
            print(f"  {ms(min(ts))}  {label}")


# ================================================================ main


def fmt_s(s):
    return f"{s:.2f} s" if s >= 1 else f"{1e3 * s:.0f} ms"


def fmt_mb(b):
    return f"{b / 2**20:,.0f} MiB"


def main(argv=None):
    parser = H.make_parser(__doc__, threads=0,
                           quick_help="tiny run: one chunk of rows (K <= 32), one run per chunk (a smoke test)",
                           profile_help="per-primitive profile of one chunk",
                           rounds_help="interleaved runs per chunk (default 3; --quick 1)")
    parser.add_argument("--repeats", dest="rounds", type=int, default=None, help="the same as --rounds")
    parser.add_argument("--chunk", type=int, default=None, help="directions per pass (default: tinygrad2's choice)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--rows", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        H.set_threads(args.threads)
        return child(args)
    threads = args.threads if args.threads > 0 else None  # None: BLAS's own
    repeats = args.rounds or (1 if args.quick else 3)
    row_chunks, dense_chunks = (1, 1) if args.quick else (None, 4)
    H.setup(NAME, args)
    print(f"curvature benchmark: activation {ACTIVATION}, "
          f"{'quick (1 chunk of rows)' if args.quick else 'full Hessians'}, {repeats} interleaved runs per chunk")
    if torch_available():
        import torch
        print(f"optional contender: torch {torch.__version__} (torch.func vmap(jvp(grad)), same chunks)")
    else:
        print("optional contender torch: not importable (pip install '.[compare]'): no column")
    print("optional contender jax: " + ("importable but not wired in" if importlib.util.find_spec("jax")
                                        else "not importable: no column"))

    table = []
    for name in args.cases:
        X, y, theta, what = load_case(name, args)
        n, dt = theta.shape[0], theta.dtype
        D, Hd, C = CASES[name]["sizes"]
        chunk = args.chunk or automatic_chunk(name, X, y, theta)
        if args.quick and not args.chunk:
            chunk = min(chunk, QUICK_CHUNK)
        rows = (0, min(n, row_chunks * chunk)) if row_chunks else (0, n)
        print(f"\n{name}: MLP {D}-{Hd}-{C} ({ACTIVATION}), {what}, N = {X.shape[0]}, {dt}, n = {n:,}, "
              f"chunk K = {chunk}, rows {rows[0]}..{rows[1] - 1}")
        worst = validate(name, X, y, theta, chunk)
        print("  validation (float64, two row blocks, vs the NumPy R-op): "
              + ", ".join(f"{k} {e:.1e}" for k, e in worst.items()) + f" (tolerance {VALIDATION_TOL:g})")
        with H.thread_limit(threads):
            times, agree, per_chunk = time_case(name, X, y, theta, chunk, rows, repeats, threads)
        print(f"  timed results vs the NumPy R-op ({dt}): " + ", ".join(f"{k} {e:.1e}" for k, e in agree.items()))
        print("  per-chunk ratios to the NumPy R-op, median [min-max]: " + ", ".join(
            f"{k} {H.ratio_stats(r).spread(unit='chunk')}" for k, r in per_chunk.items()))
        with H.thread_limit(threads):
            dense, dense_err = time_dense(name, X, y, theta, chunk, repeats, dense_chunks)
        print(f"  dense random directions: tinygrad2 hvp vs the R-op's {dense_err:.1e}")
        # --quick leaves torch out: under tracemalloc its first call (which imports
        # torch's transform machinery) takes seconds
        measured = [k for k in times if not (args.quick and k == "torch")]
        mem = measure_memory(name, measured, chunk, rows, args, parallel=args.quick)
        result = mem["tinygrad2"]["result"]
        floor = chunk * dt.itemsize * (n + X.shape[0] * (Hd + C))
        forecast = result + chunk * make_objective(name, X, y).bytes_per_direction(theta)
        table.append(dict(name=name, n=n, chunk=chunk, dtype=str(dt), data=what, times=times, mem=mem, dense=dense,
                          dense_chunks=dense_chunks, result=result, floor=floor, forecast=forecast,
                          target=CASES[name]["target"]))
        if args.profile:  # single-threaded unless asked: per-call timings of 2 threads are too noisy
            profile_case(name, X, y, theta, chunk, threads or 1)

    print_tables(table)


def print_tables(table):
    print("\nTime (sum over chunks of each contender's fastest of the interleaved runs):\n")
    has_torch = any("torch" in r["times"] for r in table)
    head = "| case | n | K | tinygrad2 | NumPy R-op | tinygrad2 / NumPy | target |" + (" torch | torch / NumPy |" if has_torch else "")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in table:
        t = r["times"]
        ratio = t["tinygrad2"] / t["NumPy R-op"]
        line = (f"| {r['name']} ({r['dtype']}) | {r['n']:,} | {r['chunk']} | {fmt_s(t['tinygrad2'])} | {fmt_s(t['NumPy R-op'])} "
                f"| {ratio:.2f}x | {'PASS' if ratio <= r['target'] else 'FAIL'} (<= {r['target']}x) |")
        if has_torch:
            line += f" {fmt_s(t['torch'])} | {t['torch'] / t['NumPy R-op']:.2f}x |" if "torch" in t else " - | - |"
        print(line)
    chunks = table[0]["dense_chunks"] if table else 4
    print(f"\nArbitrary directions: one hvp per chunk of K dense random directions, {chunks} chunk"
          f"{'s' if chunks != 1 else ''} (no target; "
          "nothing is a symbolic zero here, so this is the engine's own efficiency against the hand-written R-pass):\n")
    print("| case | K | tinygrad2 hvp | NumPy R-op hvp | tinygrad2 / NumPy |")
    print("|---|---|---|---|---|")
    for r in table:
        d = r["dense"]
        print(f"| {r['name']} ({r['dtype']}) | {r['chunk']} | {fmt_s(d['tinygrad2'])} | {fmt_s(d['NumPy R-op'])} "
              f"| {d['tinygrad2'] / d['NumPy R-op']:.2f}x |")
    print("\nPeak memory (tracemalloc; in brackets: growth of the peak RSS) against the result plus one chunk's "
          "irreducible working set, K * itemsize * (n + N (H + C)):\n")
    head = ("| case | H rows | H + one chunk | tinygrad2 | NumPy R-op | tinygrad2 / (H + chunk) | NumPy / (H + chunk) "
            "| target | tinygrad2 forecast |" + (" torch (RSS) |" if has_torch else ""))
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in table:
        m, ideal = r["mem"], r["result"] + r["floor"]
        mt, mn = m["tinygrad2"]["peak"] / ideal, m["NumPy R-op"]["peak"] / ideal
        line = (f"| {r['name']} | {fmt_mb(r['result'])} | {fmt_mb(ideal)} "
                f"| {fmt_mb(m['tinygrad2']['peak'])} [{fmt_mb(m['tinygrad2']['rss'])}] "
                f"| {fmt_mb(m['NumPy R-op']['peak'])} [{fmt_mb(m['NumPy R-op']['rss'])}] | {mt:.2f}x | {mn:.2f}x "
                f"| {'PASS' if mt <= MEMORY_TARGET else 'FAIL'} (<= {MEMORY_TARGET}x) | {fmt_mb(r['forecast'])} |")
        if has_torch:
            line += f" [{fmt_mb(m['torch']['rss'])}] |" if "torch" in m else " - (not measured) |"
        print(line)
    print("\nData: " + "; ".join(f"{r['name']}: {r['data']}" for r in table))


if __name__ == "__main__":
    sys.exit(main())
