"""The run loop: one optimizer, one model, one data set -> one results file.

A run is described by a :class:`RunSpec` (plain data, stored as the results
file's config). :func:`train` executes it:

* epochs x mini-batches; the batches of epoch e depend only on (seed, e), so a
  run is deterministic under its seed and a resumed run sees the same batches;
* every step logs the optimizer's ``info`` (loss, gradient norm, damping, CG
  iterations, ...) and the step's wall time;
* every epoch evaluates the model (eval mode, no graph) on the validation and
  test splits, calls the optimizer's ``end_epoch`` hook with those metrics
  (BB's step size, the Hybrid's switch), logs them with the epoch's mean
  mini-batch loss as ``train_loss`` and the training wall time, and writes a
  checkpoint (parameters, optimizer state, BatchNorm buffers) atomically;
* a non-finite loss or parameter vector stops the run with a clear message;
  the file keeps the last good checkpoint and its parameters as the final ones;
* ``resume=True`` continues a killed run from its last checkpoint and ends
  with exactly the results an uninterrupted run would have (wall times aside);
* progress: a tqdm bar on a terminal's stderr, and, when stdout is not a
  terminal (a log file, nohup), a line every ``$TINYGRAD2_PROGRESS_SECONDS``
  (default 10) seconds with the method, epoch, step, loss and ETA;
* the run's BLAS threads (``RunSpec.blas_threads``, via threadpoolctl) are
  recorded in its config but not compared by ``resume``: the thread count
  does not change what is computed, only how fast.

BatchNorm running statistics are updated once per step by an explicit extra
forward pass on the step's batch (``Module.update_running_stats``), because
optimizers evaluate the model many times per step (line searches, HVPs).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

import nets
import optimizers
from tinygrad2 import Objective, backend as B, losses, memory, no_grad

from . import data as datasets
from .results import ResultsError, RunWriter, _config_json, clean_temp_files, load_final, load_run


# BLAS threads of a run unless asked otherwise. On a 2-core machine with one core kept busy by another process, a
# two-thread OpenBLAS was 3x to 6x slower than one thread: eigvalsh of 970x970 0.16-0.19 s with 1 thread against
# 0.46-1.4 s with 2; one digits Newton step 7.5-8.0 s against 29-47 s (medians; the README has the table).
DEFAULT_BLAS_THREADS = 1


@contextlib.contextmanager
def blas_threads(threads):
    """Limit the BLAS thread pools (OpenBLAS, MKL, ...) to ``threads`` inside the block; None: leave them."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(threads), user_api="blas"):
        yield


@dataclasses.dataclass
class RunSpec:
    """Everything that defines a run. ``model`` and ``optimizer`` are
    ``{"name": class name in nets / optimizers, "kwargs": {...}}``; ``data``
    is ``{"name": data set, "reshape": sample shape or None, "normalize": bool,
    "subset": [n_train, n_val, n_test] or None, "pool": k (k x k average
    pooling of the images, e.g. 4: MNIST 28x28 -> 7x7) or None, "limit_batches":
    int or None, "verify": bool (checksums; default True)}``. ``blas_threads``:
    the BLAS threads of the run (None: the library's own choice); recorded,
    but not a setting that ``resume`` compares. ``probes``: None, or
    ``{"names": [...], "every": steps, "batch": examples}`` (curvature
    telemetry, :mod:`experiments.probes`: measured on a fixed probe batch
    every ``every`` steps, at step 0 and at the last step; recorded, and not
    a setting either: probes use their own random streams and never change
    the training)."""

    experiment: str
    method: str
    model: dict
    optimizer: dict
    data: dict
    epochs: int = 10
    batch_size: int | None = 128
    seed: int = 0
    dtype: str = "float32"
    loss: str = "cross_entropy"
    blas_threads: int | None = DEFAULT_BLAS_THREADS
    probes: dict | None = None

    def config(self) -> dict:
        config = dataclasses.asdict(self)
        if config["probes"] is None:  # runs without probes keep the config they always had
            del config["probes"]
        return config

    @property
    def filename(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.method)
        return f"{self.experiment}__{safe}.h5"


class DivergedError(RuntimeError):
    """A run stopped because its loss or parameters became non-finite."""


def build_model(spec: dict):
    cls = getattr(nets, spec["name"], None)
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"run: unknown model {spec['name']!r} (a class in nets)")
    return cls(**spec.get("kwargs", {}))


