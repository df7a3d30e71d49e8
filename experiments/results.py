"""Results on disk: one HDF5 file per run, always whole.

Layout of ``RUN.h5``::

    /                  attrs: format, config (JSON), status, message, created, updated,
                              versions (JSON), final_metrics (JSON), skipped_keys (JSON), digest
    /steps/<key>       one row per optimizer step: "step" (int64) and every numeric info key
    /epochs/<key>      one row per evaluation: "epoch" (int64) and the metrics
                       (train_loss, val_loss, val_acc, test_acc, wall_time, ...)
    /probes/<key>      (runs with probes) one row per probed step: "step" (int64) and one
                       column per probe value (experiments.probes); attrs: batch_indices
                       (JSON: the probe batch's indices in the training set)
    /checkpoint        attrs: epoch, step, wall_time, n_step_rows, n_epoch_rows, n_probe_rows, written,
                              digest
        theta          the flat parameters (dtype kept)
        optimizer/     the optimizer state (optimizers.state.save_state: bit-exact)
        rng/           {"state": RNG state tree}            (when given)
        buffers/       {"name": array} (BatchNorm statistics) (when given)
        extra/         any further state tree                (when given)
    /final             attrs: digest;  theta, buffers/        (written by finish)

Series columns are float64 (``step``/``epoch`` int64), resizable (maxshape
None). A key first seen at row k gets NaN for rows 0..k-1, and a row without
a known key gets NaN there. Non-numeric info values (strings, arrays) are not
stored; their keys are listed in ``skipped_keys``.

Atomicity. The writer keeps the series in memory and never modifies the file
in place: every :meth:`RunWriter.flush` (and so every checkpoint) builds a
complete new file in memory (HDF5 core driver, no backing store: no HDF5 call
touches the disk, so a full disk is an ordinary :class:`WriteError`), writes its
bytes to a temp file in the same folder (``.RUN.h5.XXXXXXXX.tmp``, mode
``0o666 & ~umask``), fsyncs it and ``os.replace``s it onto ``RUN.h5``
(:func:`write_atomically`; :func:`clean_temp_files` removes the temp files of
killed writes). Tests only: ``$TINYGRAD2_TEST_CRASH_AT`` = ``mid_write``,
``before_replace`` or ``after_replace`` ends the process (``os._exit(137)``) at
that point of the write that records the final parameters. The latest checkpoint lives
inside that one file and is carried over (HDF5 copy) by flushes that do not
replace it. So the file on disk is always one consistent snapshot: a crash
mid-write leaves the previous file untouched (and at worst a stray ``.tmp``),
and the checkpoint and the series in one file can never disagree about what
happened before the checkpoint.

Integrity. The root (config + series), ``checkpoint`` and ``final`` each
carry a SHA-256 ``digest`` of their content, checked whenever they are read:
a damaged file raises :class:`ResultsError` naming it, and nothing here ever
writes over a file it could not read (:meth:`RunWriter.create` refuses an
existing path; :meth:`RunWriter.resume` validates before any write).

Resume. ``writer, ckpt = RunWriter.resume(path)`` reads the config, the
series truncated to the rows that existed when the checkpoint was taken
(``n_step_rows``/``n_epoch_rows``: rows logged after it are dropped, since
the resumed run recomputes them) and the :class:`Checkpoint` (``None`` when
the run has none: start over). Counters are the caller's: by convention
``step`` = optimizer steps completed (the index of the next step), ``epoch`` =
epochs completed, ``wall_time`` = seconds of training so far, and
``extra`` carries anything else (e.g. ``{"batch": b}`` for a mid-epoch
checkpoint, resumed with ``Dataset.batches(..., start=b)``).
"""
from __future__ import annotations

import array
import datetime
import functools
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np  # host-side only: series columns and file I/O

from optimizers.state import load_state, save_state
from tinygrad2 import backend as B

FORMAT = "tinygrad2.results/1"
STEP_INDEX, EPOCH_INDEX = "step", "epoch"


class ResultsError(Exception):
    """A results file cannot be read or is damaged (the message names it)."""


@dataclass
class Checkpoint:
    """What a run needs to continue exactly where it stopped."""

    theta: object
    opt_state: dict
    epoch: int
    step: int
    wall_time: float = 0.0
    rng_state: object = None
    buffers: dict | None = None
    extra: dict = field(default_factory=dict)

    def __repr__(self):
        return (f"Checkpoint(epoch={self.epoch}, step={self.step}, wall_time={self.wall_time:.3f}, "
                f"theta {tuple(self.theta.shape)}, optimizer keys {sorted(self.opt_state)})")


