"""One-shot GPU check: tinygrad2 on CuPy, tested, checked against NumPy and
timed beside PyTorch CUDA, in one prepared run of a few minutes.

    benchmarks/gpu_check.sh OUTDIR               # on the GPU machine (the wrapper: timeout, log, versions)
    benchmarks/gpu_check.sh OUTDIR --rehearse    # the same code path on the CPU (or GPU_CHECK_REHEARSE=1)
    PYTHONPATH=. python -m benchmarks.gpu_check --out OUTDIR [--rehearse [--quick] [--emulate]]
                   [--skip STEP ...] [--budget STEP=SECONDS ...] [--total-s S] [--threads N]
                   [--paper-args="..."] [--paper-out DIR]

Rehearsal (``--rehearse``): the identical code path with NumPy in place of
CuPy and torch CPU in place of CUDA, at reduced sizes (under a minute on 2
cores); ``--quick``: the smallest sizes (the tests'); ``--emulate``: the
measured side on the emulated device of tests/_device.py, which enforces
CuPy's host/device rules (a host array given to device code raises), so a
missing ``to_device`` / ``to_host`` shows up here and not on the GPU.

It writes ``OUTDIR/gpu_check.json`` after every step (so a kill keeps what
was measured) and the child logs ``OUTDIR/tests.log``, ``OUTDIR/paper_run.log``;
the wrapper tees everything printed into ``OUTDIR/gpu_check.log``. JSON:
``{"device", "versions", "rehearsal", "mode", "config", "steps": {"tests",
"parity", "timings", "paper_run"}, "wall_s"}``; every step has ``status``
(ok / partial / skipped / error), ``budget_s``, ``wall_s`` and, where cut
short, ``skipped``; a timing row is ``{"name", "tinygrad2": {median, min,
max, rounds}, "torch": {...} or "unavailable: why", "ratio": {median, min,
max} (paired tinygrad2 / torch) or null, "target", "target_met"}``.

Steps, in order, each with its own time budget (a step whose budget is spent
stops with a line saying so and ``"skipped": "reason"`` in the JSON; a step
that raises has its traceback printed and ``"error"`` recorded, and the next
step runs; a hard limit, SIGALRM at budget + grace, interrupts a step that
overruns inside one call):

1. ``tests``: ``python -m pytest -q -k cupy -p no:cacheprovider tests`` in a
   subprocess, TINYGRAD2_BACKEND unset; passed/failed/skipped/... counts from
   pytest's summary line (or, if killed at its budget, from the progress
   lines) and the return code. Rehearsal: the same with ``-x``.
2. ``parity``: float64, tinygrad2 on NumPy (``backend.use("numpy")``) against
   tinygrad2 on the device backend (``use("cupy")``; arrays moved with
   ``backend.to_device`` / ``to_host``): loss, gradient, HVP in a few random
   directions and the dense Hessian where n <= 3,000, for an MLP 64-24-10
   (ReLU, n = 1,810, batch 32), nets.SmallCNN (3x32x32, batch 8) and
   ResNet18 at width 1/8 (ImageNet stem, 1x28x28, BN in train mode, batch 8),
   on uniform random inputs and random labels. Error = max |a - b| / max |b|.
   Rehearsal: both sides NumPy (errors 0; it exercises the code).
3. ``timings``: float32, tinygrad2 on the device backend beside PyTorch eager
   on the same device (``cuda``; rehearsal: NumPy and torch CPU), both given
   the same weights (``benchmarks.torch_twins``) and the same random data.
   Each timed call is bracketed by device synchronisation (CuPy's device
   synchronize and ``torch.cuda.synchronize``); after two warm-up calls
   (CuPy compiles its kernels on first use) the contenders run in
   interleaved rounds in a shuffled order (``benchmarks.harness``'s
   convention); median, min and max seconds per call, and the paired ratio
   tinygrad2 / torch within each round (median and spread). Rows:

   * MLP 784-32-10 (ReLU) batch 1000: loss+gradient, HVP (one direction).
     tinygrad2: ``Objective.loss_and_grad`` / ``hvp`` on flat theta; torch:
     ``autograd.grad`` / ``func.jvp(func.grad(f))`` of the same flat f.
   * MLP 784-16-10 (tanh, as benchmarks.curvature) batch 1000: dense Hessian,
     n = 12,730: tinygrad2 ``Objective.hessian`` (automatic chunk, and chunk
     2048); torch the fastest of ``torch.func.hessian`` and ``vmap`` of the
     HVP over unit vectors (chunk 2048) whose result agrees with tinygrad2's
     (float32, 1e-3 relative). Target < 2 s.
   * nets.SmallCNN 3x32x32 batch 128: loss+gradient, HVP.
   * ResNet18 (width 1, ImageNet stem, 1x28x28 MNIST-shaped input, 10 classes,
     11,175,370 parameters, as resnet18-mnist-hybrid --full) batch 100: one
     SGD step (lr 0.005, momentum 0.9: forward, backward, update, BN running
     statistics updated); tinygrad2 ``optimizers.SGD.step`` inside
     ``model.updating_running_stats()``, torch ``backward`` + ``optim.SGD``.
     Target <= 1.5x torch.

   TF32 is off in torch (cudnn and matmul) so both sides compute in float32.
   Rehearsal sizes: MLP batch 200, dense Hessian of MLP 196-8-10 (n = 1,666)
   at batch 200, SmallCNN batch 16, ResNet18 width 1/8 at batch 16.
4. ``paper_run``: ``python -m experiments run resnet18-mnist-hybrid --full
   --device gpu`` (rehearsal: ``--quick --device cpu``) with the time that
   is left (SIGINT at the limit, then kill); the MNIST data comes from
   $TINYGRAD2_DATA (unset or missing: skipped with a line). Recorded: the
   table it printed and its per-run lines; a run stopped at the limit gets
   the table of its finished runs from ``python -m experiments report``
   (log: paper_report.log). Results files go to a temporary folder
   (``--paper-out`` to choose), not OUTDIR. The --full experiment (5 methods
   x 10 repetitions x 15 epochs at width 1) needs far more than the minutes
   left: expect a partial table, or narrow it with --paper-args, e.g.
   ``--paper-args="--optimizers SGD-momentum Hybrid --epochs 3"``.

Nothing here changes the GPU's settings; CuPy's and torch's memory pools are
emptied at the end. JAX is not imported (it would preallocate GPU memory).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from . import harness as H

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("tests", "parity", "timings", "paper_run")
JSON_NAME = "gpu_check.json"
TESTS_CMD = [sys.executable, "-m", "pytest", "-q", "-k", "cupy", "-p", "no:cacheprovider", "tests"]
PARITY_TOL = 1e-9       # float64, one backend against the other (reduction order differs on a GPU)
DENSE_LIMIT = 3000      # parity: dense Hessian only where n <= this
HESSIAN_AGREE = 1e-3    # float32 dense Hessians: a torch route counts as correct within this
RESNET_TARGET = 1.5     # tinygrad2 ResNet18 step <= 1.5x torch
HESSIAN_TARGET_S = 2.0  # the n = 12,730 dense Hessian in under 2 s
TF32_SETTING = None  # what no_tf32 set (GPU runs)
GRACE_S = 20            # the hard limit (SIGALRM) of a step: its budget plus this

# mode -> sizes; "gpu" is the real run, "rehearse" its CPU stand-in, "quick" the test's smallest setting
SIZES = {
    "gpu": dict(
        parity=dict(mlp=(64, 24, 10), mlp_batch=32, cnn_batch=8, resnet_width=0.125, resnet_batch=8, directions=3),
        mlp=(784, 32, 10), mlp_batch=1000, hess=(784, 16, 10), hess_batch=1000, hess_chunks=(None, 2048),
        torch_hess_chunk=2048, cnn_batch=128, resnet_width=1.0, resnet_batch=100,
        rounds=dict(mlp=30, hessian=3, cnn=20, resnet=10),
        caps=dict(mlp=15, hessian=60, cnn=20, resnet=45)),
    "rehearse": dict(
        parity=dict(mlp=(64, 24, 10), mlp_batch=32, cnn_batch=8, resnet_width=0.125, resnet_batch=8, directions=3),
        mlp=(784, 32, 10), mlp_batch=200, hess=(196, 8, 10), hess_batch=200, hess_chunks=(None, 512),
        torch_hess_chunk=512, cnn_batch=16, resnet_width=0.125, resnet_batch=16,
        rounds=dict(mlp=20, hessian=3, cnn=10, resnet=5),
        caps=dict(mlp=8, hessian=25, cnn=10, resnet=15)),
    "quick": dict(
        parity=dict(mlp=(16, 8, 4), mlp_batch=8, cnn_batch=2, resnet_width=0.0625, resnet_batch=2, directions=2),
        mlp=(784, 32, 10), mlp_batch=32, hess=(49, 4, 10), hess_batch=32, hess_chunks=(None, 128),
        torch_hess_chunk=128, cnn_batch=4, resnet_width=0.0625, resnet_batch=4,
        rounds=dict(mlp=3, hessian=2, cnn=2, resnet=2),
        caps=dict(mlp=3, hessian=5, cnn=4, resnet=5)),
}
BUDGETS = {  # seconds per step; paper_run gets what is left of total_s
    "gpu": dict(tests=150, parity=75, timings=150, total=440),
    "rehearse": dict(tests=60, parity=40, timings=75, total=175),
    "quick": dict(tests=30, parity=20, timings=25, total=55),
}
PAPER_MIN_S = 30  # the paper run is not started with less time than this
RESERVE_S = {"gpu": 12, "rehearse": 3, "quick": 1}  # timings: seconds kept for each case still to come
INTERRUPT_WAIT_S = 10  # after SIGINT, a child gets this long to stop before it is killed
REPORT_S = 20  # reserved after a stopped paper run: `experiments report` on the runs that finished


def say(*parts):
    print(*parts, flush=True)


# ================================================================ device-specific calls


def cupy_probe():
    """(cupy, None) when CuPy imports and runs a kernel on a GPU, else (None, one-line reason)."""
    try:
        import cupy
    except Exception as err:
        return None, f"CuPy not importable ({type(err).__name__}: {err})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "CuPy sees no CUDA device"
        if int(cupy.arange(3).sum()) != 3:
            return None, "CuPy computed a wrong sum on the GPU"
    except Exception as err:
        return None, f"CuPy imports but the GPU fails ({type(err).__name__}: {' '.join(str(err).split())})"
    return cupy, None


def cupy_sync(cupy):
    cupy.cuda.Device().synchronize()


def cupy_device_name(cupy):
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def cupy_memory(cupy):
    free, total = cupy.cuda.Device().mem_info
    pool = cupy.get_default_memory_pool()
    return {"device_free_bytes": int(free), "device_total_bytes": int(total),
            "cupy_pool_used_bytes": int(pool.used_bytes()), "cupy_pool_total_bytes": int(pool.total_bytes())}


def cupy_release(cupy):
    cupy.get_default_memory_pool().free_all_blocks()
    cupy.get_default_pinned_memory_pool().free_all_blocks()


def torch_probe(rehearse):
    """(torch, device string, None) or (None, None, reason) for the torch columns."""
    torch = H.import_torch()
    if torch is None:
        return None, None, "torch not importable (pip install '.[compare]')"
    if rehearse:
        return torch, "cpu", None
    try:
        if not torch.cuda.is_available():
            return None, None, "torch imports but torch.cuda.is_available() is False"
        torch.zeros(1, device="cuda").add_(1)
        torch.cuda.synchronize()
    except Exception as err:
        return None, None, f"torch CUDA fails ({type(err).__name__}: {' '.join(str(err).split())})"
    global TF32_SETTING
    TF32_SETTING = no_tf32(torch)
    return torch, "cuda", None


def no_tf32(torch):
    """float32 on both sides: TF32 off for matmul and cuDNN (settings of this process, not of the
    GPU). The legacy allow_tf32 flags (reading them raises once the newer fp32_precision API has
    been used, so only that API is the fallback). Returns what was set."""
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return "allow_tf32 = False (matmul, cuDNN)"
    except Exception as err:
        try:
            torch.backends.cuda.matmul.fp32_precision = "ieee"
            torch.backends.cudnn.conv.fp32_precision = "ieee"
            return "fp32_precision = 'ieee' (matmul, cuDNN conv)"
        except Exception:
            say(f"warning: could not turn TF32 off in torch ({type(err).__name__}: {err})")
            return f"unchanged ({type(err).__name__})"


class Device:
    """The measured side: tinygrad2's backend ("cupy", or "numpy" in the
    rehearsal), torch's device ("cuda"/"cpu", or None with a reason), and the
    few calls that differ between the GPU and the CPU rehearsal."""

    def __init__(self, rehearse, emulate=False):
        self.rehearse = rehearse
        self.cupy, self.unusable = None, None
        if rehearse:
            self.backend = "emulated" if emulate else "numpy"
            if emulate:
                try:
                    emulated_xp()
                except Exception as err:
                    self.unusable = f"the emulated device fails ({type(err).__name__}: {err})"
        else:
            self.backend = "cupy"
            self.cupy, self.unusable = cupy_probe()
        self.torch, self.torch_device, self.torch_missing = torch_probe(rehearse)

    def sync(self):
        if self.cupy is not None:
            cupy_sync(self.cupy)
        if self.torch is not None and self.torch_device == "cuda":
            self.torch.cuda.synchronize()

    def name(self):
        if self.rehearse:
            stand_in = "an emulated device (tests/_device.py)" if self.backend == "emulated" else "NumPy"
            return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; rehearsal: " \
                   f"{stand_in} stands in for CuPy, torch CPU for CUDA)"
        if self.cupy is None:
            return f"no usable GPU: {self.unusable}"
        return cupy_device_name(self.cupy)

    def memory(self):
        out = {}
        if self.cupy is not None:
            out.update(cupy_memory(self.cupy))
        if self.torch is not None and self.torch_device == "cuda":
            out["torch_max_allocated_bytes"] = int(self.torch.cuda.max_memory_allocated())
        return out

    def release(self):
        if self.cupy is not None:
            cupy_release(self.cupy)
        if self.torch is not None and self.torch_device == "cuda":
            self.torch.cuda.empty_cache()


def versions(device):
    out = {"python": platform.python_version(), "numpy": np.__version__, "tinygrad2": H.engine_version()}
    if device.cupy is not None:
        c = device.cupy
        out["cupy"] = c.__version__
        with contextlib.suppress(Exception):
            out["cuda_runtime"] = c.cuda.runtime.runtimeGetVersion()
            out["cuda_driver"] = c.cuda.runtime.driverGetVersion()
    else:
        with contextlib.suppress(Exception):
            out["cupy"] = importlib.metadata.version("cupy-cuda13x")
    if device.torch is not None:
        out["torch"] = device.torch.__version__
        out["torch_cuda"] = device.torch.version.cuda
        with contextlib.suppress(Exception):
            out["cudnn"] = device.torch.backends.cudnn.version()
    for dist in ("jax", "jaxlib"):  # by metadata: importing JAX would grab GPU memory
        with contextlib.suppress(Exception):
            out[dist] = importlib.metadata.version(dist)
    return out


# ================================================================ budgets, steps, JSON


class StepTimeout(Exception):
    """A step ran past its hard limit (budget + grace)."""


class Terminated(BaseException):
    """SIGTERM (the wrapper's timeout): write the JSON and stop."""


@contextlib.contextmanager
def hard_limit(seconds):
    """Raise StepTimeout in the main thread after ``seconds`` (SIGALRM; a
    no-op where there is no SIGALRM or outside the main thread)."""
    import threading

    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise StepTimeout(f"hard time limit of {seconds:.0f} s reached")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Budget:
    def __init__(self, seconds):
        self.seconds, self.t0 = seconds, time.perf_counter()

    def left(self):
        return self.seconds - (time.perf_counter() - self.t0)


class Context:
    """What every step sees: the options, the device, the sizes, the report."""

    def __init__(self, args, device):
        self.args, self.device = args, device
        self.mode = "gpu" if not args.rehearse else ("quick" if args.quick else "rehearse")
        self.sizes = SIZES[self.mode]
        self.out = Path(args.out)
        self.t0 = time.perf_counter()
        self.report = {"device": None, "versions": {}, "rehearsal": bool(args.rehearse), "mode": self.mode,
                       "steps": {}, "wall_s": None}

    def elapsed(self):
        return time.perf_counter() - self.t0


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return repr(x)


def write_json(ctx):
    ctx.report["wall_s"] = round(ctx.elapsed(), 3)
    path = ctx.out / JSON_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(ctx.report, indent=2, default=_jsonable, allow_nan=True))
    os.replace(tmp, path)
    return path


