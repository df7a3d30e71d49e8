"""Smoke tests of the benchmarks (``benchmarks/``, not installed): each one's
``--quick`` mode runs from the repository root as ``python -m benchmarks.X``
on GENERATED data in the original formats (MNIST IDX .gz, CIFAR-10 binary
batches) found through ``$TINYGRAD2_DATA``, prints the shared header and its
tables, and shows torch columns exactly when torch is importable. Plus: a
missing data folder ends a benchmark with one line naming TINYGRAD2_DATA,
and the benchmarks stay out of the wheel."""
from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.cpu_only  # host-bound: PyTorch references and benchmark subprocesses

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
MNIST_TRAIN, CIFAR_BATCH_1 = 1000, 128  # the most any benchmark reads (engine and curvature; nets)


def _idx(array):
    """An unsigned-byte IDX file: magic 0x0000 0x08 ndim, big-endian uint32 dims, the bytes."""
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.astype(np.uint8).tobytes()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Tiny MNIST (1,000 training images) and CIFAR-10 (128 records in
    data_batch_1.bin, 2 in each other batch) with random pixels."""
    root = tmp_path_factory.mktemp("bench-data")
    rng = np.random.default_rng(0)
    mnist = root / "mnist"
    mnist.mkdir()
    for prefix, n in (("train", MNIST_TRAIN), ("t10k", 10)):
        y = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (mnist / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images), compresslevel=1))
        (mnist / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(y), compresslevel=1))
    cifar = root / "cifar10"
    cifar.mkdir()
    batches = [("data_batch_1", CIFAR_BATCH_1)] + [(f"data_batch_{i}", 2) for i in range(2, 6)] + [("test_batch", 2)]
    for name, n in batches:
        y = (np.arange(n) % 10).astype(np.uint8)
        pixels = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        (cifar / f"{name}.bin").write_bytes(np.concatenate([y[:, None], pixels], axis=1).tobytes())
    return root


def run_benchmark(module, data_dir, *args, timeout=180):
    # one OpenMP thread: benchmarks.engine leaves torch's thread pool at its
    # default, whose spinning threads make every torch call many times slower
    # when the machine is busy (as it is while the rest of the suite runs)
    env = dict(os.environ, TINYGRAD2_DATA=str(data_dir), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"{module} exited with {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def check_header(text, name):
    lines = text.splitlines()
    assert lines[0].startswith(f"== {name} (quick run) -- ")
    assert re.search(r"^machine: \d+ CPUs, .*python 3\.\d+\.\d+, numpy \d", text, re.M)
    blas = next(line for line in lines if line.startswith("BLAS: "))
    assert "kernel" in blas or "unknown" in blas
    assert re.search(r"^threads: --threads \d", text, re.M)
    env = next(line for line in lines if line.startswith("environment: "))
    assert "OPENBLAS_CORETYPE" in env and "OPENBLAS_L2_SIZE" in env
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        assert (f"{var}={os.environ[var]!r}" in env) if var in os.environ else f"{var} not set" in env


def test_engine_quick(data_dir):
    text = run_benchmark("benchmarks.engine", data_dir, "--quick", "--no-verify")
    check_header(text, "benchmarks.engine")
    assert f"data: MNIST ({data_dir / 'mnist'}, first 1000 training images and labels)" in text
    head = next(line for line in text.splitlines() if line.startswith("| batch |"))
    assert ("grad torch" in head) == HAS_TORCH
    rows = [line for line in text.splitlines() if re.match(r"\| (64|1000) +\| (module|flat)", line)]
    assert len(rows) == 4
    assert "paired ratios, median [min-max]" in text and "ABORT" not in text
    assert "HVP  K=3 NumPy R-op pass vs R-op each" in text and "HVP  K=3 tinygrad2 flat vs R-op each" in text
    per_direction = re.findall(r"(flat|NumPy R-op) HVP per direction \(K=16 in one pass\)/flat grad (\d+\.\d\d)x", text)
    assert sorted(who for who, _ in per_direction) == ["NumPy R-op"] * 2 + ["flat"] * 2  # batch 64 and 1000
    # a pass of 16 directions costs more than one gradient and less than 16 HVPs at 5x a gradient each
    assert all(1 / 16 < float(r) < 5 for _, r in per_direction), per_direction
    passes = re.findall(r"flat K=16 pass/NumPy K=16 pass (\d+\.\d\d)x", text)
    assert len(passes) == 2 and all(0.2 < float(r) < 20 for r in passes), passes
    assert "host memory: freed memory kept for reuse" in text or not sys.platform.startswith("linux")


def test_engine_directions_sweep_prints_the_best_k_per_batch(data_dir):
    text = run_benchmark("benchmarks.engine", data_dir, "--quick", "--no-verify", "--directions", "--rounds", "2")
    rows = [line for line in text.splitlines() if re.match(r"\| (64|1000) \| \d", line)]
    assert len(rows) == 2
    for row in rows:
        cells = row.strip("|").split("|")
        assert len(cells) == 11  # batch, K = 1 ... 256, best K
        assert int(cells[-1]) in (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert "planner: tinygrad2.memory.preferred_chunk = 64" in text
    floor = re.search(r"^floor at K=16: .* / gradient: (\d+\.\d\d)x \[.*\] at batch 64, (\d+\.\d\d)x .* at batch 1000$",
                      text, re.M)
    assert floor and all(float(r) > 0 for r in floor.groups())


def test_curvature_quick(data_dir):
    text = run_benchmark("benchmarks.curvature", data_dir, "--quick", "--no-verify", "--cases", "mnist")
    check_header(text, "benchmarks.curvature")
    assert "mnist: MLP 784-16-10 (tanh), MNIST (" in text and "rows 0..31" in text
    assert re.search(r"^\| mnist \(float32\) \| 12,730 \| 32 \| .* \| (PASS|FAIL) ", text, re.M)
    assert re.search(r"^\| mnist \| .* MiB \|", text, re.M)  # the memory table (subprocesses)
    assert ("| torch | torch / NumPy |" in text) == HAS_TORCH
    assert "per-chunk ratios to the NumPy R-op" in text


def test_nets_quick(data_dir):
    text = run_benchmark("benchmarks.nets", data_dir, "--quick", "--no-verify")
    check_header(text, "benchmarks.nets")
    assert f"SmallCNN data: CIFAR-10 ({data_dir / 'cifar10'}, first 128 training records)" in text
    assert "| SmallCNN b128 HVP | tinygrad2 |" in text and "| ResNet18 b10 1x28x28 step | tinygrad2 |" in text
    assert ("| SmallCNN b128 grad | torch eager |" in text) == HAS_TORCH
    if not HAS_TORCH:
        assert "torch columns skipped" in text


@pytest.mark.skipif(not HAS_TORCH, reason="needs PyTorch (the compare extra)")
def test_crosscheck_torch_quick(tmp_path):
    text = run_benchmark("benchmarks.crosscheck_torch", tmp_path, "--quick")
    check_header(text, "benchmarks.crosscheck_torch")
    assert re.search(r"^torch \d+\.\d+", text, re.M)
    for net in ("mlp-tanh", "mlp-relu", "smallcnn", "vgg11-bn-train", "vgg11-wn"):
        for quantity in ("loss", "gradient", "HVP"):
            assert re.search(rf"^\| {net} \| {quantity} \| ", text, re.M), (net, quantity)
    assert re.search(r"^\| mlp-relu \| Hessian \| .* \| all agree \|$", text, re.M)
    assert re.search(r"^\| vgg11-bn-train \| running stats \| \d\.\de-\d+ \|", text, re.M)
    # PyTorch's fused weight norm: whatever its routes do, FD referees them in the verdict
    assert re.search(r"^\| vgg11-wn \| HVP \| .* \| (all agree|FD: tinygrad2 ok, .*) \|$", text, re.M)
    assert "worst tinygrad2 error against FD: " in text
    assert text.rstrip().endswith("and with every FD-confirmed PyTorch route")  # the PASS line, exit 0


def test_nets_resnet_rounds_are_set_by_the_flag_and_checked_before_any_work(data_dir):
    text = run_benchmark("benchmarks.nets", data_dir, "--quick", "--no-verify", "--resnet-rounds", "2")
    assert re.search(r"^repeats: .*tg2 ResNet18 step 2\b", text, re.M)
    out = subprocess.run([sys.executable, "-m", "benchmarks.nets", "--resnet-rounds", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--resnet-rounds must be at least 1, got 0" in out.stderr
    assert "nets benchmark" not in out.stdout  # refused before the header and the data


def test_crosscheck_torch_without_torch_is_one_line():
    code = ("import runpy, sys; sys.modules['torch'] = None; "
            "runpy.run_module('benchmarks.crosscheck_torch', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and 'pip install -e ".[compare]"' in lines[0], out.stdout


def test_crosscheck_verdicts_are_decided_by_finite_differences():
    """The verdict logic without torch: a PyTorch route that FD refutes is a
    PyTorch case and does not fail the run; tinygrad2 off FD does."""
    from benchmarks.crosscheck_torch import Row

    fd, good, bad = np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-12]), np.array([1.0, 2.5])
    row = Row("net", "HVP", {"tinygrad2": good, "autograd": good, "torch.func": bad}, fd).compare()
    assert row.passed() and row.verdict() == "FD: tinygrad2 ok, autograd ok, torch.func WRONG"
    assert [route for route, _ in row.torch_cases()] == ["torch.func"]
    row = Row("net", "HVP", {"tinygrad2": bad, "autograd": good, "torch.func": "NotImplementedError: x"}, fd).compare()
    assert not row.passed() and row.verdict() == "FD: tinygrad2 WRONG, autograd ok, torch.func fails"
    row = Row("net", "HVP", {"tinygrad2": good, "autograd": good, "torch.func": good}, fd).compare()
    assert row.passed() and row.verdict() == "all agree" and not row.torch_cases()
    loss = Row("net", "loss", {"tinygrad2": np.float64(1.0), "autograd": np.float64(1.5)}).compare()
    assert not loss.passed()


def test_missing_data_is_one_line_naming_the_variable(tmp_path):
    env = dict(os.environ, TINYGRAD2_DATA=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "benchmarks.engine", "--quick"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"benchmarks.engine: no MNIST data in {tmp_path}; set TINYGRAD2_DATA")


def test_benchmarks_are_not_packaged():
    from setuptools import find_packages

    # the include list of [tool.setuptools.packages.find] (no tomllib: Python 3.10 is supported)
    found = re.search(r"^\[tool\.setuptools\.packages\.find\]\s*\ninclude\s*=\s*(\[.*?\])",
                      (ROOT / "pyproject.toml").read_text(), flags=re.M | re.S)
    include = ast.literal_eval(found.group(1))
    packages = find_packages(str(ROOT), include=include)
    assert "experiments" in packages and not any(p.split(".")[0] == "benchmarks" for p in packages)
    assert not list((ROOT / "experiments").glob("bench_*.py"))
    assert not list((ROOT / "experiments").glob("reference_*.py"))


# ---------------------------------------------------------------- benchmarks/gpu_check (one-shot GPU run)


@pytest.fixture
def gpu_check(monkeypatch):
    """benchmarks.gpu_check with no data folder (the paper run skips) and a quiet backend."""
    from benchmarks import gpu_check as gc

    monkeypatch.delenv("TINYGRAD2_DATA", raising=False)
    monkeypatch.delenv("GPU_CHECK_REHEARSE", raising=False)
    return gc


def _quick(gc, out, *extra, step_functions=None):
    """The quickest rehearsal, in this process; returns (report, the JSON as written)."""
    args = gc.parse_args(["--out", str(out), "--rehearse", "--quick", "--threads", "1", *extra])
    report = gc.run_all(args, step_functions=step_functions)
    return report, json.loads((out / gc.JSON_NAME).read_text())


def test_gpu_check_quick_rehearsal_writes_every_step(gpu_check, tmp_path):
    import time

    t0 = time.perf_counter()
    report, written = _quick(gpu_check, tmp_path, "--skip", "tests")
    assert time.perf_counter() - t0 < 45
    assert written["rehearsal"] is True and written["mode"] == "quick" and written["wall_s"] > 0
    assert set(written["steps"]) == set(gpu_check.STEPS)
    steps = written["steps"]
    assert steps["tests"]["status"] == "skipped" and "--skip" in steps["tests"]["skipped"]
    assert steps["paper_run"]["status"] == "skipped" and "TINYGRAD2_DATA" in steps["paper_run"]["skipped"]
    # parity: NumPy against NumPy, every model and quantity measured (and 0)
    parity = steps["parity"]
    assert parity["status"] == "ok" and parity["all_ok"]
    assert len(parity["models"]) == 3
    mlp = next(m for name, m in parity["models"].items() if name.startswith("MLP"))
    assert {"loss_rel_err", "grad_rel_err", "hvp_rel_err", "hessian_rel_err"} <= set(mlp)
    assert all(m["max_rel_err"] == 0 for m in parity["models"].values())
    # timings: every row with tinygrad2's median/min/max; torch beside it exactly when importable
    timings = steps["timings"]
    assert timings["status"] == "ok"
    rows = timings["rows"]
    names = [r["name"] for r in rows]
    assert sum("grad" in n for n in names) == 2 and sum(n.endswith("HVP") for n in names) == 2
    assert sum("dense Hessian" in n for n in names) == 2 and sum("SGD step" in n for n in names) == 1
    for r in rows:
        tg = r["tinygrad2"]
        assert 0 < tg["min"] <= tg["median"] <= tg["max"] and tg["rounds"] >= 1
        if HAS_TORCH:
            assert isinstance(r["torch"], dict) and r["ratio"]["median"] > 0
        else:
            assert r["torch"].startswith("unavailable") and r["ratio"] is None
    targets = {r["name"]: r["target"] for r in rows if r["target"]}
    assert any("< 2 s" in t for t in targets.values()) and any("1.5x torch" in t for t in targets.values())


def test_gpu_check_without_torch_marks_the_torch_columns(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    _, written = _quick(gpu_check, tmp_path, "--skip", "tests", "--skip", "parity")
    assert "torch not importable" in written["config"]["torch"]
    rows = written["steps"]["timings"]["rows"]
    assert rows and all(r["torch"].startswith("unavailable: torch not importable") for r in rows)
    assert all(r["ratio"] is None and r["tinygrad2"]["median"] > 0 for r in rows)


def test_gpu_check_a_failing_step_still_writes_the_json(gpu_check, tmp_path):
    def broken(ctx, budget, entry):
        entry["started"] = True
        raise RuntimeError("injected failure")

    def fine(ctx, budget, entry):
        entry["ran"] = True

    report, written = _quick(gpu_check, tmp_path, step_functions={
        "tests": fine, "parity": broken, "timings": fine})
    steps = written["steps"]
    assert steps["parity"]["status"] == "error" and steps["parity"]["started"]
    assert steps["parity"]["error"] == "RuntimeError: injected failure"
    assert "Traceback" in steps["parity"]["traceback"] and "injected failure" in steps["parity"]["traceback"]
    assert steps["tests"]["ran"] and steps["timings"]["ran"] and steps["timings"]["status"] == "ok"
    assert steps["paper_run"]["status"] == "skipped"  # the step after the failure ran (and skipped: no data)
    assert report["steps"] == written["steps"]


def test_gpu_check_a_step_past_its_hard_limit_is_cut(gpu_check, tmp_path, monkeypatch):
    import time

    if not hasattr(gpu_check.signal, "SIGALRM"):
        pytest.skip("no SIGALRM on this platform")
    monkeypatch.setattr(gpu_check, "GRACE_S", 0.2)

    def stuck(ctx, budget, entry):
        entry["rows"] = ["measured before it hung"]
        time.sleep(30)

    t0 = time.perf_counter()
    _, written = _quick(gpu_check, tmp_path, "--budget", "tests=1", "--skip", "parity", "--skip", "timings",
                        step_functions={"tests": stuck})
    assert time.perf_counter() - t0 < 10
    tests = written["steps"]["tests"]
    assert tests["status"] == "partial" and "hard time limit" in tests["skipped"]
    assert tests["rows"] == ["measured before it hung"]


@pytest.mark.skipif(not (ROOT / "tests" / "_device.py").exists(), reason="needs the emulated device (tests/_device.py)")
def test_gpu_check_quick_rehearsal_on_the_emulated_device(gpu_check, tmp_path):
    """The device-side code path under CuPy's host/device rules (host arrays refused)."""
    _, written = _quick(gpu_check, tmp_path, "--emulate", "--skip", "tests")
    assert "emulated device" in written["device"]
    parity = written["steps"]["parity"]
    assert parity["measured"] == "emulated" and parity["all_ok"], parity
    timings = written["steps"]["timings"]
    assert timings["status"] == "ok" and len(timings["rows"]) == 7
    assert all("error" not in r for r in timings["rows"])


