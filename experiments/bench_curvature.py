"""Benchmark: dense Hessians, tinygrad2's Objective against a hand-written
NumPy R-operator (and torch.func when torch is importable).

    python -m experiments.bench_curvature             # full Hessians, 3 runs per chunk
    python -m experiments.bench_curvature --quick     # 4 chunks of rows, 2 runs per chunk
    python -m experiments.bench_curvature --profile   # + where tinygrad2's time goes (1 BLAS thread)
    options: --threads N (BLAS threads; default BLAS's own), --chunk K, --repeats R, --cases digits mnist

Cases (mean softmax cross-entropy, tanh hidden layer -- smooth, so the dense
Hessian is the exact second derivative everywhere):

* digits: MLP 64-32-10 on all 1,797 scikit-learn digits (pixels / 16), float64;
  target: tinygrad2 time <= 1.0x the NumPy reference;
* mnist:  MLP 784-16-10 on the first 1,000 MNIST training images (pixels / 255)
  from /work/shared/data/mnist (random uniform images and labels if absent;
  the output says which), float32; target <= 1.2x.

Contenders, all assembling H from chunks of K unit directions, the same K
(tinygrad2's own automatic choice unless --chunk):

* tinygrad2: ``Objective(model_fn, "cross_entropy", X, y, layout)``: one
  batched forward-over-reverse ``hvp`` per chunk (what ``hessian`` loops over);
* NumPy R-op: ``experiments.reference_hessian`` -- Pearlmutter's forward and
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

Memory: each contender assembles the rows once more in its own subprocess,
tinygrad2 through ``Objective.hessian`` itself, under tracemalloc (NumPy
reports its buffers to it; torch's allocator does not, so torch gets only the
growth of the peak RSS). The peak is compared with the result's own size plus
one chunk's irreducible working set, K · itemsize · (n + N (H + C)): the K
directions and one tangent per layer output (target <= 1.5x). tinygrad2's own
forecast (``Objective.memory_forecast``) is printed beside it.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from tinygrad2 import Layout, Objective, Tensor
from tinygrad2.objective import _unit_rows

from . import reference_hessian as ref

MNIST_DIR = "/work/shared/data/mnist"
CASES = {
    "digits": dict(sizes=(64, 32, 10), batch=1797, dtype="float64", target=1.0),
    "mnist": dict(sizes=(784, 16, 10), batch=1000, dtype="float32", target=1.2),
}
ACTIVATION = "tanh"
MEMORY_TARGET = 1.5
VALIDATION_TOL = 1e-12


# ================================================================ data and model


def _read_idx_gz(path):
    """An IDX file (gzip): magic 0x0000, dtype code 0x08 (ubyte), ndim; then
    ndim big-endian uint32 sizes; then the bytes."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_case(name):
    """(X, y, theta, description) for a case; theta drawn with a fixed seed:
    W ~ N(0, 1/fan_in), b ~ N(0, 0.1²)."""
    case = CASES[name]
    D, Hd, C = case["sizes"]
    N, dt = case["batch"], np.dtype(case["dtype"])
    rng = np.random.default_rng(0)
    if name == "digits":
        from sklearn.datasets import load_digits

        data = load_digits()
        X, y, what = data.data / 16.0, data.target.astype(np.int64), "scikit-learn digits (all 1,797)"
    else:
        images = os.path.join(MNIST_DIR, "train-images-idx3-ubyte.gz")
        labels = os.path.join(MNIST_DIR, "train-labels-idx1-ubyte.gz")
        if os.path.exists(images) and os.path.exists(labels):
            X = _read_idx_gz(images)[:N].reshape(N, -1) / 255.0
            y = _read_idx_gz(labels)[:N].astype(np.int64)
            what = f"real MNIST (first {N} training images)"
        else:
            X, y = rng.random((N, D)), rng.integers(0, C, N)
            what = "random data (MNIST not found)"
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
    try:
        import torch  # noqa: F401
        import torch.func  # noqa: F401  (needs the functional transforms)
        return True
    except Exception:
        return False


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


# ================================================================ threads


def thread_limit(threads):
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(threads)


# ================================================================ one case


