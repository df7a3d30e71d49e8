"""Sweeps (python -m experiments sweep): the grid of methods x settings x seeds
as ordinary results files, on local worker processes or a real Dask cluster
on loopback; a second identical command changes no file; a killed sweep, a
killed local worker and a killed Dask worker all end in the files of an
uninterrupted sweep (bit for bit, timing fields aside); the statistics against
hand-computed values and SciPy; the file names, --set and the progress lines."""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import catalog, stats, sweep
from experiments.__main__ import build_parser, main
from experiments.results import RunWriter, load_final, load_run

pytestmark = pytest.mark.cpu_only  # host-bound: process pools, subprocesses, SciPy

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["sweep", "digits", "--optimizers", "SGD", "Adam", "--seeds", "0-2", "--epochs", "2"]
NAMES = sorted(f"digits__{m}__seed={s}.h5" for m in ("SGD", "Adam") for s in range(3))
TIMING = ("step_time", "wall_time", "epoch_time", "seconds_per_epoch")
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def sweep_cli(out, *extra, env=None):
    return subprocess.Popen([sys.executable, "-m", "experiments", *ARGS, "--out", str(out), *extra], cwd=ROOT,
                            env=dict(ENV, **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (out, err)
    return out


def h5_names(folder):
    return sorted(p.name for p in Path(folder).glob("*.h5"))


def wait_for_files(folder, n, proc, timeout=60):
    """Until ``n`` results files exist in ``folder`` (a run has started for each), or the sweep ended."""
    deadline = time.time() + timeout
    while len(h5_names(folder)) < n and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)


def assert_same_files(folder, reference):
    """The same files, with equal configs, series and final parameters (timing fields aside); no temp file."""
    assert h5_names(folder) == h5_names(reference) == NAMES
    for name in NAMES:
        a, b = load_run(Path(folder) / name), load_run(Path(reference) / name)
        assert a.status == b.status == "finished" and a.config == b.config, name
        assert load_final(Path(folder) / name)[0].tobytes() == load_final(Path(reference) / name)[0].tobytes()
        for series in ("steps", "epochs"):
            x, y = getattr(a, series), getattr(b, series)
            assert set(x) == set(y)
            for key in set(x) - set(TIMING):
                assert x[key].tobytes() == y[key].tobytes(), (name, series, key)
        drop = lambda m: {k: v for k, v in m.items() if k not in TIMING}
        assert drop(a.final_metrics) == drop(b.final_metrics)
    assert [p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp")] == []


def children(pid) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc; [] elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_gone(pids, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() for p in pids), "a worker outlived its sweep"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted local sweep: 2 methods x 3 seeds, 2 workers; its printed output and folder."""
    out = tmp_path_factory.mktemp("reference")
    return finish(sweep_cli(out, "--workers", "2", env={"TINYGRAD2_PROGRESS_SECONDS": "0.2"})), out


# ---------------------------------------------------------------- local


def test_a_local_sweep_writes_one_file_per_point_and_prints_the_statistics(reference):
    text, out = reference
    assert h5_names(out) == NAMES
    for name in NAMES:
        run = load_run(out / name)
        method, seed = name[len("digits__"):-len(".h5")].split("__seed=")
        assert (run.config["method"], run.config["seed"], run.config["epochs"]) == (method, int(seed), 2)
        assert run.config["blas_threads"] == 1 and run.status == "finished"
    assert "this sweep: 2 methods (SGD, Adam) x 3 seeds (0-2) = 6 runs, 2 epochs" in text
    assert "6 to run, 0 already finished, on 2 local worker processes (1 BLAS thread each)" in text
    assert sum(line.strip().endswith(".h5") and " finished " in line for line in text.splitlines()) == 6
    assert "| SGD (x3)" in text and "| Adam (x3)" in text
    lines = text.split("statistics of test_acc over seeds")[1].splitlines()
    acc = {m: [load_run(out / f"digits__{m}__seed={s}.h5").summary()["test_acc"] for s in range(3)]
           for m in ("SGD", "Adam")}
    for method, values in acc.items():
        s = stats.describe(values)
        row = next(line for line in lines if line.split()[:2] == [method, "n=3"])
        assert f"{s.mean:.4f} ± {s.std:.4f}" in row and f"[{s.low:.4f}, {s.high:.4f}]" in row and "seeds 0-2" in row
    pair = next(line for line in lines if line.strip().startswith("Adam − SGD"))
    d = np.subtract(acc["Adam"], acc["SGD"])
    assert f"{d.mean():+.4f}" in pair and f"p={scipy_stats.wilcoxon(d).pvalue:.3g}" in pair
    assert "cannot fall below 2/2^n: 0.25 at n=3" in text
    progress = [line for line in text.splitlines() if line.startswith("sweep: ")]
    assert progress and all(re.fullmatch(r"sweep: [0-5]/6 done, [0-2] running, \d+\.\d s elapsed, "
                                         r"ETA (-|\d+\.\d s)", line) for line in progress), progress


def test_a_second_identical_command_changes_no_file(reference, capsys):
    _, out = reference
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert main([*ARGS, "--out", str(out), "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "0 to run, 6 already finished" in text and "statistics of test_acc" in text
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_a_killed_sweep_and_a_killed_worker_end_in_the_files_of_an_uninterrupted_sweep(reference, tmp_path):
    """SIGKILL the sweep mid-way (its workers go with it), rerun it and SIGKILL one of the rerun's worker
    processes: the pool is replaced, the lost run resubmitted and resumed, the files those of the reference."""
    proc = sweep_cli(tmp_path, "--workers", "2")
    try:
        wait_for_files(tmp_path, 3, proc)  # the first two runs have ended or are ending, the third has started
        workers = children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    wait_gone(workers)  # the workers' watchdog ends them with the sweep
    started = len(h5_names(tmp_path))
    unfinished = [n for n in h5_names(tmp_path) if load_run(tmp_path / n).status != "finished"]
    assert started < 6 or unfinished, "the kill came after the sweep had finished"

    rerun = sweep_cli(tmp_path, "--workers", "2")
    try:
        if started < 5:  # two new runs to start: kill a worker once the first of them has
            wait_for_files(tmp_path, started + 1, rerun)
            workers = [p for p in children(rerun.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
            if workers and rerun.poll() is None:
                os.kill(workers[0], signal.SIGKILL)
        text = finish(rerun)
    finally:
        rerun.kill()
    assert f"{6 - started + len(unfinished)} to run, {started - len(unfinished)} already finished" in text
    if started < 5 and workers:
        assert "its worker was lost (BrokenProcessPool" in text and "submitted again (2 of 3)" in text
    assert_same_files(tmp_path, reference[1])


def test_ctrl_c_ends_the_workers_and_prints_the_command_that_resumes(tmp_path):
    proc = sweep_cli(tmp_path, "--workers", "2")
    try:
        wait_for_files(tmp_path, 3, proc)
        workers = children(proc.pid)
        proc.send_signal(signal.SIGINT)  # the sweep's process alone (a terminal would signal the workers too)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.splitlines()[-1] == (f"interrupted; resume with the same command: python -m experiments "
                                    f"{' '.join(ARGS)} --out {tmp_path} --workers 2")
    wait_gone(workers, timeout=10)


# ---------------------------------------------------------------- a Dask cluster on loopback


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A dask scheduler and two single-thread workers on 127.0.0.1 (free ports); every process ended after."""
    pytest.importorskip("distributed")
    from distributed import Client

    root = tmp_path_factory.mktemp("cluster")
    file = root / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = []
    log = lambda name: open(root / f"{name}.log", "w")  # noqa: E731
    try:
        procs.append(subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                       "--scheduler-file", str(file)], cwd=root, env=ENV,
                                      stdout=subprocess.DEVNULL, stderr=log("scheduler")))
        deadline = time.time() + 60
        while not file.exists() and time.time() < deadline:
            time.sleep(0.05)
        address = json.loads(file.read_text())["address"]
        for i in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
                 "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(root / f"w{i}")], cwd=ROOT,
                env=ENV, stdout=subprocess.DEVNULL, stderr=log(f"worker{i}")))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, procs[1:]
    finally:  # SIGKILL: a dask worker told to terminate can linger for seconds in "closing"
        for p in reversed(procs):
            p.kill()
        for p in reversed(procs):
            p.wait(timeout=30)