def test_gpu_check_gpu_mode_without_a_gpu_skips_with_one_line(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    args = gpu_check.parse_args(["--out", str(tmp_path), "--skip", "tests", "--threads", "0"])
    gpu_check.run_all(args)
    written = json.loads((tmp_path / gpu_check.JSON_NAME).read_text())
    assert written["rehearsal"] is False and written["device"].startswith("no usable GPU: CuPy not importable")
    for step in ("parity", "timings"):
        assert written["steps"][step]["status"] == "skipped"
        assert written["steps"][step]["skipped"].startswith("CuPy not importable")


def test_gpu_check_parses_pytest_counts():
    from benchmarks.gpu_check import parse_progress, parse_pytest

    text = "..s.F\nFAILED tests/x.py::t[cupy]\n1 failed, 3 passed, 1 skipped, 2006 deselected, 2 warnings in 9.1s\n"
    assert parse_pytest(text) == {"failed": 1, "passed": 3, "skipped": 1, "deselected": 2006, "warnings": 2}
    assert parse_pytest("== 2 passed, 1 error in 3.0s ==") == {"passed": 2, "errors": 1}
    assert parse_pytest("..s\n") is None  # killed before its summary
    assert parse_progress("..s.F                                  [ 40%]\n.E  [ 60%]\n") == {
        "passed": 4, "skipped": 1, "failed": 1, "errors": 1}


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_gpu_check_sh_rehearsal(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TINYGRAD2_DATA", "TINYGRAD2_BACKEND")}
    env.update(OMP_NUM_THREADS="1", GPU_CHECK_REHEARSE="1")
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--quick", "--skip", "tests"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    log = (out / "gpu_check.log").read_text()
    assert "nvidia-smi" in log and re.search(r"^python 3\.\d+", log, re.M) and "numpy " in log
    assert "(quick, REHEARSAL)" in log and "| case " in log and "gpu_check: exit 0" in log
    written = json.loads((out / "gpu_check.json").read_text())
    assert written["rehearsal"] is True and set(written["steps"]) == {"tests", "parity", "timings", "paper_run"}


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                    reason="needs bash and coreutils' timeout")
def test_gpu_check_sh_time_limit_keeps_the_json(tmp_path):
    """The wrapper's timeout (SIGTERM) mid-run: the JSON says which step it stopped and that the
    rest were not reached. The tests step's pytest loads a plugin that sleeps 30 s, so the step
    outlasts the limit on any machine."""
    env = {k: v for k, v in os.environ.items() if k not in ("TINYGRAD2_DATA", "TINYGRAD2_BACKEND")}
    (tmp_path / "_sleep_30s.py").write_text("import time\ntime.sleep(30)\n")
    # steps planned for 100 s, the wrapper's limit 8 s: its timeout has to end the run
    env.update(OMP_NUM_THREADS="1", GPU_CHECK_LIMIT_S="8", GPU_CHECK_TOTAL_S="100",
               PYTHONPATH=str(tmp_path), PYTEST_ADDOPTS="-p _sleep_30s")
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--rehearse", "--quick"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 124, run.stdout + run.stderr
    steps = json.loads((out / "gpu_check.json").read_text())["steps"]
    order = ["tests", "parity", "timings", "paper_run"]
    assert list(steps) == order or set(steps) == set(order)
    stopped = [s for s in order if steps[s]["status"] == "error"]
    assert len(stopped) == 1 and "SIGTERM" in steps[stopped[0]]["error"]
    assert all(steps[s]["skipped"] == "not reached" for s in order[order.index(stopped[0]) + 1:])
    assert "stopped by the 8 s limit" in (out / "gpu_check.log").read_text()


def test_run_rounds_warm_each_runs_every_cell_untimed_before_its_timed_call():
    from benchmarks import harness

    calls = []
    cells = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    timings = harness.run_rounds(cells, np.random.default_rng(0), rounds=3, warm_each=True)
    assert timings.reps == {"a": 3, "b": 3} and len(timings.medians) == 2
    timed = calls[2:]  # after the warm-up's one call per cell
    assert len(timed) == 12 and all(timed[i] == timed[i + 1] for i in range(0, 12, 2))
    calls.clear()
    harness.run_rounds(cells, np.random.default_rng(0), rounds=3)
    assert len(calls) == 2 + 6