def default_chunk(name, X, y, theta):
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
    assembled rows' agreement with the NumPy R-op."""
    fns, _ = contenders(name, X, y, theta, threads)
    names = list(fns)
    total = {k: 0.0 for k in names}
    results = {k: np.empty((rows[1] - rows[0], theta.shape[0]), theta.dtype) for k in names}
    for i, a in enumerate(range(rows[0], rows[1], chunk)):
        b = min(rows[1], a + chunk)
        best = {k: float("inf") for k in names}
        for r in range(repeats):
            for k in (names if (i + r) % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                out = fns[k](a, b)
                best[k] = min(best[k], time.perf_counter() - t0)
                if r == 0:
                    results[k][a - rows[0]:b - rows[0]] = out
                del out
        for k in names:
            total[k] += best[k]
    agree = {k: rel_error(results[k], results["NumPy R-op"]) for k in names if k != "NumPy R-op"}
    return total, agree


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
        best, outs = {k: float("inf") for k in fns}, {}
        for r in range(repeats):
            for k in (list(fns) if (i + r) % 2 == 0 else list(fns)[::-1]):
                t0 = time.perf_counter()
                outs[k] = fns[k](V)
                best[k] = min(best[k], time.perf_counter() - t0)
        worst = max(worst, rel_error(outs["tinygrad2"], outs["NumPy R-op"]))
        for k in fns:
            total[k] += best[k]
    return total, worst


def measure_memory(name, contender, chunk, rows, threads):
    """Peak memory of one contender assembling the rows, in a fresh subprocess."""
    cmd = [sys.executable, "-m", "experiments.bench_curvature", "--child", contender, "--case", name,
           "--chunk", str(chunk), "--rows", str(rows[0]), str(rows[1])]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    X, y, theta, _ = load_case(args.case)
    rows, n = tuple(args.rows), theta.shape[0]
    fns, obj = contenders(args.case, X, y, theta, args.threads, only=args.child)
    if args.child == "tinygrad2" and rows == (0, n):
        run = lambda: obj.hessian(theta, chunk=args.chunk)
    else:
        run = lambda: assemble(fns[args.child], theta, rows, args.chunk)
    with thread_limit(args.threads):
        base = _peak_rss(reset=True)
        tracemalloc.start()
        H = run()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss = _peak_rss() - base
    print(json.dumps({"peak": peak, "rss": rss, "result": H.nbytes}))


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
        with thread_limit(threads):
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a block of 4 chunks of rows, 2 repeats")
    parser.add_argument("--profile", action="store_true", help="per-primitive profile of one chunk")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: BLAS's own)")
    parser.add_argument("--chunk", type=int, default=None, help="directions per pass (default: tinygrad2's choice)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per chunk (default 3; --quick 2)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--rows", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    repeats = args.repeats or (2 if args.quick else 3)
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i['internal_api']} {i.get('version')}" for i in threadpool_info())
    except Exception:
        blas = "unknown"
    print(f"bench_curvature: numpy {np.__version__} ({blas}), {os.cpu_count()} CPUs, "
          f"BLAS threads {'default' if args.threads is None else args.threads}, activation {ACTIVATION}, "
          f"{'quick (4 chunks of rows)' if args.quick else 'full Hessians'}, {repeats} interleaved runs per chunk")
    if torch_available():
        import torch
        print(f"optional contender: torch {torch.__version__} (torch.func vmap(jvp(grad)), same chunks)")
    print("optional contender jax: " + ("importable but not wired in" if importlib.util.find_spec("jax")
                                        else "not importable: no column"))

    table = []
    for name in args.cases:
        X, y, theta, what = load_case(name)
        n, dt = theta.shape[0], theta.dtype
        D, Hd, C = CASES[name]["sizes"]
        chunk = args.chunk or default_chunk(name, X, y, theta)
        rows = (0, min(n, 4 * chunk)) if args.quick else (0, n)
        print(f"\n{name}: MLP {D}-{Hd}-{C} ({ACTIVATION}), {what}, N = {X.shape[0]}, {dt}, n = {n:,}, "
              f"chunk K = {chunk}, rows {rows[0]}..{rows[1] - 1}")
        worst = validate(name, X, y, theta, chunk)
        print("  validation (float64, two row blocks, vs the NumPy R-op): "
              + ", ".join(f"{k} {e:.1e}" for k, e in worst.items()) + f" (tolerance {VALIDATION_TOL:g})")
        with thread_limit(args.threads):
            times, agree = time_case(name, X, y, theta, chunk, rows, repeats, args.threads)
        print(f"  timed results vs the NumPy R-op ({dt}): " + ", ".join(f"{k} {e:.1e}" for k, e in agree.items()))
        with thread_limit(args.threads):
            dense, dense_err = time_dense(name, X, y, theta, chunk, repeats)
        print(f"  dense random directions: tinygrad2 hvp vs the R-op's {dense_err:.1e}")
        mem = {k: measure_memory(name, k, chunk, rows, args.threads) for k in times}
        result = mem["tinygrad2"]["result"]
        floor = chunk * dt.itemsize * (n + X.shape[0] * (Hd + C))
        forecast = result + chunk * make_objective(name, X, y).bytes_per_direction(theta)
        table.append(dict(name=name, n=n, chunk=chunk, dtype=str(dt), data=what, times=times, mem=mem, dense=dense,
                          result=result, floor=floor, forecast=forecast, target=CASES[name]["target"]))
        if args.profile:  # single-threaded unless asked: per-call timings of 2 threads are too noisy
            profile_case(name, X, y, theta, chunk, args.threads or 1)

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
    print("\nArbitrary directions: one hvp per chunk of K dense random directions, 4 chunks (no target; "
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
            line += f" [{fmt_mb(m['torch']['rss'])}] |" if "torch" in m else " - |"
        print(line)
    print("\nData: " + "; ".join(f"{r['name']}: {r['data']}" for r in table))


if __name__ == "__main__":
    sys.exit(main())