def skip(entry, reason):
    """Mark a whole step as skipped (a step cut short keeps its figures and is "partial")."""
    entry.update(status="skipped", skipped=reason)


def run_step(ctx, name, fn, budget_s):
    """Run one step under its budget; record it, whatever happens, and write the JSON."""
    entry = {"budget_s": round(budget_s, 1)}
    ctx.report["steps"][name] = entry
    say(f"\n==== step {name} (budget {budget_s:.0f} s, {ctx.elapsed():.0f} s elapsed) ====")
    t0 = time.perf_counter()
    try:
        if name in ctx.args.skip:
            skip(entry, "--skip on the command line")
        elif budget_s < 1:
            skip(entry, f"no time left ({budget_s:.0f} s)")
        else:
            with hard_limit(budget_s + GRACE_S):
                fn(ctx, Budget(budget_s), entry)
        entry.setdefault("status", "partial" if "skipped" in entry else "ok")
    except StepTimeout as err:
        entry.update(status="partial", skipped=f"{err}; the rest of the step was not run")
    except Terminated:
        entry.update(status="error", error="terminated (SIGTERM: the wrapper's time limit)")
        raise
    except Exception as err:
        tb = traceback.format_exc()
        say(tb.rstrip())
        entry.update(status="error", error=f"{type(err).__name__}: {err}", traceback=tb)
    finally:
        entry["wall_s"] = round(time.perf_counter() - t0, 3)
        if entry.get("skipped"):
            say(f"[{name}] skipped: {entry['skipped']}")
        say(f"[{name}] {entry.get('status', 'error')} in {entry['wall_s']:.1f} s")
        write_json(ctx)
    return entry