def generator_state(generator) -> dict:
    """The state of a NumPy Generator as a plain tree (what ``checkpoint`` stores)."""
    return generator.bit_generator.state


def generator_from_state(state) -> np.random.Generator:
    """A NumPy Generator continuing from :func:`generator_state`'s tree."""
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


# ---------------------------------------------------------------- series in memory


class _Series:
    """Columns of equal length (compact ``array.array``s); NaN where a row has no value."""

    def __init__(self, index: str, columns=None):
        self.index = index
        columns = columns or {index: []}
        self.columns = {k: array.array("q" if k == index else "d", v) for k, v in columns.items()}
        self.skipped = set()

    def __len__(self):
        return len(self.columns[self.index])

    def append(self, i, values: dict):
        n = len(self)
        self.columns[self.index].append(int(i))
        for key, value in values.items():
            if key == self.index:
                continue
            number = _number(value)
            if number is None:
                self.skipped.add(key)
                continue
            if key not in self.columns:
                self.columns[key] = array.array("d", [math.nan]) * n
            self.columns[key].append(number)
        for column in self.columns.values():
            if len(column) == n:
                column.append(math.nan)

    def truncate(self, n):
        for key in self.columns:
            del self.columns[key][n:]

    def arrays(self) -> dict:
        return {k: np.array(v, dtype=np.int64 if k == self.index else np.float64) for k, v in self.columns.items()}


def _number(value):
    """A float for a numeric scalar (bool, int, float, 0-d array), else None."""
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        return float(value)
    if hasattr(value, "shape") and hasattr(value, "dtype") and value.shape == () and value.dtype.kind in "biuf":
        return float(B.to_host(value))
    return None


# ---------------------------------------------------------------- writer


