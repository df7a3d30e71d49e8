"""The benchmarks' shared harness: command-line options, BLAS threads, the
header every benchmark prints, data through :mod:`experiments.data`, and
interleaved timing with paired ratios.

* Options (:func:`add_common_args`): ``--quick``, ``--profile``,
  ``--threads N`` (alias ``--blas-threads``; 0 = the BLAS library's default),
  ``--rounds R``, ``--data-dir DIR``, ``--no-verify`` and, where asked for,
  ``--seed S``.
* :func:`setup` applies the thread setting (threadpoolctl) and prints the
  header: date, CPUs, Python and NumPy versions, tinygrad2's backend and
  source commit, every BLAS library loaded with the kernel it runs
  (OpenBLAS's core name) and its thread count, the thread setting, and the
  OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE environment variables (which change
  OpenBLAS's kernel choice) with their values when set.
* Data: :func:`mnist_train`, :func:`cifar10_train`, :func:`digits_all` read
  through ``experiments.data``'s loaders, so the folder is ``--data-dir`` >
  ``$TINYGRAD2_DATA`` > the user cache folder; missing data ends the run with
  one line naming TINYGRAD2_DATA.
* Timing: :func:`run_rounds` runs every cell once per round in a freshly
  shuffled order (a slow drift of a shared machine's load hits every cell
  alike); :meth:`Timings.ratio` is the paired ratio: time(a) / time(b) within
  each round, reported as the median over rounds with its spread (min - max).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

_limits = None  # the threadpoolctl limiter in force (kept alive for the run)


# ================================================================ options


def add_common_args(parser, *, threads=1, seed=False, quick_help="tiny run (a smoke test)",
                    profile_help="also print where tinygrad2's time goes",
                    rounds_help="timed rounds per contender (default: per benchmark)"):
    """The options every benchmark takes; ``threads`` is the default BLAS
    thread count (0 = the library's own)."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--profile", action="store_true", help=profile_help)
    parser.add_argument("--threads", "--blas-threads", dest="threads", type=int, default=threads,
                        help=f"BLAS threads, set through threadpoolctl (default {threads}; "
                             f"0 = the library's default)")
    parser.add_argument("--rounds", type=int, default=None, help=rounds_help)
    if seed:
        parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None,
                        help="data folder (default: $TINYGRAD2_DATA, else the user cache folder)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the MD5 check of the data files")
    return parser


def make_parser(doc, **kw):
    """An ArgumentParser described by the first paragraph of ``doc``, with
    the common options."""
    return add_common_args(argparse.ArgumentParser(description=doc.split("\n\n")[0]), **kw)


# ================================================================ threads and header