def emulated_xp():
    """The CPU emulation of a CuPy-like device namespace (tests/_device.py: device arrays refuse
    host arrays and implicit conversion), for ``--rehearse --emulate``."""
    path = ROOT / "tests" / "_device.py"
    if not path.exists():
        raise RuntimeError(f"--emulate needs {path} (the emulated device backend)")
    spec = importlib.util.spec_from_file_location("_gpu_check_device", path)
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module.emulated_xp


@contextlib.contextmanager
def on_backend(name):
    """tinygrad2 on backend ``name`` ("numpy", "cupy" or "emulated") inside the block; the
    previous one restored after."""
    from tinygrad2 import backend as B

    saved = (B.xp, B.name)
    if name == "emulated":
        B.xp, B.name = emulated_xp(), "emulated"
    else:
        B.use(name)
    try:
        yield B
    finally:
        B.xp, B.name = saved


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


# ================================================================ step 1: the CuPy tests


SUMMARY_RE = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?)")
PROGRESS_RE = re.compile(r"^([.sFEXx]+)\s*(\[\s*\d+%\])?$")


def parse_pytest(text):
    """Counts from pytest -q's summary line; None if there is none (killed)."""
    for line in reversed(text.splitlines()):
        found = SUMMARY_RE.findall(line)
        if found and (" in " in line or line.startswith("=")):
            counts = {}
            for n, what in found:
                what = {"error": "errors", "warning": "warnings"}.get(what, what)
                counts[what] = counts.get(what, 0) + int(n)
            return counts
    return None