def build_optimizer(spec: dict):
    cls = getattr(optimizers, spec["name"], None)
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"run: unknown optimizer {spec['name']!r} (a class in optimizers)")
    return cls(**spec.get("kwargs", {}))


def load_splits(spec: dict, data_dir=None, seed=0):
    options = {"verify": spec["verify"]} if "verify" in spec else {}
    splits = datasets.load(spec["name"], data_dir, **options)
    if spec.get("subset"):
        n_train, n_val, n_test = spec["subset"]
        splits = splits.subset(n_train, n_val, n_test, seed=seed, name=f"{spec['name']}-subset")
    if spec.get("pool"):
        splits = average_pool(splits, int(spec["pool"]))
    if spec.get("reshape"):
        splits = splits.reshape(*spec["reshape"])
    if spec.get("normalize"):
        splits = splits.normalize()
    return splits.to_device()


def average_pool(splits, k):
    """k x k average pooling of every image (the last two axes; H and W must
    be multiples of k): a cheap way to shrink inputs, e.g. for dense Newton."""
    def pool(d):
        H, W = d.X.shape[-2:]
        if H % k or W % k:
            raise ValueError(f"data pool={k}: image size {H}x{W} is not a multiple of {k}")
        X = d.X.reshape(*d.X.shape[:-2], H // k, k, W // k, k).mean(axis=(-3, -1), dtype=np.float32)
        return datasets.Dataset(d.name, X, d.y, d.classes, d.index)
    return datasets.Splits(splits.name, pool(splits.train), None if splits.val is None else pool(splits.val),
                           pool(splits.test), {**splits.info, "pool": k})


def evaluate(model, theta, dataset, loss="cross_entropy", batch_size=1000):
    """(mean loss, accuracy) of the model in eval mode on a whole split; the
    loss from :mod:`tinygrad2.losses`, accuracy NaN unless it classifies."""
    if dataset is None or len(dataset) == 0:
        return math.nan, math.nan
    loss = losses.get(loss)
    model.eval()
    total, correct = 0.0, 0
    try:
        with no_grad():
            for X, y in dataset.batches(batch_size, shuffle=False):
                out = model.apply(theta, X)
                total += float(loss.value(out, y).item()) * len(y)
                if loss.classification:
                    correct += int((out.data.argmax(axis=1) == y).sum())
    finally:
        model.train()
    n = len(dataset)
    return total / n, (correct / n if loss.classification else math.nan)


def _finite(x) -> bool:
    return bool(B.xp.isfinite(x).all())


class RunError(Exception):
    """A run that cannot start as asked (the message is one line naming the file and the setting)."""


STEP_CHECKPOINT_SECONDS = 5.0  # a step at least this long is followed by a (mid-epoch) checkpoint
CHECKPOINT_ENV = "TINYGRAD2_CHECKPOINT_SECONDS"  # overrides STEP_CHECKPOINT_SECONDS (0: after every step)
# config entries that do not change the numbers: ignored by resume's check (and by the report's grouping)
NOT_SETTINGS = ("data.verify", "blas_threads")
PROBE_EVERY, PROBE_BATCH = 50, 256  # default probe interval (steps) and probe batch (examples)
PROGRESS_SECONDS = 10.0  # without a terminal on stdout, a progress line at most this often
PROGRESS_ENV = "TINYGRAD2_PROGRESS_SECONDS"  # overrides PROGRESS_SECONDS


def train(spec: RunSpec, path, *, resume=False, extend=False, overwrite=False, data_dir=None, splits=None,
          progress=None, log=print, on_epoch=None, checkpoint_seconds=None):
    """Run ``spec`` and write its results to ``path`` (see the module
    docstring). Returns the loaded :class:`experiments.results.Run`.

    An existing ``path`` needs ``resume`` (continue it: its recorded settings
    must equal ``spec``'s, else :class:`RunError`; a finished run is left as
    it is) or ``overwrite`` (start again). ``extend`` (with ``resume``) lets
    ``spec.epochs`` exceed the recorded epochs, every other setting equal: a
    finished run continues from its last checkpoint to ``spec.epochs``, with
    the numbers of an uninterrupted run of that length. Fewer epochs than
    recorded are refused. A step that takes at least ``checkpoint_seconds``
    (default ``$TINYGRAD2_CHECKPOINT_SECONDS``, else 5) is followed by a
    mid-epoch checkpoint, so an interrupted run of long steps loses at most one.

    ``on_epoch(epoch, theta, model, objective)``, if given, is called at
    every evaluation (epoch 0 = the initial point, then after each epoch)
    with ``objective`` bound to the first batch of epoch 0; the numbers it
    returns (a dict) are logged in the epoch series beside the metrics.

    ``progress``: None shows a tqdm bar when stderr is a terminal and logs a
    line (``log``) every ``$TINYGRAD2_PROGRESS_SECONDS`` (default 10) seconds
    when stdout is not one; False shows nothing; True the bar; a number, the
    lines at that interval. The BLAS threads are ``spec.blas_threads``.
    Freed host memory is kept for reuse (:func:`tinygrad2.memory.keep_freed_host_memory`)."""
    memory.keep_freed_host_memory()
    with blas_threads(spec.blas_threads):
        return _train(spec, path, resume=resume, extend=extend, overwrite=overwrite, data_dir=data_dir, splits=splits,
                      progress=progress, log=log, on_epoch=on_epoch, checkpoint_seconds=checkpoint_seconds)


def _train(spec, path, *, resume, extend, overwrite, data_dir, splits, progress, log, on_epoch, checkpoint_seconds):
    path = Path(path)
    if checkpoint_seconds is None:
        checkpoint_seconds = float(os.environ.get(CHECKPOINT_ENV, STEP_CHECKPOINT_SECONDS))
    removed = clean_temp_files(path.parent, own=path.name)
    if removed:
        log(f"{path.parent}: removed {len(removed)} temp file(s) left by killed writes")
    resuming = resume and path.exists()
    recorded, reopened = _check_request(spec, path, resume=resume, extend=extend, overwrite=overwrite)
    if resuming:
        writer, checkpoint = reopened
        more = extend and spec.epochs > recorded.config.get("epochs", spec.epochs)
        if recorded.status in ("finished", "diverged") and not more:
            log(f"{path}: already {recorded.status}; nothing to resume")
            return recorded
        if recorded.status == "diverged":
            raise RunError(f"resume --extend: {path} diverged ({recorded.message}); it cannot be extended")
    with B.precision(spec.dtype):
        splits = splits if splits is not None else load_splits(spec.data, data_dir, spec.seed)
        model = build_model(spec.model)
        opt = build_optimizer(spec.optimizer)
        train_set = splits.train
        X0, y0 = next(train_set.batches(spec.batch_size, seed=spec.seed, epoch=0))
        objective = Objective(model.apply, spec.loss, X0, y0, layout=model.layout())

        if resuming:
            writer.config = spec.config()
            writer.discard_final()
        else:
            writer, checkpoint = RunWriter.create(path, spec.config(), overwrite=overwrite), None
        batch0, losses0, partial = 0, [], 0.0
        if checkpoint is None:
            theta = model.init_theta(spec.seed, spec.dtype)
            state, epoch0, step, wall = opt.init(theta), 0, 0, 0.0
        else:
            theta, state = B.to_device(checkpoint.theta), checkpoint.opt_state
            epoch0, step, wall = checkpoint.epoch, checkpoint.step, checkpoint.wall_time
            if checkpoint.buffers:
                model.load_buffers(checkpoint.buffers)
            batch0 = int(checkpoint.extra.get("batch", 0))
            if batch0:  # a mid-epoch checkpoint: the epoch's losses and time so far
                losses0 = list(B.to_host(checkpoint.extra["losses"]))
                partial = float(checkpoint.extra["epoch_time"])
                wall -= partial
            where = f"epoch {epoch0}" + (f" and {batch0} batches of epoch {epoch0 + 1}" if batch0 else "")
            log(f"{path}: resuming after {where} (step {step})")

        has_buffers = bool(model.named_buffers())
        prober = _prober(spec, model, train_set, writer, log)
        if prober is not None and resuming and more:  # extended: the old last step was only probed as the last
            probed = writer.probes.columns["step"]
            if len(probed) and probed[-1] and not prober.due(probed[-1]):
                writer.probes.truncate(len(probed) - 1)
        prev_theta, info = None, {}

        def probe_once():
            """Log the probes of the current step unless its row exists; the seconds they took."""
            probed = writer.probes.columns["step"]
            if prober is None or (len(probed) and probed[-1] == step):
                return 0.0
            t1 = time.perf_counter()
            writer.log_probes(step, prober(step, theta, prev_theta, opt, state, info))
            return time.perf_counter() - t1

        metrics = None
        with writer, _interrupt_at_safe_points() as interrupt_if_asked:
            if epoch0 == 0 and batch0 == 0:
                probe_once()
                metrics = _metrics(model, theta, splits, spec.loss, math.nan, 0.0)
                if on_epoch is not None:
                    metrics.update(on_epoch(0, theta, model, objective) or {})
                writer.log_epoch(0, metrics)
            bar = _progress(progress, spec, train_set, epoch0, batch0, log)
            for epoch in range(epoch0, spec.epochs):
                first = 0
                losses, before, start = [], 0.0, time.perf_counter()
                if epoch == epoch0 and batch0:
                    first, losses, before = batch0, losses0, partial
                batches = train_set.batches(spec.batch_size, seed=spec.seed, epoch=epoch, start=first)
                limit = spec.data.get("limit_batches")
                for b, (X, y) in enumerate(batches, start=first):
                    if limit is not None and b >= limit:
                        break
                    t0 = time.perf_counter()
                    new_theta, new_state, info = opt.step(objective.with_batch(X, y), theta, state)
                    loss = info.get("loss", math.nan)
                    if not (math.isfinite(loss) and _finite(new_theta)):
                        message = (f"{spec.method}: non-finite {'loss' if not math.isfinite(loss) else 'parameters'} "
                                   f"at epoch {epoch + 1}, step {step + 1} (loss {loss}); stopped, the last good "
                                   f"checkpoint (epoch {epoch}) is kept")
                        writer.message = message
                        writer.finish(theta, {"diverged_step": step + 1}, buffers=model.named_buffers(),
                                      status="diverged")
                        log(message)
                        if bar is not None:
                            bar.close()
                        return load_run(path)
                    prev_theta, theta, state = theta, new_theta, new_state
                    if has_buffers:
                        model.update_running_stats(theta, X)
                    step += 1
                    losses.append(loss)
                    step_time = time.perf_counter() - t0
                    writer.log_step(step, {**info, "epoch": epoch + 1, "step_time": step_time})
                    if prober is not None and prober.due(step):
                        before -= probe_once()  # not counted in the epoch's time
                    if step_time >= checkpoint_seconds:  # a long step: do not lose it to a kill
                        so_far = before + time.perf_counter() - start
                        writer.checkpoint(theta, state, epoch=epoch, step=step, wall_time=wall + so_far,
                                          buffers=model.named_buffers(),
                                          extra={"batch": b + 1, "losses": np.asarray(losses), "epoch_time": so_far})
                    if bar is not None:
                        bar.advance(epoch, b, step, loss)
                    interrupt_if_asked()
                if epoch == spec.epochs - 1:
                    before -= probe_once()  # the final step, before its checkpoint
                epoch_time = before + time.perf_counter() - start
                wall += epoch_time
                metrics = _metrics(model, theta, splits, spec.loss, float(np.mean(losses)) if losses else math.nan,
                                   wall, epoch_time)
                state = opt.end_epoch(theta, state, metrics)
                if on_epoch is not None:
                    metrics.update(on_epoch(epoch + 1, theta, model, objective) or {})
                writer.log_epoch(epoch + 1, metrics)
                writer.checkpoint(theta, state, epoch=epoch + 1, step=step, wall_time=wall,
                                  buffers=model.named_buffers())
                interrupt_if_asked()
            if bar is not None:
                bar.close()
            if metrics is None:  # killed between the last checkpoint and the end: its epoch row is the last
                metrics = _last_row(writer.epochs)
            probe_once()  # normally done before the last checkpoint; here for a file whose last probe row is missing
            final = dict(metrics, seconds_per_epoch=wall / max(spec.epochs, 1))
            writer.finish(theta, final, buffers=model.named_buffers())
    return load_run(path)


def _prober(spec, model, train_set, writer, log):
    """The run's :class:`experiments.probes.Prober` (None without probes); records the probe batch."""
    if not spec.probes:
        return None
    from .probes import Prober, probe_indices

    indices = probe_indices(len(train_set), spec.probes.get("batch", PROBE_BATCH), spec.seed)
    if writer.probe_batch is not None and len(writer.probes) and writer.probe_batch != indices.tolist():
        raise RunError(f"resume: {writer.path.name} was probed on another probe batch ({len(writer.probe_batch)} "
                       f"examples); resume with its --probe-batch {len(writer.probe_batch)}, or start again "
                       f"with --overwrite")
    objective = Objective(model.apply, spec.loss, train_set.X[indices], train_set.y[indices], layout=model.layout())

    def batches(count, seed):
        return list(itertools.islice(train_set.batches(spec.batch_size, seed=seed, epoch=0), count))

    writer.probe_batch = indices.tolist()
    return Prober(spec.probes["names"], objective, spec.probes.get("every", PROBE_EVERY), seed=spec.seed,
                  batches=batches, log=log)


@contextlib.contextmanager
def _interrupt_at_safe_points():
    """While training, Ctrl-C (SIGINT) only sets a flag; the loop turns it into
    KeyboardInterrupt after the current step (``interrupt_if_asked``), never
    inside a write. Raised asynchronously, the interrupt could land in h5py's
    C code or in a finalizer, where Python prints and drops it, and the run
    went on. A second Ctrl-C interrupts at once (a long step need not finish).
    Only in the main thread and over Python's default handler."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield lambda: None
        return
    asked = []

    def handler(signum, frame):
        asked.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupt_if_asked():
        if asked:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield interrupt_if_asked
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def check_request(spec: RunSpec, path, *, resume=False, extend=False, overwrite=False):
    """What :func:`train` checks before it touches anything: an existing ``path``
    needs ``resume`` or ``overwrite``; a resumed file must be whole (every
    digest) and recorded with ``spec``'s settings (``extend``: more epochs
    allowed). Returns the recorded :class:`~experiments.results.Run` (``None``
    if there is nothing to resume); raises :class:`RunError` or ResultsError."""
    return _check_request(spec, path, resume=resume, extend=extend, overwrite=overwrite)[0]


def _check_request(spec, path, *, resume, extend, overwrite):
    """:func:`check_request`, also returning the file reopened for writing,
    ``(writer, checkpoint)`` (None when nothing is resumed): the file is read
    and its digests checked once."""
    path = Path(path)
    if extend and not resume:
        raise RunError("run: --extend continues a results file: it needs --resume")
    if resume and overwrite:
        raise RunError("run: --resume and --overwrite contradict each other; pass one")
    if not path.exists():
        return None, None
    if path.is_dir():
        raise RunError(f"run: {path} is a folder; the results file of {spec.method} cannot be written there")
    if not (resume or overwrite):
        raise RunError(f"run: {path} already exists ({_status(path)}); pass --resume to continue it "
                       f"or --overwrite to start again")
    if overwrite:
        return None, None
    recorded = load_run(path)
    reopened = RunWriter.resume(path, run=recorded)  # the checkpoint's digest too, before judging the file
    if recorded.status in ("finished", "diverged"):
        load_final(path)
    _check_settings(path, recorded.config, json.loads(_config_json(spec.config())), extend)
    return recorded, reopened


def _status(path) -> str:
    try:
        return f"status {load_run(path).status}"
    except (ResultsError, OSError):
        return "not readable"


def comparable_settings(config) -> dict:
    """A run's recorded settings as ``{dotted key: value}``, without those that
    do not change its results (:data:`NOT_SETTINGS`): what a resume compares
    and what ``report`` groups runs by (there also without the seed)."""
    return {k: v for k, v in _flat(config).items() if k not in NOT_SETTINGS and not k.startswith("probes")}


def _flat(tree, prefix="") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else
                   {f"{prefix}{key}": value})
    return out


def _show(value) -> str:
    if value is _UNSET:
        return "unset"
    return value if isinstance(value, str) else json.dumps(value)


_UNSET = object()


def settings_diff(recorded: dict, requested: dict, skip=()) -> list[tuple[str, str, str]]:
    """``(setting, recorded, requested)`` for every config entry that differs
    (nested dicts compared entry by entry, e.g. ``optimizer.kwargs.lr``)."""
    a, b = comparable_settings(recorded), comparable_settings(requested)
    keys = list(dict.fromkeys([*a, *b]))
    return [(k, _show(a.get(k, _UNSET)), _show(b.get(k, _UNSET))) for k in keys
            if k not in skip and a.get(k, _UNSET) != b.get(k, _UNSET)]


def _check_settings(path, recorded, requested, extend):
    diff = settings_diff(recorded, requested, skip=("epochs",) if extend else ())
    if diff:
        hint = "pass the recorded settings, or --overwrite to start again"
        if [k for k, _, _ in diff] == ["epochs"] and requested["epochs"] > recorded.get("epochs", 0):
            hint = "pass the recorded settings, --extend to add epochs to it, or --overwrite to start again"
        raise RunError(f"resume: {path.name} was recorded with {', '.join(f'{k} {a}' for k, a, _ in diff)}; "
                       f"this request has {', '.join(f'{k} {b}' for k, _, b in diff)} ({hint})")
    if extend and requested["epochs"] < recorded.get("epochs", 0):
        raise RunError(f"resume --extend: {path.name} already holds {recorded['epochs']} epochs; --epochs "
                       f"{requested['epochs']} would shorten it (ask for more epochs, or --overwrite to start again)")


def _last_row(series) -> dict:
    """The last row of the epoch series as a metrics dict (NaN entries dropped)."""
    return {k: v[-1] for k, v in series.columns.items()
            if k != series.index and len(v) and not math.isnan(v[-1])}


def _metrics(model, theta, splits, loss, train_loss, wall, epoch_time=math.nan):
    val_loss, val_acc = evaluate(model, theta, splits.val, loss)
    test_loss, test_acc = evaluate(model, theta, splits.test, loss)
    return {"train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss,
            "test_acc": test_acc, "wall_time": wall, "epoch_time": epoch_time}


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def _progress(progress, spec, train_set, epoch0, batch0, log):
    """The progress reporters of one run (see :func:`train`), as one :class:`_Progress`, or None."""
    if progress is False:
        return None
    per_epoch = train_set.num_batches(spec.batch_size)
    limit = spec.data.get("limit_batches")
    if limit is not None:
        per_epoch = min(per_epoch, limit)
    total = per_epoch * (spec.epochs - epoch0) - batch0
    reporters = []
    if progress is True or (progress is None and _isatty(sys.stderr)):
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            reporters.append(_Bar(tqdm(total=total, desc=spec.method, leave=False)))
    every = None
    if isinstance(progress, (int, float)) and not isinstance(progress, bool):
        every = float(progress)
    elif progress is None and not _isatty(sys.stdout):
        every = float(os.environ.get(PROGRESS_ENV, PROGRESS_SECONDS))
    if every is not None:
        reporters.append(_Lines(spec, per_epoch, total, every, log))
    return _Progress(reporters) if reporters else None


class _Progress:
    """Every reporter of a run: ``advance(epoch, batch, step, loss)`` after each step, ``close()`` at the end."""

    def __init__(self, reporters):
        self.reporters = reporters

    def advance(self, epoch, batch, step, loss):
        for r in self.reporters:
            r.advance(epoch, batch, step, loss)

    def close(self):
        for r in self.reporters:
            r.close()


class _Bar:
    """tqdm, for a terminal."""

    def __init__(self, bar):
        self.bar = bar

    def advance(self, epoch, batch, step, loss):
        self.bar.update(1)
        self.bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")

    def close(self):
        self.bar.close()


class _Lines:
    """A plain line after the first step (the log shows what runs and its ETA at once), then at most every
    ``every`` seconds, for a log file: method, epoch, batch, step, loss, elapsed time, ETA."""

    def __init__(self, spec, per_epoch, total, every, log):
        self.spec, self.per_epoch, self.total, self.every, self.log = spec, per_epoch, total, every, log
        self.start = time.monotonic()
        self.last = -math.inf
        self.done = 0

    def advance(self, epoch, batch, step, loss):
        self.done += 1
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / self.done * max(self.total - self.done, 0)
        self.log(f"  progress {self.spec.method}: epoch {epoch + 1}/{self.spec.epochs}, batch {batch + 1}/"
                 f"{self.per_epoch}, step {step}, loss {loss:.4g}, {_duration(elapsed)} elapsed, "
                 f"ETA {_duration(eta)}")
        with contextlib.suppress(AttributeError, ValueError, OSError):
            sys.stdout.flush()  # a log file is block-buffered: the line is there now, not at exit

    def close(self):
        pass


def _duration(seconds) -> str:
    """0.4 s, 12.0 s, 3m 05s, 2h 10m."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