class RunWriter:
    """Writes one run's results file (see the module docstring)::

        with RunWriter.create("runs/adam.h5", config) as run:
            run.log_step(step, info)                    # every step
            run.log_epoch(epoch, {"val_loss": ..})      # every evaluation
            run.checkpoint(theta, opt_state, epoch=e, step=s, wall_time=t)
            run.finish(theta, {"test_acc": ..})

    Nothing reaches the disk between flushes (``checkpoint``, ``flush``,
    ``finish`` and leaving the ``with`` block flush)."""

    def __init__(self, path, config, steps, epochs, status="running", created=None, probes=None):
        self.path = Path(path)
        self.config = config
        self.steps, self.epochs = steps, epochs
        self.probes = probes if probes is not None else _Series(STEP_INDEX)
        self.probe_batch = None  # the probe batch's indices (a list), when the run has probes
        self.status, self.message = status, ""
        self.created = created or _now()
        self.final_metrics = {}
        self._keep_final = True

    def discard_final(self) -> None:
        """Stop carrying the file's ``final`` group over (a finished run being extended)."""
        self._keep_final = False

    @classmethod
    def create(cls, path, config: dict, *, overwrite=False) -> "RunWriter":
        """Start a new results file (written at once, status "running").
        An existing ``path`` is an error unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"results: {path} already exists; resume it (RunWriter.resume), "
                                  f"choose another name, or pass overwrite=True")
        _config_json(config)  # fail early on a config that cannot be stored
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = cls(path, config, _Series(STEP_INDEX), _Series(EPOCH_INDEX))
        writer._write(fresh=True)
        return writer

    @classmethod
    def resume(cls, path, run=None) -> tuple["RunWriter", Checkpoint | None]:
        """Reopen a run: its config, its series up to the latest checkpoint and
        that checkpoint (``None`` if there is none: the series then start
        empty). A damaged file raises :class:`ResultsError` and is left alone.
        ``run``: the file's :func:`load_run`, if the caller has already read it."""
        run = load_run(path) if run is None else run
        checkpoint = load_checkpoint(path) if run.checkpoint_info is not None else None
        steps = _Series(STEP_INDEX, {k: v.tolist() for k, v in run.steps.items()})
        epochs = _Series(EPOCH_INDEX, {k: v.tolist() for k, v in run.epochs.items()})
        info = run.checkpoint_info or {"n_step_rows": 0, "n_epoch_rows": 0}
        probes = _Series(STEP_INDEX, {k: v.tolist() for k, v in run.probes.items()} or None)
        steps.truncate(info["n_step_rows"])
        epochs.truncate(info["n_epoch_rows"])
        probes.truncate(info.get("n_probe_rows", 0))
        writer = cls(path, run.config, steps, epochs, status="running", created=run.created, probes=probes)
        writer.steps.skipped = set(run.skipped_keys)
        writer.probe_batch = run.probe_batch
        return writer, checkpoint

    def log_step(self, step: int, info: dict) -> None:
        """One row of the per-step series (numeric values of ``info``)."""
        self.steps.append(step, info)

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        """One row of the per-epoch series."""
        self.epochs.append(epoch, metrics)

    def log_probes(self, step: int, values: dict) -> None:
        """One row of the probe series (:mod:`experiments.probes`)."""
        self.probes.append(step, values)

    def checkpoint(self, theta, opt_state: dict, *, epoch: int, step: int, wall_time=0.0, rng_state=None,
                   buffers=None, extra=None) -> None:
        """Replace the run's checkpoint (and flush the series), atomically.
        ``rng_state`` may be a NumPy Generator or any state tree."""
        if isinstance(rng_state, np.random.Generator):
            rng_state = generator_state(rng_state)
        ckpt = Checkpoint(theta, opt_state, int(epoch), int(step), float(wall_time), rng_state, buffers, extra or {})
        self._write(checkpoint=ckpt)

    def flush(self, status=None, message=None) -> None:
        """Write config, series, status (and carry over checkpoint and final)."""
        if status is not None:
            self.status = status
        if message is not None:
            self.message = message
        self._write()

    def finish(self, theta=None, metrics=None, *, buffers=None, status="finished") -> None:
        """Record the final parameters and metrics and mark the run ``status``."""
        self.status = status
        self.final_metrics = {k: _number(v) if _number(v) is not None else v for k, v in (metrics or {}).items()}
        self._write(final=(theta, buffers) if theta is not None else None)

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None:
            if self.status == "running":
                self.flush()
            return False
        if isinstance(err, WriteError):  # the disk refused a write: a second write would fail the same way
            return False
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        try:
            self.flush(status=status, message=f"{type(err).__name__}: {err}")
        except Exception as flush_err:  # the original error matters more
            print(f"results: could not record the {status} status in {self.path}: {flush_err}", file=sys.stderr)
        return False

    def __repr__(self):
        return (f"RunWriter({str(self.path)!r}, status={self.status!r}, {len(self.steps)} step rows, "
                f"{len(self.epochs)} epoch rows)")

    # ---- the one write path: a whole new file, then os.replace

    def _write(self, checkpoint=None, final=None, fresh=False):
        # the whole file is built in memory (HDF5 core driver, no backing store), so no HDF5 call ever
        # touches the disk; then its bytes go to a temp file: write, chmod, fsync, os.replace
        with h5py.File(f"{self.path.name}.{os.getpid()}.{id(self)}", "w", driver="core",
                       backing_store=False) as f:
            self._write_root(f)
            if checkpoint is not None:
                _write_checkpoint(f.create_group("checkpoint"), checkpoint, len(self.steps), len(self.epochs),
                                  len(self.probes))
            if final is not None:
                _write_final(f.create_group("final"), *final)
            if not fresh:
                _carry_over(self.path, f, [n for n, new in (("checkpoint", checkpoint), ("final", final))
                                           if new is None and (n != "final" or self._keep_final)])
            f.flush()
            image = f.id.get_file_image()
        write_atomically(self.path, image, crash_test=final is not None)

    def _write_root(self, f):
        f.attrs["format"] = FORMAT
        f.attrs["config"] = _config_json(self.config)
        f.attrs["status"] = self.status
        f.attrs["message"] = self.message
        f.attrs["created"] = self.created
        f.attrs["updated"] = _now()
        f.attrs["versions"] = json.dumps(_versions())
        f.attrs["final_metrics"] = json.dumps(self.final_metrics, default=_json_default)
        f.attrs["skipped_keys"] = json.dumps(sorted(self.steps.skipped | self.epochs.skipped))
        for name, series in (("steps", self.steps), ("epochs", self.epochs), ("probes", self.probes)):
            if name == "probes" and self.probe_batch is None and not len(series):
                continue
            group = f.create_group(name, track_order=name == "probes")  # probe columns keep their order
            for key, column in series.arrays().items():
                group.create_dataset(key, data=column, maxshape=(None,), chunks=(max(1024, min(len(column), 1 << 16)),))
            if name == "probes":
                group.attrs["batch_indices"] = json.dumps(self.probe_batch)
        f.attrs["digest"] = _digest(f, skip=("checkpoint", "final"))