def parse_progress(text):
    """Counts from pytest -q's progress characters (a run killed before its summary)."""
    key = {".": "passed", "s": "skipped", "F": "failed", "E": "errors", "x": "xfailed", "X": "xpassed"}
    counts = {}
    for line in text.splitlines():
        m = PROGRESS_RE.match(line.strip())
        if m:
            for ch in m.group(1):
                counts[key[ch]] = counts.get(key[ch], 0) + 1
    return counts


def child_env():
    env = {k: v for k, v in os.environ.items() if k != "TINYGRAD2_BACKEND"}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_child(cmd, log_path, timeout, interrupt_first=False):
    """Run ``cmd`` from the repository root with its output in ``log_path``;
    (return code or None, timed out?, the output)."""
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        # SIGINT back to its default in the child: a shell may have started us with it ignored,
        # and Python then never installs its KeyboardInterrupt handler
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        timed_out = False
        try:
            proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            if interrupt_first:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=INTERRUPT_WAIT_S)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return proc.returncode, timed_out, Path(log_path).read_text(errors="replace")


def step_tests(ctx, budget, entry):
    cmd = TESTS_CMD[:-1] + (["-x"] if ctx.args.rehearse else []) + TESTS_CMD[-1:]
    entry["command"] = "python " + shlex.join(cmd[1:])
    say(f"$ {entry['command']}  (TINYGRAD2_BACKEND unset; log: tests.log)")
    rc, timed_out, text = run_child(cmd, ctx.out / "tests.log", budget.left())
    counts = parse_pytest(text)
    entry.update(returncode=rc, timed_out=timed_out, counts=counts or parse_progress(text))
    if counts is None:
        entry["counts_from"] = "progress lines (no summary line)"
    if timed_out:
        entry["skipped"] = f"budget of {budget.seconds:.0f} s spent: pytest killed, the counts are partial"
    tail = text.strip().splitlines()[-15:]
    entry["tail"] = tail
    for line in tail:
        say(f"  {line}")
    say(f"tests: return code {rc}, counts {entry['counts']}")


# ================================================================ step 2: float64 parity


def parity_cases(P):
    import nets

    return [
        (f"MLP {'-'.join(map(str, P['mlp']))}", lambda: nets.MLP(P["mlp"]), (P["mlp"][0],), P["mlp_batch"]),
        ("SmallCNN 3x32x32", lambda: nets.SmallCNN(), (3, 32, 32), P["cnn_batch"]),
        (f"ResNet18 width {P['resnet_width']:g} (BN train mode) 1x28x28",
         lambda: nets.ResNet18(1, 10, stem="imagenet", width=P["resnet_width"]), (1, 28, 28), P["resnet_batch"]),
    ]


def parity_quantities(backend_name, factory, X, y, V, dense):
    """loss, gradient, HVPs and (if ``dense``) the Hessian, float64, on one backend, as host arrays."""
    with on_backend(backend_name) as B, B.precision("float64"):
        model = factory()
        theta = model.init_theta(0, dtype=np.float64)
        obj = model.objective("cross_entropy", B.to_device(X), B.to_device(y))
        loss, g = obj.loss_and_grad(theta)
        out = {"loss": np.float64(loss), "grad": B.to_host(g), "hvp": B.to_host(obj.hvp(theta, B.to_device(V)))}
        if dense:
            out["hessian"] = B.to_host(obj.hessian(theta))
        return out


def step_parity(ctx, budget, entry):
    if ctx.device.unusable:
        return skip(entry, ctx.device.unusable)
    P = ctx.sizes["parity"]
    entry.update(reference="numpy", measured=ctx.device.backend, dtype="float64", tolerance=PARITY_TOL)
    entry["metric"] = "max |measured - reference| / max |reference|"
    rng = np.random.default_rng(0)
    models, skipped = {}, []
    entry["models"] = models  # filled in as it goes: a hard stop keeps the models checked so far
    for label, factory, shape, batch in parity_cases(P):
        if budget.left() <= 0:
            skipped.append(label)
            say(f"parity: budget spent, {label} not checked")
            continue
        t0 = time.perf_counter()
        try:
            with on_backend("numpy"):
                n = factory().num_parameters()
            X = rng.random((batch,) + shape)
            y = rng.integers(0, 10 if "MLP" not in label else P["mlp"][-1], batch)
            V = rng.standard_normal((P["directions"], n))
            dense = n <= DENSE_LIMIT
            ref = parity_quantities("numpy", factory, X, y, V, dense)
            got = parity_quantities(ctx.device.backend, factory, X, y, V, dense)
            row = {"n": n, "batch": batch, "directions": P["directions"]}
            for q in ref:
                row[f"{q}_rel_err"] = rel(got[q], ref[q])
            if not dense:
                row["hessian"] = f"skipped: n = {n:,} > {DENSE_LIMIT:,}"
            worst = max(v for k, v in row.items() if k.endswith("_rel_err"))
            row.update(max_rel_err=worst, ok=bool(worst <= PARITY_TOL), seconds=round(time.perf_counter() - t0, 2))
        except StepTimeout:
            raise
        except Exception as err:
            say(traceback.format_exc().rstrip())
            row = {"error": f"{type(err).__name__}: {err}"}
        models[label] = row
        errs = ", ".join(f"{k.removesuffix('_rel_err')} {v:.1e}" for k, v in row.items() if k.endswith("_rel_err")
                         and k != "max_rel_err")
        n_text = f"{row['n']:,}" if "n" in row else "?"
        say(f"  {label:<48s} n={n_text:>9s} " + (errs or row.get("error", "")) +
            (f"  {'ok' if row.get('ok') else 'FAIL'}" if "ok" in row else "") +
            (f"  ({row['hessian']})" if "hessian" in row else ""))
    if skipped:
        entry["skipped"] = f"budget of {budget.seconds:.0f} s spent: not checked: {', '.join(skipped)}"
    entry["all_ok"] = all(r.get("ok", False) for r in models.values()) and not skipped