def test_a_dask_sweep_writes_the_local_files_even_when_a_worker_is_killed(cluster, reference, tmp_path):
    address, workers = cluster
    proc = sweep_cli(tmp_path, "--scheduler", address)
    try:
        wait_for_files(tmp_path, 3, proc)
        assert proc.poll() is None, "the sweep ended before a worker could be killed"
        workers[1].send_signal(signal.SIGKILL)  # Dask moves its task to the other worker, which resumes the file
        workers[1].wait(timeout=30)
        text = finish(proc)
    finally:
        proc.kill()
    assert f"on the Dask cluster at {address} (2 worker threads now)" in text
    assert_same_files(tmp_path, reference[1])


# ---------------------------------------------------------------- statistics


def test_describe_against_hand_computed_values_and_scipy():
    s = stats.describe([1.0, 2.0, 3.0, 4.0])
    t = 3.182446305284263  # t(0.975, 3), from a table
    std = math.sqrt(5 / 3)
    assert (s.n, s.mean) == (4, 2.5) and s.std == pytest.approx(std, rel=1e-12)
    assert (s.low, s.high) == pytest.approx((2.5 - t * std / 2, 2.5 + t * std / 2), rel=1e-12)
    x = np.random.default_rng(0).normal(size=7)
    ci = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    s = stats.describe(x)
    assert (s.low, s.high) == pytest.approx((ci.low, ci.high), rel=1e-12) and s.std == pytest.approx(x.std(ddof=1))
    one = stats.describe([0.5])
    assert one.mean == 0.5 and all(math.isnan(v) for v in (one.std, one.low, one.high))
    assert stats.describe([]).n == 0