def blas_libraries():
    """threadpoolctl's records of the loaded BLAS libraries ([] without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [i for i in threadpool_info() if i.get("user_api") == "blas"]


def set_threads(n):
    """Limit every loaded BLAS library to ``n`` threads (n <= 0: leave them)."""
    global _limits
    if n is None or n <= 0:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print(f"warning: threadpoolctl not installed, --threads {n} not applied "
              f"(pip install threadpoolctl)")
        return
    _limits = threadpool_limits(limits=n, user_api="blas")


def thread_limit(n):
    """A context manager limiting BLAS to ``n`` threads (n None or <= 0: no change)."""
    from contextlib import nullcontext

    if n is None or n <= 0:
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")


def _owner(path):
    """The package a shared library ships with: 'numpy' for .../numpy.libs/..."""
    parts = Path(path).parts
    for i, part in enumerate(parts[:-1]):
        if part in ("site-packages", "dist-packages") and i + 1 < len(parts) - 1:
            return parts[i + 1].removesuffix(".libs")
    return Path(path).name


def blas_description():
    libs = blas_libraries()
    if not libs:
        return "unknown (threadpoolctl not installed or no BLAS found)"
    out = []
    for i in libs:
        kernel = i.get("architecture") or i.get("corename") or "?"
        layer = f", {i['threading_layer']}" if i.get("threading_layer") else ""
        n = i.get("num_threads")
        out.append(f"{i.get('internal_api')} {i.get('version')} ({_owner(i.get('filepath', '?'))}'s), "
                   f"kernel {kernel}{layer}, {n} thread{'s' if n != 1 else ''}")
    return "; ".join(out)


def engine_version():
    """git commit of the checkout holding tinygrad2, noting edits in tinygrad2/."""
    import tinygrad2

    root = os.path.dirname(os.path.dirname(os.path.abspath(tinygrad2.__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "tinygrad2"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        return "unknown (no git)"
    return f"commit {head or '?'}{' + uncommitted edits in tinygrad2/' if dirty else ''}"


def header_lines(name, args):
    import tinygrad2

    now = datetime.datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
    threads = args.threads
    setting = (f"--threads {threads}: BLAS limited to {threads} thread{'s' if threads != 1 else ''} "
               f"(threadpoolctl)" if threads and threads > 0 else "--threads 0: the BLAS library's default")
    env = ", ".join(f"{k}={os.environ[k]!r} (set)" if k in os.environ else f"{k} not set"
                    for k in OPENBLAS_ENV)
    return [
        f"== {name}{' (quick run)' if args.quick else ''} -- {now} ==",
        f"machine: {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}; "
        f"python {platform.python_version()}, numpy {np.__version__}; "
        f"tinygrad2 backend {tinygrad2.backend.name}, source {engine_version()}",
        f"BLAS: {blas_description()}",
        f"threads: {setting}",
        f"environment: {env}",
        "host memory: " + ("freed memory kept for reuse (glibc mallopt; tinygrad2.memory.keep_freed_host_memory)"
                           if getattr(args, "keeps_freed_memory", False) else "the allocator's defaults"),
    ]


def setup(name, args):
    """Apply ``args.threads``, keep freed host memory for reuse (for every
    contender: the setting is process-wide) and print the header."""
    set_threads(args.threads)
    from tinygrad2 import memory

    args.keeps_freed_memory = memory.keep_freed_host_memory()
    for line in header_lines(name, args):
        print(line)


def import_torch():
    """torch (with torch.func), or None when it is not importable."""
    try:
        import torch
        import torch.func  # noqa: F401
        return torch
    except Exception:
        return None


# ================================================================ data


def _load(name, dataset, loader, args):
    from experiments import data as D

    try:
        return loader(args.data_dir, verify=not args.no_verify)
    except D.DataNotFoundError as err:
        where = D.resolve_data_dir(args.data_dir)
        raise SystemExit(f"{name}: no {dataset} data in {where}; set {D.ENV_VAR} (or pass --data-dir) "
                         f"to a folder that holds it. [{err}]")
    except D.DataError as err:
        raise SystemExit(f"{name}: unusable {dataset} data (check {D.ENV_VAR} / --data-dir, or pass "
                         f"--no-verify for files that are not the originals): {err}")


def _head(name, dataset, split, n):
    if len(split) < n:
        raise SystemExit(f"{name}: needs {n} {dataset} training examples, the data has {len(split)}")
    return np.ascontiguousarray(split.X[:n]), np.ascontiguousarray(split.y[:n])


def mnist_train(name, args, n):
    """The first ``n`` MNIST training images, X (n, 28, 28) float32 in [0, 1],
    y (n,) int64, and a description."""
    from experiments import data as D

    splits = _load(name, "MNIST", D.load_mnist, args)
    X, y = _head(name, "MNIST", splits.train, n)
    return X, y, f"MNIST ({splits.info['path']}, first {n} training images and labels)"


def cifar10_train(name, args, n):
    """The first ``n`` CIFAR-10 training records, X (n, 3, 32, 32) float32 in
    [0, 1], y (n,) int64, and a description."""
    from experiments import data as D

    splits = _load(name, "CIFAR-10", D.load_cifar10, args)
    X, y = _head(name, "CIFAR-10", splits.train, n)
    return X, y, f"CIFAR-10 ({splits.info['path']}, first {n} training records)"


def digits_all():
    """All 1,797 scikit-learn digits in their original order, X (1797, 64)
    float64 (pixels / 16), y int64 (through experiments.data.load_digits)."""
    from experiments import data as D

    s = D.load_digits()
    parts = [p for p in (s.train, s.val, s.test) if p is not None]
    order = np.argsort(np.concatenate([p.index for p in parts]), kind="stable")
    X = np.concatenate([p.X for p in parts])[order]
    y = np.concatenate([p.y for p in parts])[order]
    return X.reshape(len(y), -1).astype(np.float64), y.astype(np.int64)


# ================================================================ timing


@dataclass(frozen=True)
class Ratio:
    """A ratio over rounds: median and spread (min - max) of ``n`` values."""

    median: float
    lo: float
    hi: float
    n: int

    def __format__(self, spec):
        return f"{format(self.median, spec or '.2f')}x"

    def scaled(self, k):
        """The same ratio divided by ``k`` (a K-direction pass's cost per direction)."""
        return Ratio(self.median / k, self.lo / k, self.hi / k, self.n)

    def spread(self, spec=".2f", unit="round"):
        return (f"{format(self.median, spec)}x [{format(self.lo, spec)}-{format(self.hi, spec)}x, "
                f"{self.n} {unit}{'s' if self.n != 1 else ''}]")


def ratio_stats(values):
    values = list(values)
    return Ratio(statistics.median(values), min(values), max(values), len(values))


@dataclass
class Timings:
    """Per-round seconds of each cell (``times``) and rounds per cell (``reps``)."""

    times: dict
    reps: dict = field(default_factory=dict)

    @property
    def medians(self):
        return {name: statistics.median(ts) for name, ts in self.times.items()}

    def ratio(self, a, b):
        """The paired ratio time(a) / time(b) within the same round, over the
        rounds both ran: a slow drift of the machine's load cancels out."""
        n = min(len(self.times[a]), len(self.times[b]))
        return ratio_stats(ta / tb for ta, tb in zip(self.times[a][:n], self.times[b][:n]))

    def update(self, other):
        self.times.update(other.times)
        self.reps.update(other.reps)


def run_rounds(cells, rng, *, rounds=None, target_s=0.0, min_rounds=1, max_rounds=None, warmup_s=0.0,
               warm_each=False, equal_rounds=False):
    """Time the zero-argument callables in ``cells`` in interleaved rounds.

    Warm-up: each cell once, then again until ``warmup_s`` has passed. Rounds:
    ``rounds`` for every cell, or (``rounds=None``) a count per cell calibrated
    for about ``target_s`` of timed work, clipped to [min_rounds, max_rounds].
    In every round each cell that still needs repeats runs once, in a fresh
    random order. ``warm_each``: every timed call follows an untimed call of
    the same cell, so that no cell is timed on caches another one (a much
    larger pass) has just evicted. ``equal_rounds``: every cell gets the
    calibrated count of the slowest one (when only paired ratios are read)."""
    names = list(cells)
    for name in names:
        fn, t_end = cells[name], time.perf_counter() + warmup_s
        fn()
        while time.perf_counter() < t_end:
            fn()
    if rounds is not None:
        reps = {name: int(rounds) for name in names}
    else:
        reps = {}
        for name in names:
            fn, samples = cells[name], []
            for _ in range(5):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
            # min: the cost without interference
            reps[name] = int(min(max(target_s / min(samples), min_rounds), max_rounds or float("inf")))
        if equal_rounds:
            reps = dict.fromkeys(names, min(reps.values()))
    times = {name: [] for name in names}
    for r in range(max(reps.values())):
        order = [n for n in names if r < reps[n]]
        rng.shuffle(order)
        for name in order:
            fn = cells[name]
            if warm_each:
                fn()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return Timings(times, reps)


def fastest_interleaved(fns, repeats, reverse_first=False):
    """For products that take seconds (too long for :func:`run_rounds`'s many
    short rounds): run every callable of ``fns`` ({name: fn()}) ``repeats``
    times, interleaved, the order reversed on every other repeat, and keep each
    one's fastest time. Returns ({name: seconds}, {name: first output})."""
    names = list(fns)
    best, first = {k: float("inf") for k in names}, {}
    for r in range(repeats):
        for k in (names if (r + reverse_first) % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            out = fns[k]()
            best[k] = min(best[k], time.perf_counter() - t0)
            if k not in first:
                first[k] = out
            del out
    return best, first


class RuleTimer:
    """Times every primitive's ``forward``, ``jvp`` and ``forward_and_jvp``
    rule while installed: ``spent`` (seconds) and ``calls``, keyed
    "name.forward" / "name.jvp" / "name.forward_and_jvp".
    Some rules call other primitives' rules; ``outermost_only`` times just
    the outermost call (else a nested call counts in both)."""

    def __init__(self, registry, outermost_only=True):
        from collections import Counter

        self.registry, self.outermost_only = registry, outermost_only
        self.spent, self.calls = Counter(), Counter()
        self._saved, self._depth = None, 0

    def _timed(self, fn, key):
        def wrapper(*a, **k):
            if self.outermost_only and self._depth:
                return fn(*a, **k)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.spent[key] += time.perf_counter() - t0
                self.calls[key] += 1
                self._depth -= 1
        return wrapper

    def install(self):
        rules = ("forward", "jvp", "forward_and_jvp")
        self._saved = {name: {r: getattr(prim, r) for r in rules} for name, prim in self.registry.items()}
        for name, prim in self.registry.items():
            for rule in rules:
                if getattr(prim, rule) is not None:
                    setattr(prim, rule, self._timed(getattr(prim, rule), f"{name}.{rule}"))
        return self

    def restore(self):
        if self._saved is not None:
            for name, prim in self.registry.items():
                for rule, fn in self._saved[name].items():
                    setattr(prim, rule, fn)
            self._saved = None

    def clear(self):
        self.spent.clear()
        self.calls.clear()


def child_command(module, args):
    """``python -m module`` plus the data and thread options of ``args``, run
    from the repository root (for benchmarks that measure in a subprocess)."""
    cmd = [sys.executable, "-m", module, "--threads", str(args.threads)]
    if args.data_dir is not None:
        cmd += ["--data-dir", str(args.data_dir)]
    if args.no_verify:
        cmd.append("--no-verify")
    return cmd