# ================================================================ step 3: timings


def time_cells(cells, rounds, sync, cap_s, rng, warmup=2):
    """Warm-up calls, then interleaved rounds in a shuffled order, each call
    bracketed by ``sync``; stops after ``cap_s`` seconds (at least one round).
    Returns harness.Timings."""
    t_start = time.perf_counter()
    for fn in cells.values():
        for _ in range(warmup):
            fn()
            sync()
    times = {k: [] for k in cells}
    order = list(cells)
    for r in range(rounds):
        if r > 0 and time.perf_counter() - t_start > cap_s:
            break
        rng.shuffle(order)
        for k in order:
            sync()
            t0 = time.perf_counter()
            cells[k]()
            sync()
            times[k].append(time.perf_counter() - t0)
    return H.Timings(times, {k: len(v) for k, v in times.items()})


def stats(ts):
    return {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "rounds": len(ts)}


def make_row(name, timings, tg, th=None, target=None, torch_missing=None):
    row = {"name": name, "tinygrad2": stats(timings.times[tg]), "torch": None, "ratio": None,
           "target": target, "target_met": None}
    if th is not None and th in timings.times:
        row["torch"] = stats(timings.times[th])
        r = timings.ratio(tg, th)
        row["ratio"] = {"median": r.median, "min": r.lo, "max": r.hi, "rounds": r.n}
    elif torch_missing:
        row["torch"] = f"unavailable: {torch_missing}"
    return row


def torch_flat(ctx, model, theta_host, X, y):
    """The torch twin of ``model`` on torch's device, loaded with tinygrad2's weights:
    (f(flat) -> loss, flat theta, the twin, X, y), all on torch's device."""
    from . import torch_twins as T

    torch, dev = ctx.device.torch, ctx.device.torch_device
    with on_backend("numpy"):
        net = T.twin(model).float()
        pmap = T.parameter_map(model, net)
        buffers = {k: v.float() if v.is_floating_point() else v for k, v in T.buffers_of(model, net).items()}
        T.load(net, torch.from_numpy(np.ascontiguousarray(theta_host, np.float32)), pmap, buffers)
    net = net.to(dev)
    buffers = {k: v.to(dev) for k, v in buffers.items()}
    Xt = torch.from_numpy(np.ascontiguousarray(X, np.float32)).to(dev)
    yt = torch.from_numpy(np.ascontiguousarray(y, np.int64)).to(dev)
    flat = torch.from_numpy(np.ascontiguousarray(theta_host, np.float32)).to(dev)
    return T.flat_function(net, pmap, buffers, Xt, yt), flat, net, Xt, yt


def grad_hvp_cells(ctx, label, factory, X, y, rng):
    """{cell: fn} for loss+gradient and HVP of one model, tinygrad2 and (if any) torch."""
    dev = ctx.device
    with on_backend("numpy"):
        host_model = factory()
        theta_host = host_model.init_theta(0, dtype=np.float32)
    v_host = rng.standard_normal(theta_host.shape).astype(np.float32)
    with on_backend(dev.backend) as B:
        model = factory()
        theta, v = B.to_device(theta_host), B.to_device(v_host)
        obj = model.objective("cross_entropy", B.to_device(X), B.to_device(y))
    cells = {"tg2 grad": lambda: obj.loss_and_grad(theta), "tg2 HVP": lambda: obj.hvp(theta, v)}
    if dev.torch is not None:
        torch = dev.torch
        f, flat, *_ = torch_flat(ctx, host_model, theta_host, X, y)
        vt = torch.from_numpy(v_host).to(dev.torch_device)
        grad_f = torch.func.grad(f)

        def t_grad():
            p = flat.detach().requires_grad_(True)
            loss = f(p)
            g = torch.autograd.grad(loss, p)[0]
            return loss.item(), g

        cells["torch grad"] = t_grad
        cells["torch HVP"] = lambda: torch.func.jvp(grad_f, (flat,), (vt,))[1]
        # the same numbers on both sides (float32)
        with on_backend(dev.backend) as B:
            err_g = rel(t_grad()[1].cpu().numpy(), B.to_host(obj.grad(theta)))
            err_h = rel(cells["torch HVP"]().cpu().numpy(), B.to_host(obj.hvp(theta, v)))
        say(f"  {label}: float32 tinygrad2 vs torch: grad {err_g:.1e}, HVP {err_h:.1e}")
        return cells, {"grad_rel_diff_vs_torch": err_g, "hvp_rel_diff_vs_torch": err_h}
    return cells, {}


def timing_mlp_pair(ctx, budget, rng, label, factory, X, y, kind):
    S, dev = ctx.sizes, ctx.device
    cells, check = grad_hvp_cells(ctx, label, factory, X, y, rng)
    with on_backend(dev.backend):
        t = time_cells(cells, S["rounds"][kind], dev.sync, min(S["caps"][kind], budget.left()), rng)
    has_torch = dev.torch is not None
    rows = [make_row(f"{label} grad", t, "tg2 grad", "torch grad" if has_torch else None,
                     torch_missing=dev.torch_missing),
            make_row(f"{label} HVP", t, "tg2 HVP", "torch HVP" if has_torch else None,
                     torch_missing=dev.torch_missing)]
    for r in rows:
        r.update(check)
        r["tg2_hvp_over_grad"] = None
    rows[1]["tg2_hvp_over_grad"] = t.ratio("tg2 HVP", "tg2 grad").median
    return rows


