"""Sweeps: the grid methods x settings x seeds of an experiment, each point an
ordinary run, spread over a local process pool or a Dask cluster.

``python -m experiments sweep NAME`` (the CLI is in :mod:`experiments.__main__`)
builds one :class:`Point` per method, ``--set`` combination and seed
(:func:`plan`) and runs them through one loop over a
:class:`concurrent.futures.Executor` (:func:`execute`):

* ``--workers N``: a :class:`~concurrent.futures.ProcessPoolExecutor` of N
  ``spawn``ed processes, each with its BLAS pinned to one thread
  (threadpoolctl) and a watchdog that ends it when the sweep's process is
  gone (a killed sweep leaves no worker behind to write into its folder);
* ``--scheduler tcp://HOST:PORT``: a ``dask.distributed.Client``'s executor
  (``client.get_executor(pure=False)``); the optional extra ``cluster``
  installs Dask.

Every point's task is :func:`run_point`, ``runner.train(spec, path,
resume=True)``: an interrupted file resumes from its checkpoint. The parent
skips finished points (their files are not even rewritten), keeps at most as
many points in flight as there are worker slots, and resubmits a point whose
worker died (``BrokenProcessPool``: the pool is replaced; Dask's
``KilledWorker``, a closed connection; a ``WriteError``) up to
:data:`MAX_ATTEMPTS` times (Dask first moves a lost worker's tasks itself).

One file per point, named by its settings (:func:`point_filename`)::

    EXPERIMENT__METHOD[__KEY=VALUE ...]__seed=SEED.h5
    digits__SGD__seed=3.h5      digits__SGD__lr=0.05__batch_size=32__seed=3.h5

Two workers never write one file: a point is in flight at most once, and
every write of a results file goes to its own temp file (``mkstemp`` beside
it) that is fsynced and ``os.replace``d onto the name (experiments.results),
so the file is always one whole snapshot.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import copy
import functools
import inspect
import itertools
import json
import math
import multiprocessing
import os
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

MAX_ATTEMPTS = 3            # submissions of one point before it counts as failed (its worker keeps dying)
DEFAULT_SEEDS = range(5)    # seeds of an experiment without repetitions of its own
WATCH_SECONDS = 0.25        # how often a local worker checks that the sweep's process is still there
DASK_TIMEOUT = "20s"        # to reach the scheduler
RUN_KEYS = ("batch_size", "limit_batches")  # --set keys of the run (limit_batches: batches per epoch);
                                            # every other key is an optimizer hyper-parameter


EPILOG = """\
Each point (method x --set values x seed) is an ordinary run, one file
EXPERIMENT__METHOD[__KEY=VALUE ...]__seed=SEED.h5 in --out. The same command again
skips finished runs, resumes interrupted ones and resubmits a run whose worker died.
--set takes batch_size, limit_batches or a hyper-parameter of every method's optimizer.
Progress: a line every $TINYGRAD2_PROGRESS_SECONDS (default 10) s without a terminal.
At the end: the table and the statistics over seeds (95% t-intervals, paired Wilcoxon
tests). On a cluster, every machine needs this package and the data at the same path."""


class SweepError(Exception):
    """A sweep that cannot start as asked (the message is the one line printed)."""


# ---------------------------------------------------------------- the command


def command(args, experiment, methods, out, *, table, out_folder, statistics) -> int:
    """``python -m experiments sweep``: plan the grid, check every existing file, run what is left, print the
    table (``table``) and the statistics (``statistics``) of the sweep's files. 1 when a run failed."""
    from .papers.common import scale_label, scale_name

    settings = args.settings or []
    points = plan(experiment, out, methods=methods, seeds=args.seeds, settings=settings, epochs=args.epochs,
                  quick=args.quick, full=args.full, verify=not args.no_verify)
    where = Cluster(args.scheduler) if args.scheduler else Local(args.workers or cores())
    say = functools.partial(print, flush=True)  # a log file sees each line when it is printed
    start, failed = time.perf_counter(), []
    try:
        out_folder(out, "sweep")
        todo, finished = check_points(points)  # refuse before anything runs
        say(f"{experiment.name}: {experiment.description}")
        say(f"this sweep: {grid_summary(points, settings, scale_label(scale_name(args.quick, args.full)))}")
        say(f"  {len(todo)} to run, {len(finished)} already finished"
            + (f", on {where.describe()}" if todo else "") + f"; results in {out}")
        if todo:
            _, failed = execute(todo, where, data_dir=args.data_dir, say=say,
                                progress=Progress(len(todo), len(finished), say))
            removed = remove_stray_temps(points)
            if removed:
                say(f"removed {len(removed)} temp file(s) left by workers that died mid-write")
    finally:
        where.close()
    paths = [p.path for p in points if p.path.exists()]
    if paths:
        say(f"\n{table(paths, experiment)}")
        statistics(paths, args.metric, always=True)
    for point in failed:
        say(f"failed: {point.label}: {point.result['error']}")
    say(f"total {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


def cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def grid_summary(points, settings, scale) -> str:
    """"2 methods (SGD, Adam) x 2 settings (lr=0.1,0.05) x 3 seeds (0-2) = 12 runs, 2 epochs, scale: ..."."""
    methods = list(dict.fromkeys(p.spec.method for p in points))
    seeds = sorted({p.spec.seed for p in points})
    combos = math.prod(len(v) for _, v in settings)
    epochs = sorted({p.spec.epochs for p in points})
    parts = [f"{len(methods)} method{'s' if len(methods) != 1 else ''} ({', '.join(methods)})"]
    if settings:
        parts.append(f"{combos} setting{'s' if combos != 1 else ''} "
                     f"({'; '.join(f'{k}={_values(v)}' for k, v in settings)})")
    parts.append(f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({_seed_text(seeds)})")
    length = (f"{epochs[0]} epoch{'s' if epochs[0] != 1 else ''}" if len(epochs) == 1 else
              f"{epochs[0]} to {epochs[-1]} epochs by method")
    return f"{' x '.join(parts)} = {len(points)} runs, {length}, scale: {scale}"


def _values(values) -> str:
    return ",".join(_token(v) for v in values)


def _seed_text(seeds) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


# ---------------------------------------------------------------- the command line's values


def parse_seeds(text) -> list[int]:
    """ "0-9" (inclusive), "0,3,5" or both ("0-2,7") -> sorted distinct seeds; an argparse type."""
    import argparse

    seeds = set()
    for part in str(text).split(","):
        low, dash, high = part.strip().partition("-")
        try:
            a, b = int(low), int(high) if dash else int(low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seeds such as 0-9 or 0,3,5 (whole numbers >= 0), "
                                             f"got {text!r}") from None
        if b < a:
            raise argparse.ArgumentTypeError(f"the range {part.strip()!r} runs backwards (write {b}-{a})")
        seeds.update(range(a, b + 1))
    return sorted(seeds)


def parse_setting(text) -> tuple[str, list]:
    """ "lr=0.1,0.05" -> ("lr", [0.1, 0.05]); values are numbers, true/false, none, or words; an argparse type."""
    import argparse

    key, eq, values = str(text).partition("=")
    key = key.strip()
    items = [v.strip() for v in values.split(",")]
    if not eq or not key or not all(items):
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,... (e.g. lr=0.1,0.05), got {text!r}")
    return key, list(dict.fromkeys(_value(v) for v in items))


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def settable_keys(spec) -> list[str]:
    """What ``--set`` may change in ``spec``: the run's batch size, its batches per epoch (``limit_batches``,
    e.g. a few dense Newton steps at full scale) and its optimizer's hyper-parameters (the keyword arguments
    of its class; not ``seed``: use ``--seeds``)."""
    import optimizers

    cls = getattr(optimizers, spec.optimizer["name"])
    names = [n for n, p in inspect.signature(cls).parameters.items()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "seed"]
    return [*RUN_KEYS, *names]


# ---------------------------------------------------------------- the grid


@dataclass
class Point:
    """One run of the grid: its spec, file, label ("SGD lr=0.05 seed=3") and submissions so far."""

    spec: object
    path: Path
    label: str
    attempts: int = 0
    result: dict = field(default_factory=dict)


def default_seeds(experiment, quick=False, full=False) -> list[int]:
    """The seeds of an experiment's own repetitions at that scale (resnet18-mnist-hybrid: 0..2, --full 0..9,
    --quick 0..1), else 0..4."""
    specs = experiment.specs(seed=0, quick=quick, full=full)
    if any("#" in s.method for s in specs):
        return sorted({s.seed for s in specs})
    return list(DEFAULT_SEEDS)


def plan(experiment, out, *, methods=None, seeds=None, settings=(), epochs=None, quick=False, full=False,
         verify=True) -> list[Point]:
    """The points of the sweep, seed by seed (every method and setting of seed 0 first). ``settings``:
    ``[(key, [values])]`` from ``--set``; a key that is not a setting of every method, or a value its
    optimizer refuses, is a :class:`SweepError`."""
    from .papers.common import base_method
    from .runner import build_optimizer

    firsts = {}  # repetitions "SGD#1", "SGD#2" of a run: one method, whose seed the sweep sets
    for spec in experiment.specs(epochs=epochs, seed=0, quick=quick, methods=methods, full=full):
        firsts.setdefault(base_method(spec.method), spec)
    keys = [k for k, _ in settings]
    for key in dict.fromkeys(keys):
        if keys.count(key) > 1:
            raise SweepError(f"sweep: --set {key} is given twice; give its values once: --set {key}=V1,V2")
    for method, spec in firsts.items():
        allowed = settable_keys(spec)
        bad = [k for k in keys if k not in allowed]
        if bad:
            hint = " (use --seeds)" if bad[0] == "seed" else " (use --epochs)" if bad[0] == "epochs" else ""
            raise SweepError(f"sweep {experiment.name}: --set {bad[0]}: not a setting of {method}{hint}; "
                             f"allowed: {', '.join(allowed)}")
    seeds = list(seeds) if seeds else default_seeds(experiment, quick, full)
    points = []
    for seed in seeds:
        for method, first in firsts.items():
            for combo in itertools.product(*(values for _, values in settings)):
                spec = copy.deepcopy(first)
                spec.method, spec.seed = method, seed
                if not verify:
                    spec.data = dict(spec.data, verify=False)
                chosen = {}
                for key, value in zip(keys, combo):
                    chosen[key] = _set(spec, key, value, experiment.name)
                if seed == seeds[0]:
                    try:
                        build_optimizer(spec.optimizer)
                    except (TypeError, ValueError) as err:
                        raise SweepError(f"sweep {experiment.name}: --set {_setting_text(chosen)}: {method} "
                                         f"refuses it ({' '.join(str(err).split())})") from err
                name = point_filename(spec, chosen)
                label = " ".join([method, *(f"{k}={_token(v)}" for k, v in chosen.items()), f"seed={seed}"])
                points.append(Point(spec, Path(out) / name, label))
    return points


def _set(spec, key, value, name):
    """Put ``value`` at ``key`` of ``spec`` (an int where the method's value is a float becomes a float)."""
    if key in RUN_KEYS:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SweepError(f"sweep {name}: --set {key}={_token(value)}: must be a whole number >= 1")
        if key == "batch_size":
            spec.batch_size = value
        else:
            spec.data = dict(spec.data, limit_batches=value)
        return value
    kwargs = spec.optimizer["kwargs"]
    current = kwargs.get(key, _default(spec.optimizer["name"], key))
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(current, float):
        value = float(value)
    kwargs[key] = value
    return value


def _default(optimizer, key):
    import optimizers

    parameter = inspect.signature(getattr(optimizers, optimizer)).parameters.get(key)
    return None if parameter is None or parameter.default is parameter.empty else parameter.default


def _token(value) -> str:
    """A value as it appears in file names and labels: 0.1, 1e-05, 32, true, none, a word."""
    if isinstance(value, str):
        text = value
    else:
        text = "none" if value is None else json.dumps(value)
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def _setting_text(chosen) -> str:
    return ",".join(f"{k}={_token(v)}" for k, v in chosen.items())


def point_filename(spec, chosen: dict) -> str:
    """``EXPERIMENT__METHOD[__KEY=VALUE ...]__seed=SEED.h5`` (the method as ``RunSpec.filename`` writes it;
    the ``--set`` keys in the order given; every character outside ``A-Za-z0-9._-`` becomes ``-``)."""
    method = "".join(c if c.isalnum() or c in "-_." else "-" for c in spec.method)
    parts = [spec.experiment, method, *(f"{k}={_token(v)}" for k, v in chosen.items()), f"seed={spec.seed}"]
    return "__".join(parts) + ".h5"


def check_points(points) -> tuple[list, list]:
    """(to run, finished): every existing file is read and checked (digests, recorded settings) before anything
    runs; a finished (or diverged) one is left alone, anything else is resumed."""
    from .runner import RunError, check_request

    todo, finished = [], []
    for point in points:
        try:
            recorded = check_request(point.spec, point.path, resume=True)
        except RunError as err:  # another run under the point's name: run's remedies (--overwrite) are not ours
            text = " ".join(str(err).split()).rsplit(" (pass ", 1)[0]
            raise SweepError(f"sweep: {text.removeprefix('resume: ')} (a sweep never overwrites a file: use "
                             f"another --out, or move the file away)") from err
        (finished if recorded is not None and recorded.status in ("finished", "diverged") else todo).append(point)
    return todo, finished


# ---------------------------------------------------------------- the task (in a worker)

_SPLITS = {}  # per worker process: the data of its last run (a sweep's points mostly share it)


def run_point(spec, path, data_dir=None) -> dict:
    """Run (or resume, or leave) one point: ``runner.train(spec, path, resume=True)``, quietly. Returns what
    the sweep prints: status, seconds, the run's log lines (a resume says where it resumed), host, pid."""
    from . import catalog
    from .runner import load_splits, train

    t0 = time.perf_counter()
    key = json.dumps([spec.data, spec.seed, str(data_dir)], sort_keys=True, default=str)
    if key not in _SPLITS:
        _SPLITS.clear()
        _SPLITS[key] = load_splits(spec.data, data_dir, spec.seed)
    experiment = catalog.EXPERIMENTS.get(spec.experiment)
    hook = experiment.epoch_hook(spec) if experiment is not None and experiment.epoch_hook else None
    lines = []
    run = train(spec, path, resume=True, splits=_SPLITS[key], on_epoch=hook, progress=False, log=lines.append)
    return {"status": run.status, "seconds": time.perf_counter() - t0, "log": lines,
            "host": socket.gethostname(), "pid": os.getpid(), "summary": run.summary()}


def _worker_init(parent: int):
    """A local worker: one BLAS thread, and gone when the sweep's process is (a kill leaves no orphan)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="sweep-watchdog").start()


def _watch(parent: int):
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os._exit(70)  # the sweep is gone: a kill mid-write leaves only a temp file, which the next run removes


# ---------------------------------------------------------------- where the tasks run


class Local:
    """``--workers N``: spawned processes, one BLAS thread each."""

    def __init__(self, workers: int):
        from .results import WriteError

        self.workers = workers
        self.lost = (WriteError,)  # and cf.BrokenExecutor (a worker died): execute() adds it

    def executor(self) -> cf.Executor:
        return cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_worker_init, initargs=(os.getpid(),))

    def slots(self) -> int:
        return self.workers

    def describe(self) -> str:
        return f"{self.workers} local worker process{'es' if self.workers != 1 else ''} (1 BLAS thread each)"

    def stop(self, executor):
        """End the workers at once (Ctrl-C): their runs keep their last checkpoints and resume next time."""
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                process.terminate()

    def close(self):
        pass


class Cluster:
    """``--scheduler tcp://HOST:PORT``: a dask.distributed cluster through its client's executor."""

    def __init__(self, address: str):
        if "://" not in address:
            raise SweepError(f"sweep: --scheduler {address}: expected an address such as tcp://HOST:8786")
        try:
            from distributed import Client, KilledWorker
            from distributed.comm.core import CommClosedError
        except ImportError as err:
            raise SweepError(f"sweep: --scheduler needs dask.distributed, which cannot be imported ({err}); "
                             f"install the extra: pip install -e \".[cluster]\"") from err
        try:
            self.client = Client(address, timeout=DASK_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise SweepError(f"sweep: cannot reach the Dask scheduler at {address} ({' '.join(str(err).split())})"
                             ) from err
        from .results import WriteError

        self.address = address
        self.lost = (KilledWorker, CommClosedError, WriteError)

    def executor(self) -> cf.Executor:
        return self.client.get_executor(pure=False)

    def slots(self) -> int:
        return sum(self.client.nthreads().values())

    def describe(self) -> str:
        return f"the Dask cluster at {self.address} ({self.slots()} worker threads now)"

    def stop(self, executor):
        """Ctrl-C: the tasks not started are cancelled (by the shutdown); started runs end on their workers."""

    def close(self):
        self.client.close()


# ---------------------------------------------------------------- the loop


def execute(points, where, *, data_dir=None, say=print, progress=None) -> tuple[list, list]:
    """Run ``points`` on ``where`` (:class:`Local` or :class:`Cluster`): at most as many in flight as it
    has slots; a point whose worker was lost is resubmitted (up to :data:`MAX_ATTEMPTS` submissions), a
    broken pool replaced. Returns (done points, failed points with ``result["error"]``)."""
    progress = progress or Progress(len(points), 0, say)
    queue, running, done, failed = deque(points), {}, [], []
    generation, executor = 0, where.executor()
    lost = tuple(where.lost) + (cf.BrokenExecutor, cf.CancelledError)
    try:
        while queue or running:
            while queue and len(running) < max(1, where.slots()):
                point = queue.popleft()
                point.attempts += 1
                running[executor.submit(run_point, point.spec, str(point.path), data_dir)] = (point, generation)
            progress.tick(running=len(running))
            cf.wait(list(running), timeout=progress.wait_seconds(), return_when=cf.FIRST_COMPLETED)
            broken = False
            # done(), not wait()'s answer: a future cancelled by a shutdown is done but never "notified" to wait()
            for future in [f for f in running if f.done()]:
                point, born = running.pop(future)
                try:
                    point.result = future.result()
                except lost as err:
                    broken |= isinstance(err, cf.BrokenExecutor) and born == generation
                    why = f"{type(err).__name__}: {' '.join(str(err).split())}"[:200]
                    if point.attempts < MAX_ATTEMPTS:
                        say(f"  {point.label}: its worker was lost ({why}); submitted again "
                            f"({point.attempts + 1} of {MAX_ATTEMPTS})")
                        queue.appendleft(point)
                        continue
                    point.result = {"error": f"lost its worker {point.attempts} times (last: {why})"}
                    failed.append(point)
                except Exception as err:
                    point.result = {"error": f"{type(err).__name__}: {' '.join(str(err).split())}"}
                    failed.append(point)
                else:
                    done.append(point)
                progress.finished(point, running=len(running))
            if broken and (queue or running):  # a dead local worker breaks its pool: replace it
                _shutdown(executor, wait=False, cancel=False)  # (what it still holds has failed with it)
                generation, executor = generation + 1, where.executor()
    except KeyboardInterrupt:
        where.stop(executor)
        raise
    finally:
        _shutdown(executor, wait=not running)
        progress.close()
    return done, failed


def _shutdown(executor, wait, cancel=True):
    """Shut the executor down, cancelling what has not started (Dask's executor takes no cancel_futures)."""
    try:
        executor.shutdown(wait=wait, cancel_futures=cancel)
    except TypeError:
        executor.shutdown(wait=wait)


def remove_stray_temps(points) -> list[Path]:
    """The temp files of the points' own names (``.NAME.XXXXXXXX.tmp``) left by workers that died mid-write
    (call when none of the points is in flight)."""
    from .results import TEMP_PATTERN

    removed = []
    for point in points:
        for p in point.path.parent.glob(f".{point.path.name}.*.tmp"):
            if TEMP_PATTERN.match(p.name) and len(p.name) == len(point.path.name) + 14:
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed


# ---------------------------------------------------------------- progress


class Progress:
    """One line per finished run; a tqdm bar on a terminal's stderr, else a line "sweep: k/N done, r running,
    ... ETA ..." every ``every`` seconds (``$TINYGRAD2_PROGRESS_SECONDS``, default 10). ``skipped`` runs were
    finished before the sweep started; the ETA is the time per run so far times the runs left."""

    def __init__(self, total, skipped, say=print, every=None, bar=None, clock=time.monotonic):
        from .runner import PROGRESS_ENV, PROGRESS_SECONDS, _isatty

        self.total, self.skipped, self.say, self.clock = total, skipped, say, clock
        self.every = float(os.environ.get(PROGRESS_ENV, PROGRESS_SECONDS)) if every is None else every
        self.start = self.last = clock()
        self.done = self.running = 0
        self.bar = None
        if bar if bar is not None else _isatty(sys.stderr):
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total + skipped, initial=skipped, desc="sweep", unit="run")

    def wait_seconds(self) -> float:
        return max(0.05, min(self.every, 1.0)) if self.bar is None else 1.0

    def finished(self, point, running):
        self.done += 1
        self.running = running
        r = point.result
        if "error" in r:
            text = f"  {point.label:<28} failed    {r['error']}"
        else:
            metric = r.get("summary", {}).get("test_acc")
            extra = [line for line in r.get("log", []) if "resuming" in line or "already" in line]
            text = (f"  {point.label:<28} {r['status']:<9} {r['seconds']:6.1f} s"
                    + (f"  test_acc {metric:.4f}" if isinstance(metric, float) and math.isfinite(metric) else "")
                    + f"  {point.path.name}" + ("  (resumed)" if any("resuming" in e for e in extra) else ""))
        if self.bar is not None:
            self.bar.write(text)
            self.bar.update(1)
            self.bar.set_postfix(running=running)
        else:
            self.say(text)

    def line(self, running) -> str:
        from .runner import _duration

        elapsed = self.clock() - self.start
        left = self.total - self.done
        eta = f"ETA {_duration(elapsed / self.done * left)}" if self.done else "ETA -"
        return (f"sweep: {self.skipped + self.done}/{self.skipped + self.total} done, {running} running, "
                f"{_duration(elapsed)} elapsed, {eta}")

    def tick(self, running):
        self.running = running
        if self.bar is not None:
            self.bar.set_postfix(running=running)
            return
        now = self.clock()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            self.say(self.line(running))

    def close(self):
        if self.bar is not None:
            self.bar.close()