def _write_checkpoint(group, ckpt: Checkpoint, n_step_rows, n_epoch_rows, n_probe_rows=0):
    group.attrs.update({"epoch": ckpt.epoch, "step": ckpt.step, "wall_time": ckpt.wall_time,
                        "n_step_rows": n_step_rows, "n_epoch_rows": n_epoch_rows, "n_probe_rows": n_probe_rows,
                        "written": _now()})
    group.create_dataset("theta", data=B.to_host(ckpt.theta))
    save_state(group.create_group("optimizer"), ckpt.opt_state)
    if ckpt.rng_state is not None:
        save_state(group.create_group("rng"), {"state": ckpt.rng_state})
    if ckpt.buffers is not None:
        save_state(group.create_group("buffers"), dict(ckpt.buffers))
    if ckpt.extra:
        save_state(group.create_group("extra"), dict(ckpt.extra))
    group.attrs["digest"] = _digest(group)


def _write_final(group, theta, buffers):
    group.create_dataset("theta", data=B.to_host(theta))
    if buffers is not None:
        save_state(group.create_group("buffers"), dict(buffers))
    group.attrs["digest"] = _digest(group)


def _carry_over(path: Path, f, names):
    if not names or not path.exists():
        return
    with _open(path) as old:
        for name in names:
            if name in old:
                old.copy(old[name], f, name)


# ---------------------------------------------------------------- readers


@dataclass
class Run:
    """A run as read back: config, series and final figures."""

    path: Path
    config: dict
    status: str
    message: str
    steps: dict
    epochs: dict
    final_metrics: dict
    checkpoint_info: dict | None
    created: str = ""
    updated: str = ""
    skipped_keys: list = field(default_factory=list)
    probes: dict = field(default_factory=dict)   # "step" and one column per probe value (may be empty)
    probe_batch: list | None = None              # the probe batch's indices in the training set

    def probe(self, name):
        """(steps (P,), values (P, k), labels) of one probe: its columns ``name`` and
        ``name:label`` (label "" for the plain ``name``), in the order first logged."""
        columns = [k for k in self.probes if k == name or k.startswith(name + ":")]
        if not columns:
            raise KeyError(f"{self.path}: no probe {name!r} (recorded: {sorted(self.probe_names)})")
        return (self.probes[STEP_INDEX], np.stack([self.probes[k] for k in columns], axis=1),
                [k.partition(":")[2] for k in columns])

    @property
    def probe_names(self) -> set:
        return {k.partition(":")[0] for k in self.probes if k != STEP_INDEX and not k.startswith("time:")}

    @property
    def label(self) -> str:
        """What a legend calls this run: config "label", else "name", else the file's stem."""
        return str(self.config.get("label") or self.config.get("name") or self.path.stem)

    def last(self, key, series="epochs"):
        """The last non-NaN value of a series column (None if there is none)."""
        column = getattr(self, series).get(key)
        if column is None:
            return None
        finite = column[~np.isnan(column)] if column.dtype.kind == "f" else column
        return finite[-1].item() if len(finite) else None

    def summary(self) -> dict:
        """``final_metrics`` over the last value of every epoch column."""
        out = {k: self.last(k) for k in self.epochs if k != EPOCH_INDEX}
        return {**{k: v for k, v in out.items() if v is not None}, **self.final_metrics}

    def __repr__(self):
        n = len(self.steps.get(STEP_INDEX, ()))
        m = len(self.epochs.get(EPOCH_INDEX, ()))
        return f"Run({self.label!r}, status={self.status!r}, {n} steps, {m} epochs, path={str(self.path)!r})"