def timing_hessian(ctx, budget, rng):
    """Dense Hessian rows: tinygrad2 per chunk setting; torch the fastest correct route."""
    import nets
    from tinygrad2.directions import unit_rows

    S, dev = ctx.sizes, ctx.device
    sizes, batch = S["hess"], S["hess_batch"]
    X = rng.random((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch)
    factory = lambda: nets.MLP(sizes, activation="tanh")
    with on_backend("numpy"):
        host_model = factory()
        theta_host = host_model.init_theta(0, dtype=np.float32)
    n = theta_host.size
    label = f"MLP {'-'.join(map(str, sizes))} (tanh) B{batch} dense Hessian (n={n:,})"
    target = f"< {HESSIAN_TARGET_S:g} s" + (" (GPU target; rehearsal size)" if ctx.args.rehearse else "")
    cap = min(S["caps"]["hessian"], budget.left())
    t_start = time.perf_counter()
    with on_backend(dev.backend) as B:
        model = factory()
        theta = B.to_device(theta_host)
        obj = model.objective("cross_entropy", B.to_device(X), B.to_device(y), memory_budget=64 * 2**30)
        cells, H_tg = {}, None
        for chunk in S["hess_chunks"]:
            k, _ = obj.memory_forecast(theta, n * n, n, chunk)
            # estimate from one chunk (after a warm-up chunk: kernel compilation)
            E = unit_rows(0, k, n, theta.dtype)
            obj.hvp(theta, E)
            dev.sync()
            t0 = time.perf_counter()
            obj.hvp(theta, E)
            dev.sync()
            est = (time.perf_counter() - t0) * math.ceil(n / k)
            name = f"tg2 hessian chunk {k}" + (" (auto)" if chunk is None else "")
            say(f"  {name}: estimated {est:.2f} s from one chunk")
            if est * 2 > cap - (time.perf_counter() - t_start):
                say(f"  {name}: skipped, the estimate does not fit the {cap:.0f} s cap")
                continue
            cells[name] = (lambda k=k: obj.hessian(theta, chunk=k))
            if H_tg is None:
                H_tg = B.to_host(obj.hessian(theta, chunk=k))
        torch_routes, H_ref = {}, None
        if dev.torch is not None and H_tg is not None:
            torch = dev.torch
            f, flat, *_ = torch_flat(ctx, host_model, theta_host, X, y)
            hvp1 = lambda u: torch.func.jvp(torch.func.grad(f), (flat,), (u,))[1]
            c = S["torch_hess_chunk"]
            H_ref = torch.from_numpy(H_tg).to(dev.torch_device)  # compared on the device: n^2 entries
            scale = float(H_ref.abs().max())
            routes = {
                "torch.func.hessian": lambda: torch.func.hessian(f)(flat),
                f"torch vmap HVP chunk {c}": lambda: torch.func.vmap(hvp1, chunk_size=c)(
                    torch.eye(n, device=dev.torch_device, dtype=flat.dtype)),
            }
            for rname, fn in routes.items():
                if cap - (time.perf_counter() - t_start) <= 0:
                    torch_routes[rname] = "skipped: cap spent"
                    continue
                try:
                    Ht = fn()
                    dev.sync()
                    err = float((Ht - H_ref).abs().max()) / max(scale, 1e-300)
                    del Ht
                    torch_routes[rname] = {"rel_diff_vs_tinygrad2": err, "correct": err <= HESSIAN_AGREE}
                    say(f"  {rname}: rel. difference to tinygrad2's {err:.1e}")
                    if err <= HESSIAN_AGREE:
                        cells[rname] = fn
                except StepTimeout:
                    raise
                except Exception as err:
                    torch_routes[rname] = f"fails: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
                    say(f"  {rname}: {torch_routes[rname]}")
                    if dev.torch_device == "cuda":
                        torch.cuda.empty_cache()
        if not cells:
            return [{"name": label, "skipped": "no contender fits the time cap"}]
        left = cap - (time.perf_counter() - t_start)
        H_tg = H_ref = None  # free the reference copies before timing
        t = time_cells(cells, S["rounds"]["hessian"], dev.sync, left, rng, warmup=1)
    tnames = [k for k in t.times if k.startswith("torch")]
    best_torch = min(tnames, key=lambda k: statistics.median(t.times[k])) if tnames else None
    rows = []
    for name in (k for k in t.times if k.startswith("tg2")):
        row = make_row(f"{label}, {name.removeprefix('tg2 hessian ')}", t, name, best_torch, target,
                       torch_missing=dev.torch_missing if dev.torch is None else "no torch route fits or agrees")
        row["torch_route"] = best_torch
        row["torch_routes"] = {**torch_routes, **{k: {**torch_routes.get(k, {}), **stats(t.times[k])}
                                                  for k in tnames}}
        row["target_met"] = row["tinygrad2"]["median"] < HESSIAN_TARGET_S
        rows.append(row)
    return rows


def timing_resnet(ctx, budget, rng):
    import nets
    import optimizers

    S, dev = ctx.sizes, ctx.device
    width, batch = S["resnet_width"], S["resnet_batch"]
    X = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    factory = lambda: nets.ResNet18(1, 10, stem="imagenet", width=width)
    lr, momentum = 0.005, 0.9
    with on_backend("numpy"):
        host_model = factory()
        theta_host = host_model.init_theta(0, dtype=np.float32)
    label = f"ResNet18 width {width:g} 1x28x28 B{batch} SGD step (n={theta_host.size:,})"
    target = f"<= {RESNET_TARGET:g}x torch" + (" (GPU target; rehearsal size)" if ctx.args.rehearse else "")
    with on_backend(dev.backend) as B:
        model = factory()
        obj = model.objective("cross_entropy", B.to_device(X), B.to_device(y))
        opt = optimizers.SGD(lr=lr, momentum=momentum)
        st = {"theta": B.to_device(theta_host)}
        st["state"] = opt.init(st["theta"])

        def tg_step():
            with model.updating_running_stats():
                st["theta"], st["state"], info = opt.step(obj, st["theta"], st["state"])
            return info["loss"]

        cells = {"tg2 step": tg_step}
        if dev.torch is not None:
            torch = dev.torch
            _, _, net, Xt, yt = torch_flat(ctx, host_model, theta_host, X, y)
            net.train()
            topt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)

            def torch_step():
                topt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(net(Xt), yt)
                loss.backward()
                topt.step()
                return loss.item()

            l_tg, l_t = tg_step(), torch_step()  # the first step's losses: the same network and batch
            say(f"  {label}: first-step loss tinygrad2 {l_tg:.6f}, torch {l_t:.6f}")
            cells["torch step"] = torch_step
        t = time_cells(cells, S["rounds"]["resnet"], dev.sync, min(S["caps"]["resnet"], budget.left()), rng)
    row = make_row(label, t, "tg2 step", "torch step" if dev.torch is not None else None, target,
                   torch_missing=dev.torch_missing)
    if row["ratio"] is not None:
        row["target_met"] = row["ratio"]["median"] <= RESNET_TARGET
    return [row]