def _exact_wilcoxon(d):
    """Two-sided exact signed-rank p by enumerating every sign pattern (no zeros, no ties)."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    observed = ranks[np.asarray(d) > 0].sum()
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=len(d))]
    mean = len(d) * (len(d) + 1) / 4
    return min(1.0, sum(abs(w - mean) >= abs(observed - mean) for w in sums) / len(sums))


def test_paired_comparison_against_enumeration_and_scipy():
    a = {0: 0.80, 1: 0.82, 2: 0.79, 3: 0.85, 4: 0.81, 5: 0.83, 9: 0.5}
    d = [0.01, -0.02, 0.03, 0.04, -0.05, 0.06]
    b = {s: a[s] + x for s, x in zip(range(6), d)}
    c = stats.paired(a, b)
    assert c.seeds == tuple(range(6)) and c.difference.n == 6  # seed 9 has no partner
    assert c.difference.mean == pytest.approx(np.mean(d), abs=1e-12)
    assert c.p == pytest.approx(_exact_wilcoxon(d)) == pytest.approx(scipy_stats.wilcoxon(np.subtract(
        [b[s] for s in range(6)], [a[s] for s in range(6)])).pvalue)
    assert _exact_wilcoxon(d) == pytest.approx(36 / 64)  # W+ = 14, W- = 7: 18 + 18 of the 64 patterns as extreme
    all_up = stats.paired({s: 0.0 for s in range(5)}, {s: 1.0 + s for s in range(5)})
    assert all_up.p == pytest.approx(2 / 2 ** 5) == pytest.approx(stats.smallest_p(5))
    assert all_up.difference.mean == 3.0


def test_paired_comparison_with_too_few_pairs_or_no_difference():
    one = stats.paired({0: 0.5, 1: 0.6}, {1: 0.7, 2: 0.1})
    assert one.difference.n == 1 and math.isnan(one.p) and math.isnan(one.difference.low)
    assert one.note == "1 pair: no interval, no test"
    none = stats.paired({0: 0.5}, {1: 0.5})
    assert none.difference.n == 0 and math.isnan(none.p)
    same = stats.paired({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.5, 1: 0.6, 2: 0.7})
    assert same.p == 1.0 and same.note == "all differences are 0" and same.difference.mean == 0.0
    some = stats.paired({0: 0.5, 1: 0.6, 2: 0.7, 3: 0.1}, {0: 0.5, 1: 0.8, 2: 0.9, 3: 0.4})
    assert some.note == "1 zero difference left out of the test"
    assert some.p == pytest.approx(scipy_stats.wilcoxon([0.0, 0.2, 0.2, 0.3]).pvalue)


def _fake(folder, name, method, seed, acc, status="finished", lr=0.1):
    config = {"experiment": "digits", "method": method, "optimizer": {"name": "SGD", "kwargs": {"lr": lr}},
              "seed": seed, "epochs": 2, "data": {"name": "digits"}}
    with RunWriter.create(folder / name, config) as run:
        run.log_epoch(2, {"test_acc": acc, "train_loss": 1.0})
        if status == "finished":
            run.finish(np.zeros(2), {"test_acc": acc})
        else:
            run.flush(status=status)
    return folder / name


def test_report_prints_the_statistics_of_files_with_several_seeds(tmp_path, capsys):
    files = [_fake(tmp_path, f"a{s}.h5", "SGD", s, 0.8 + s / 100) for s in range(3)]
    files += [_fake(tmp_path, f"b{s}.h5", "SGD#2", s, 0.9 + s / 50, lr=0.05) for s in range(3)]
    files += [_fake(tmp_path, "c.h5", "SGD", 3, 0.1, status="interrupted")]
    assert main(["report", *map(str, files)]) == 0
    text = capsys.readouterr().out
    assert "| SGD (x4) (3/4 finished)" in text and "| SGD (x3)" in text  # the table as before
    assert "SGD lr=0.1   n=3  0.8100 ± 0.0100  [0.7852, 0.8348]  seeds 0-2" in text
    assert "SGD lr=0.05  n=3  0.9200 ± 0.0200" in text
    assert "SGD lr=0.05 − SGD lr=0.1  n=3  +0.1100  [+0.0852, +0.1348]  p=0.25" in text
    assert "not counted (unfinished): c.h5 (interrupted)" in text
    assert main(["report", str(files[0]), str(files[3])]) == 0  # one seed per row: the table alone, as before
    assert "statistics" not in capsys.readouterr().out


# ---------------------------------------------------------------- the grid, names, --set, progress


def test_file_names_and_the_set_grid(tmp_path):
    digits = catalog.get("digits")
    points = sweep.plan(digits, tmp_path, methods=["SGD", "SGD-momentum"], seeds=[3, 1],
                        settings=[("lr", [0.1, 1]), ("batch_size", [32])])
    assert [p.path.name for p in points[:4]] == [
        "digits__SGD__lr=0.1__batch_size=32__seed=3.h5", "digits__SGD__lr=1.0__batch_size=32__seed=3.h5",
        "digits__SGD-momentum__lr=0.1__batch_size=32__seed=3.h5",
        "digits__SGD-momentum__lr=1.0__batch_size=32__seed=3.h5"]
    assert len(points) == 8 and points[-1].path.name.endswith("__seed=1.h5")
    spec = points[1].spec
    assert spec.optimizer["kwargs"] == {"lr": 1.0} and isinstance(spec.optimizer["kwargs"]["lr"], float)
    assert spec.batch_size == 32 and spec.seed == 3 and points[0].spec.optimizer["kwargs"] == {"lr": 0.1}
    assert points[1].label == "SGD lr=1.0 batch_size=32 seed=3"
    short = sweep.plan(digits, tmp_path, methods=["Newton"], seeds=[0], settings=[("limit_batches", [5])])
    assert short[0].spec.data["limit_batches"] == 5
    assert short[0].path.name == "digits__Newton__limit_batches=5__seed=0.h5"
    plain = sweep.plan(digits, tmp_path, methods=["SGD"], seeds=[0])
    assert [p.path.name for p in plain] == ["digits__SGD__seed=0.h5"]
    assert plain[0].spec.config() == digits.specs(methods=["SGD"])[0].config()  # the run's own settings


def test_resnet_repetitions_become_seeds_of_a_sweep(tmp_path):
    resnet = catalog.get("resnet18-mnist-hybrid")
    points = sweep.plan(resnet, tmp_path, seeds=range(10), full=True)
    assert len(points) == 50 and {p.spec.method for p in points} == {"SGD", "SGD-momentum", "Adam", "AdaHessian",
                                                                     "Hybrid"}
    assert {p.spec.model["kwargs"]["width"] for p in points} == {1.0} and {p.spec.epochs for p in points} == {15}
    assert points[-1].path.name == "resnet18-mnist-hybrid__Hybrid__seed=9.h5"
    assert sweep.default_seeds(resnet) == [0, 1, 2] and sweep.default_seeds(resnet, full=True) == list(range(10))
    assert sweep.default_seeds(catalog.get("digits")) == [0, 1, 2, 3, 4]
    args = build_parser().parse_args(["sweep", "resnet18-mnist-hybrid", "--seeds", "0-9", "--full", "--workers", "2"])
    assert (args.seeds, args.full, args.workers) == (list(range(10)), True, 2)


def test_a_run_file_counts_as_a_finished_point(tmp_path, capsys):
    """A sweep point is an ordinary run: run's file under the point's name is recognised as finished."""
    run = ["run", "digits", "--quick", "--epochs", "2", "--optimizers", "SGD", "--out", str(tmp_path)]
    assert main(run) == 0
    (tmp_path / "digits__SGD.h5").rename(tmp_path / "digits__SGD__seed=0.h5")
    capsys.readouterr()
    assert main(["sweep", "digits", "--quick", "--epochs", "2", "--optimizers", "sgd", "--seeds", "0", "--out",
                 str(tmp_path)]) == 0
    assert "0 to run, 1 already finished" in capsys.readouterr().out


def test_seed_and_setting_values():
    assert sweep.parse_seeds("0-3,7,2") == [0, 1, 2, 3, 7] and sweep.parse_seeds("5") == [5]
    assert sweep.parse_setting("lr=0.1,1e-3,2") == ("lr", [0.1, 0.001, 2])
    assert sweep.parse_setting("nesterov=true,false") == ("nesterov", [True, False])
    assert sweep.parse_setting("curvature=ggn, hessian") == ("curvature", ["ggn", "hessian"])


class _Threads:
    """A 'where' whose executor is a thread pool (the loop's logic without processes)."""

    lost = ()

    def __init__(self):
        self.made = 0

    def executor(self):
        self.made += 1
        return cf.ThreadPoolExecutor(2)

    def slots(self):
        return 2

    def stop(self, executor):
        pass

    def close(self):
        pass


def test_a_lost_worker_is_resubmitted_a_bounded_number_of_times(tmp_path, monkeypatch):
    calls = {}

    def flaky(spec, path, data_dir=None):
        calls[path] = calls.get(path, 0) + 1
        if "seed=1" in path and calls[path] == 1 or "seed=2" in path:
            raise BrokenProcessPool("a worker died")
        return {"status": "finished", "seconds": 0.0, "log": [], "summary": {}}

    monkeypatch.setattr(sweep, "run_point", flaky)
    points = sweep.plan(catalog.get("digits"), tmp_path, methods=["SGD"], seeds=[0, 1, 2])
    said = []
    where = _Threads()
    done, failed = sweep.execute(points, where, say=said.append, progress=sweep.Progress(3, 0, said.append, bar=False))
    assert [p.label for p in done] == ["SGD seed=0", "SGD seed=1"] and [p.label for p in failed] == ["SGD seed=2"]
    assert calls == {str(p.path): n for p, n in zip(points, (1, 2, sweep.MAX_ATTEMPTS))}
    assert "lost its worker 3 times" in failed[0].result["error"]
    assert sum("its worker was lost (BrokenProcessPool: a worker died); submitted again" in s for s in said) == 3
    assert 2 <= where.made <= 4  # the first pool, then one per break of the pool in use (a stale break: none)


def test_progress_lines():
    now = [100.0]
    said = []
    progress = sweep.Progress(4, 2, said.append, every=5, bar=False, clock=lambda: now[0])
    point = sweep.Point(None, Path("digits__SGD__seed=0.h5"), "SGD seed=0", result={
        "status": "finished", "seconds": 1.5, "log": ["x: resuming after epoch 1 (step 20)"],
        "summary": {"test_acc": 0.9}})
    progress.tick(running=2)
    assert said == []  # not yet every seconds
    now[0] += 6
    progress.tick(running=2)
    assert said == ["sweep: 2/6 done, 2 running, 6.0 s elapsed, ETA -"]
    now[0] += 4
    progress.finished(point, running=2)
    assert said[-1].split() == ["SGD", "seed=0", "finished", "1.5", "s", "test_acc", "0.9000",
                                "digits__SGD__seed=0.h5", "(resumed)"]
    now[0] += 1
    progress.tick(running=2)
    assert said[-1] == "sweep: 3/6 done, 2 running, 11.0 s elapsed, ETA 33.0 s"


def test_the_bar_on_a_terminal(capsys):
    """On a terminal: a tqdm bar over the whole sweep (finished runs included), the run lines above it."""
    said = []
    progress = sweep.Progress(2, 1, said.append, bar=True)
    point = sweep.Point(None, Path("digits__SGD__seed=0.h5"), "SGD seed=0", result={"error": "ValueError: x"})
    progress.tick(running=1)
    progress.finished(point, running=1)
    progress.close()
    err = capsys.readouterr()
    assert said == [] and "SGD seed=0" in err.out + err.err and "failed    ValueError: x" in err.out + err.err
    assert "2/3" in err.err and "run" in err.err