def load_run(path) -> Run:
    """Config, series and final metrics of one results file (checks the digest)."""
    path = Path(path)
    with _open(path) as f:
        _check_digest(path, f, "/", skip=("checkpoint", "final"))
        try:
            steps = {k: v[()] for k, v in f["steps"].items()}
            epochs = {k: v[()] for k, v in f["epochs"].items()}
            probes, batch = {}, None
            if "probes" in f:
                probes = {k: v[()] for k, v in f["probes"].items()}
                batch = json.loads(f["probes"].attrs["batch_indices"])
            info = None
            if "checkpoint" in f:
                a = f["checkpoint"].attrs
                info = {k: a[k].item() for k in ("epoch", "step", "wall_time", "n_step_rows", "n_epoch_rows")}
                info["n_probe_rows"] = a["n_probe_rows"].item() if "n_probe_rows" in a else 0
            attrs = f.attrs
            return Run(path, json.loads(attrs["config"]), str(attrs["status"]), str(attrs["message"]), steps,
                       epochs, json.loads(attrs["final_metrics"]), info, str(attrs["created"]),
                       str(attrs["updated"]), json.loads(attrs["skipped_keys"]), probes, batch)
        except (KeyError, ValueError, OSError) as err:
            raise ResultsError(f"results: {path}: damaged or incomplete ({type(err).__name__}: {err}); "
                               f"it was left as it is") from err


def load_checkpoint(path) -> Checkpoint:
    """The run's latest checkpoint (checks its digest)."""
    path = Path(path)
    with _open(path) as f:
        if "checkpoint" not in f:
            raise ResultsError(f"results: {path} has no checkpoint")
        group = f["checkpoint"]
        _check_digest(path, group, "checkpoint")
        try:
            a = group.attrs
            return Checkpoint(
                theta=B.to_device(group["theta"][()]),
                opt_state=load_state(group["optimizer"]),
                epoch=int(a["epoch"]), step=int(a["step"]), wall_time=float(a["wall_time"]),
                rng_state=load_state(group["rng"])["state"] if "rng" in group else None,
                buffers=load_state(group["buffers"]) if "buffers" in group else None,
                extra=load_state(group["extra"]) if "extra" in group else {},
            )
        except (KeyError, ValueError, OSError) as err:
            raise ResultsError(f"results: {path}: damaged checkpoint ({type(err).__name__}: {err}); "
                               f"it was left as it is") from err


def load_final(path):
    """(theta, buffers or None) written by :meth:`RunWriter.finish`."""
    path = Path(path)
    with _open(path) as f:
        if "final" not in f:
            raise ResultsError(f"results: {path} has no final parameters (status {f.attrs.get('status')!r})")
        _check_digest(path, f["final"], "final")
        group = f["final"]
        buffers = load_state(group["buffers"]) if "buffers" in group else None
        return B.to_device(group["theta"][()]), buffers


def list_runs(directory) -> list[Path]:
    """The results files in ``directory`` (``*.h5``, temp files excluded), sorted."""
    return sorted(p for p in Path(directory).glob("*.h5") if not p.name.startswith("."))


class _open:
    """``h5py.File(path, "r")`` that turns "not HDF5 / truncated / not ours" into ResultsError."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        if not self.path.exists():
            raise FileNotFoundError(f"results: {self.path} does not exist")
        if self.path.is_dir():
            raise ResultsError(f"results: {self.path} is a folder, not a results file")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as err:
            raise ResultsError(f"results: {self.path} is not a readable HDF5 file ({err}); it is damaged and "
                               f"was left as it is: move it aside to run again under this name") from err
        found = self.file.attrs.get("format")
        if found != FORMAT:
            self.file.close()
            raise ResultsError(f"results: {self.path} is not a tinygrad2 results file "
                               f"(format attribute {found!r}, expected {FORMAT!r})")
        return self.file

    def __exit__(self, *exc):
        self.file.close()
        return False


def _check_digest(path, group, what, skip=()):
    try:
        expected = group.attrs.get("digest")
        actual = _digest(group, skip=skip)
    except (OSError, KeyError, ValueError) as err:
        raise ResultsError(f"results: {path}: {what} cannot be read ({type(err).__name__}: {err}); "
                           f"the file is damaged and was left as it is") from err
    if expected != actual:
        raise ResultsError(f"results: {path}: {what} is damaged (SHA-256 digest {actual} != recorded {expected}); "
                           f"the file was left as it is: move it aside to run again under this name")


# ---------------------------------------------------------------- the disk: temp file, fsync, os.replace

TEMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # what tempfile.mkstemp makes from our prefix/suffix
CRASH_ENV = "TINYGRAD2_TEST_CRASH_AT"  # tests only: mid_write | before_replace | after_replace (the finish write)
CRASH_POINTS = ("mid_write", "before_replace", "after_replace")
_PROCESS_START = time.time()  # when this process imported the module: temp files older than it are orphans


class WriteError(OSError):
    """A results file could not be written (disk full, read-only, ...); the previous file is intact.
    ``errno`` is the system's; ``reason`` its words ("No space left on device")."""

    def __init__(self, number, message, reason=""):
        super().__init__(number, message)
        self.reason = reason

    def __str__(self):
        return self.strerror