def fmt_s(s):
    return f"{s * 1e3:,.2f} ms" if s < 1 else f"{s:,.2f} s"


def print_timing_table(rows):
    head = ("case", "tinygrad2 median [min-max]", "torch median [min-max]", "tg2/torch [spread]", "target")
    lines = []
    for r in rows:
        if "skipped" in r or "error" in r:
            lines.append((r["name"], r.get("skipped") or r.get("error"), "", "", ""))
            continue
        tg = r["tinygrad2"]
        tgs = f"{fmt_s(tg['median'])} [{fmt_s(tg['min'])}-{fmt_s(tg['max'])}] x{tg['rounds']}"
        t = r["torch"]
        ts = (f"{fmt_s(t['median'])} [{fmt_s(t['min'])}-{fmt_s(t['max'])}]" if isinstance(t, dict)
              else (t or "-"))
        if r.get("torch_route"):
            ts += f" ({r['torch_route']})"
        ra = r["ratio"]
        rs = f"{ra['median']:.2f}x [{ra['min']:.2f}-{ra['max']:.2f}]" if ra else "-"
        if r.get("tg2_hvp_over_grad"):
            rs += f"; HVP/grad {r['tg2_hvp_over_grad']:.2f}x"
        tgt = r["target"] or ""
        if r["target_met"] is not None:
            tgt += f": {'PASS' if r['target_met'] else 'FAIL'}"
        lines.append((r["name"], tgs, ts, rs, tgt))
    widths = [max(len(str(x[i])) for x in [head] + lines) for i in range(len(head))]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    say(fmt(head))
    say("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        say(fmt(line))


def step_timings(ctx, budget, entry):
    import nets

    if ctx.device.unusable:
        return skip(entry, ctx.device.unusable)
    S, dev = ctx.sizes, ctx.device
    rng = np.random.default_rng(1)
    entry["conditions"] = {
        "dtype": "float32", "device": dev.backend, "torch_device": dev.torch_device,
        "torch": dev.torch_missing or (f"eager, TF32 off: {TF32_SETTING}" if dev.torch_device == "cuda" else "eager"),
        "sync": "device synchronize before and after every timed call",
        "rounds": "interleaved, shuffled order, after 2 warm-up calls (dense Hessian: 1); capped per case",
        "data": "uniform [0, 1) inputs, random labels", "sizes": {k: v for k, v in S.items() if k != "parity"},
    }
    rows = []
    entry["rows"] = rows
    mlp = S["mlp"]
    Xm = rng.random((S["mlp_batch"], mlp[0]), dtype=np.float32)
    ym = rng.integers(0, mlp[-1], S["mlp_batch"])
    Xc = rng.random((S["cnn_batch"], 3, 32, 32), dtype=np.float32)
    yc = rng.integers(0, 10, S["cnn_batch"])
    # the two cases with targets right after the cheap MLP (whose warm-up compiles the basic kernels);
    # every case leaves RESERVE_S per later case, so that the hard limit does not cut one mid-way
    cases = [
        ("mlp", lambda b: timing_mlp_pair(ctx, b, rng, f"MLP {'-'.join(map(str, mlp))} B{S['mlp_batch']}",
                                          lambda: nets.MLP(mlp), Xm, ym, "mlp")),
        ("hessian", lambda b: timing_hessian(ctx, b, rng)),
        ("resnet", lambda b: timing_resnet(ctx, b, rng)),
        ("cnn", lambda b: timing_mlp_pair(ctx, b, rng, f"SmallCNN 3x32x32 B{S['cnn_batch']}",
                                          lambda: nets.SmallCNN(), Xc, yc, "cnn")),
    ]
    not_run = []
    try:
        for i, (kind, fn) in enumerate(cases):
            reserve = RESERVE_S[ctx.mode] * (len(cases) - 1 - i)
            if budget.left() - reserve <= 1:
                not_run.append(kind)
                say(f"timings: budget spent, case {kind} not timed")
                continue
            say(f"timing {kind} ({budget.left():.0f} s left in the step)")
            try:
                rows.extend(fn(Budget(budget.left() - reserve)))
            except StepTimeout:
                not_run.append(f"{kind} (interrupted)")
                raise
            except Exception as err:
                say(traceback.format_exc().rstrip())
                rows.append({"name": kind, "error": f"{type(err).__name__}: {err}"})
            finally:
                with contextlib.suppress(Exception):
                    dev.release()
            write_json(ctx)
    finally:
        if not_run:
            entry["skipped"] = f"budget of {budget.seconds:.0f} s spent: not timed: {', '.join(not_run)}"
        with contextlib.suppress(Exception):
            entry["memory"] = dev.memory()
        say("")
        print_timing_table(rows)
        if dev.torch is None:
            say(f"torch columns: {dev.torch_missing}")


# ================================================================ step 4: the paper's experiment


def step_paper_run(ctx, budget, entry):
    from experiments import data as D

    if not os.environ.get(D.ENV_VAR):
        return skip(entry, f"{D.ENV_VAR} is not set (the MNIST data folder)")
    try:
        D.load_mnist(None, verify=False)
    except D.DataError as err:
        return skip(entry, f"no usable MNIST data in ${D.ENV_VAR}={os.environ[D.ENV_VAR]}: "
                           f"{' '.join(str(err).split())[:300]}")
    if ctx.device.unusable:
        return skip(entry, ctx.device.unusable)
    left = budget.left()
    if left < PAPER_MIN_S:
        return skip(entry, f"only {left:.0f} s left (< {PAPER_MIN_S} s)")
    scale, device = (["--quick"], "cpu") if ctx.args.rehearse else (["--full"], "gpu")
    # results files (ResNet18 checkpoints, ~45 MB each at width 1) go to a scratch folder, not OUTDIR
    folder = Path(ctx.args.paper_out or tempfile.mkdtemp(prefix="gpu_check_paper_run_"))
    entry["results_folder"] = str(folder)
    cmd = [sys.executable, "-m", "experiments", "run", "resnet18-mnist-hybrid", *scale, "--device", device,
           "--out", str(folder), "--overwrite", *shlex.split(ctx.args.paper_args or "")]
    entry["command"] = "python " + shlex.join(cmd[1:])
    limit = left - INTERRUPT_WAIT_S - REPORT_S
    say(f"$ {entry['command']}  (timeout {limit:.0f} s; log: paper_run.log)")
    rc, timed_out, text = run_child(cmd, ctx.out / "paper_run.log", limit, interrupt_first=True)
    lines = text.splitlines()
    runs = [line.strip() for line in lines if re.search(r"\d s +-> ", line)]
    entry.update(returncode=rc, timed_out=timed_out, table=[line for line in lines if line.startswith("|")],
                 runs=runs, tail=lines[-25:])
    if timed_out:
        entry["skipped"] = f"stopped after {limit:.0f} s (the time left); the table covers the runs that finished"
        finished = [line.split("-> ", 1)[1] for line in runs if " finished " in line]
        if finished:  # the table of what finished, by `experiments report`
            cmd = [sys.executable, "-m", "experiments", "report", *finished]
            _, _, text = run_child(cmd, ctx.out / "paper_report.log", max(budget.left() - 2, 5))
            entry["table"] = [line for line in text.splitlines() if line.startswith("|")]
    for line in entry["table"] or entry["runs"] or entry["tail"]:
        say(f"  {line}")


# ================================================================ main


STEP_FUNCTIONS = {"tests": step_tests, "parity": step_parity, "timings": step_timings, "paper_run": step_paper_run}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder of the JSON and the logs (created if missing)")
    ap.add_argument("--rehearse", action="store_true",
                    default=os.environ.get("GPU_CHECK_REHEARSE", "") not in ("", "0"),
                    help="CPU rehearsal: NumPy for CuPy, torch CPU for CUDA, reduced sizes "
                         "(also GPU_CHECK_REHEARSE=1)")
    ap.add_argument("--quick", action="store_true", help="with --rehearse: the smallest sizes (the test's)")
    ap.add_argument("--emulate", action="store_true",
                    help="with --rehearse: the measured side on the emulated device of tests/_device.py "
                         "(CuPy's host/device rules on the CPU) instead of plain NumPy")
    ap.add_argument("--skip", action="append", default=[], choices=STEPS, help="skip a step (repeatable)")
    ap.add_argument("--budget", action="append", default=[], metavar="STEP=SECONDS",
                    help="override a step's budget (tests, parity, timings)")
    ap.add_argument("--total-s", type=float, default=None,
                    help="the whole run's budget; the paper run gets what is left (default 440, rehearsal 175; "
                         "capped by $GPU_CHECK_TOTAL_S, which the wrapper sets)")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS (and torch CPU) threads; default: 1 in the rehearsal, the libraries' own on the GPU")
    ap.add_argument("--paper-args", default="", help="extra options for the paper run (one string)")
    ap.add_argument("--paper-out", default=None,
                    help="results folder of the paper run (default: a new temporary folder; its table and "
                         "log are in OUTDIR either way)")
    args = ap.parse_args(argv)
    if (args.quick or args.emulate) and not args.rehearse:
        ap.error("--quick and --emulate need --rehearse (the GPU run has one setting)")
    return args


def blas_threads(n):
    """harness.thread_limit, or no change without threadpoolctl."""
    try:
        return H.thread_limit(n)
    except ImportError:
        say(f"threadpoolctl not installed: BLAS threads left as they are (asked for {n})")
        return contextlib.nullcontext()


def run_all(args, step_functions=None):
    """Run the four steps; returns the report (also in OUT/gpu_check.json)."""
    funcs = dict(STEP_FUNCTIONS, **(step_functions or {}))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = Device(args.rehearse, args.emulate)
    ctx = Context(args, device)
    budgets = dict(BUDGETS[ctx.mode])
    for item in args.budget:
        key, _, value = item.partition("=")
        if key not in ("tests", "parity", "timings"):
            raise SystemExit(f"gpu_check: --budget {item}: the step must be tests, parity or timings")
        budgets[key] = float(value)
    total = args.total_s if args.total_s is not None else budgets["total"]
    if args.total_s is None and os.environ.get("GPU_CHECK_TOTAL_S"):  # the wrapper's time left, as a cap
        total = min(total, float(os.environ["GPU_CHECK_TOTAL_S"]))
    threads = args.threads if args.threads is not None else (1 if args.rehearse else 0)
    saved_torch_threads = device.torch.get_num_threads() if device.torch is not None else None
    with blas_threads(threads):  # restored on exit: run_all may run inside a test
        if device.torch is not None and threads > 0:
            device.torch.set_num_threads(threads)
        try:
            _run_steps(ctx, device, funcs, budgets, total, threads)
        finally:
            if saved_torch_threads is not None:
                device.torch.set_num_threads(saved_torch_threads)
    return ctx.report


def _run_steps(ctx, device, funcs, budgets, total, threads):
    ctx.report["device"] = device.name()
    ctx.report["versions"] = versions(device)
    ctx.report["config"] = {"budgets_s": {**{k: budgets[k] for k in ("tests", "parity", "timings")},
                                          "total": total}, "threads": threads,
                            "torch": device.torch_missing or f"torch on {device.torch_device}"}
    say(f"gpu_check ({ctx.mode}{', REHEARSAL' if ctx.args.rehearse else ''}): device {ctx.report['device']}")
    say("versions: " + ", ".join(f"{k} {v}" for k, v in ctx.report["versions"].items()))
    if device.unusable:
        say(f"GPU unusable: {device.unusable} -- parity, timings and the paper run are skipped")
    if device.torch is None:
        say(f"torch columns unavailable: {device.torch_missing}")
    write_json(ctx)
    try:
        for name in STEPS:
            if name == "paper_run":
                budget = total - ctx.elapsed() - 10
            else:
                budget = min(budgets[name], total - ctx.elapsed() - 10)
            run_step(ctx, name, funcs[name], budget)
    finally:
        for name in STEPS:
            ctx.report["steps"].setdefault(name, {"status": "skipped", "skipped": "not reached"})
        with contextlib.suppress(Exception):
            device.release()
        path = write_json(ctx)
        say(f"\nwrote {path} ({ctx.elapsed():.1f} s)")


def main(argv=None):
    args = parse_args(argv)

    def terminate(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        report = run_all(args)
    except Terminated:
        say("terminated (SIGTERM): the JSON holds the steps finished so far")
        return 143
    bad = [k for k, s in report["steps"].items() if s.get("status") == "error"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