def write_atomically(path, data: bytes, *, crash_test=False) -> None:
    """Put ``data`` at ``path`` whole or not at all: a temp file ``.NAME.XXXXXXXX.tmp``
    beside it, written, given the umask's ordinary permissions, fsynced and
    ``os.replace``d onto ``path``. Any OSError on the way is a :class:`WriteError`
    naming ``path``; the temp file is removed and ``path`` is left as it was."""
    path = Path(path)
    crash = os.environ.get(CRASH_ENV) if crash_test else None
    tmp = None
    try:
        fd, tmp = _make_temp(path)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            if crash == "mid_write":
                _write_bytes(fd, data[: len(data) // 2])
                os.fsync(fd)
                os._exit(137)
            _write_bytes(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if crash == "before_replace":
            os._exit(137)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise WriteError(err.errno, f"could not write {path}: {err.strerror or err}; "
                                    f"the previous file (if any) is left as it was", err.strerror or str(err)) from err
    finally:
        if tmp is not None:
            with _quiet():
                os.unlink(tmp)
    _fsync_dir(path.parent)
    if crash == "after_replace":
        os._exit(137)


def _make_temp(path: Path):
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def _write_bytes(fd, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(folder) -> None:
    """Raise :class:`WriteError` unless a results file can be written into ``folder``
    (it makes and removes one temp file there)."""
    folder = Path(folder)
    try:
        fd, tmp = _make_temp(folder / "probe")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise WriteError(err.errno, f"cannot write into {folder}: {err.strerror or err}",
                         err.strerror or str(err)) from err


TEMP_GRACE_SECONDS = 60.0  # another file's temp file younger than this may be a write in flight


def clean_temp_files(folder, own=None) -> list[Path]:
    """Remove the temp files of killed writes in ``folder``: names of our pattern
    (``.NAME.XXXXXXXX.tmp``) last modified before this process started and, unless
    NAME is ``own`` (the results file this process is about to write, which no
    one else writes), at least ``TEMP_GRACE_SECONDS`` ago: in a sweep, another
    worker that started before this one may be between writing its temp file
    and renaming it. Returns them."""
    now = time.time()
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        if not TEMP_PATTERN.match(p.name):
            continue
        mine = own is not None and p.name.startswith(f".{own}.")
        try:
            mtime = p.stat(follow_symlinks=False).st_mtime
            if p.is_file() and not p.is_symlink() and mtime < _PROCESS_START and (
                    mine or mtime < now - TEMP_GRACE_SECONDS):
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


# ---------------------------------------------------------------- helpers


def _digest(group, skip=()) -> str:
    """SHA-256 over a group's attributes and datasets (recursively, in name order)."""
    h = hashlib.sha256()

    def walk(g, top):
        for key in sorted(g.attrs):
            if key != "digest":
                h.update(b"A" + key.encode() + b"\0" + _attr_bytes(g.attrs[key]))
        for key in sorted(g):
            if top and key in skip:
                continue
            node = g[key]
            h.update(b"N" + key.encode() + b"\0")
            if isinstance(node, h5py.Dataset):
                a = np.ascontiguousarray(node[()])
                h.update(f"{a.dtype.str}{a.shape}".encode() + a.tobytes())
            else:
                walk(node, False)

    walk(group, True)
    return h.hexdigest()


def _attr_bytes(value) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    a = np.asarray(value)
    return a.dtype.str.encode() + a.tobytes()


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (Path, os.PathLike)):
        return str(x)
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    raise TypeError(f"results: a config value of type {type(x).__name__} ({x!r:.80}) cannot be stored as JSON")


def _config_json(config) -> str:
    if not isinstance(config, dict):
        raise TypeError(f"results: config must be a dict, got {type(config).__name__}")
    return json.dumps(config, default=_json_default, sort_keys=True)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=1)
def _versions() -> dict:
    import platform

    try:
        from importlib.metadata import version
        tg = version("tinygrad2")
    except Exception:
        tg = "unknown"
    return {"python": platform.python_version(), "numpy": np.__version__, "h5py": h5py.__version__,
            "tinygrad2": tg, "backend": B.name}


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        return isinstance(err, OSError)


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
