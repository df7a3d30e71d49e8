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
  with exactly the results an uninterrupted run would have (wall times aside).

BatchNorm running statistics are updated once per step by an explicit extra
forward pass on the step's batch (``Module.update_running_stats``), because
optimizers evaluate the model many times per step (line searches, HVPs).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np

import nets
import optimizers
from tinygrad2 import Objective, backend as B, losses, no_grad

from . import data as datasets
from .results import RunWriter, load_run


@dataclasses.dataclass
class RunSpec:
    """Everything that defines a run. ``model`` and ``optimizer`` are
    ``{"name": class name in nets / optimizers, "kwargs": {...}}``; ``data``
    is ``{"name": data set, "reshape": sample shape or None, "normalize": bool,
    "subset": [n_train, n_val, n_test] or None, "pool": k (k x k average
    pooling of the images, e.g. 4: MNIST 28x28 -> 7x7) or None, "limit_batches":
    int or None, "verify": bool (checksums; default True)}``."""

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

    def config(self) -> dict:
        return dataclasses.asdict(self)

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


def train(spec: RunSpec, path, *, resume=False, data_dir=None, splits=None, progress=None, log=print,
          on_epoch=None):
    """Run ``spec`` and write its results to ``path`` (see the module
    docstring). Returns the loaded :class:`experiments.results.Run`.

    ``on_epoch(epoch, theta, model, objective)``, if given, is called at
    every evaluation (epoch 0 = the initial point, then after each epoch)
    with ``objective`` bound to the first batch of epoch 0; the numbers it
    returns (a dict) are logged in the epoch series beside the metrics."""
    path = Path(path)
    with B.precision(spec.dtype):
        splits = splits if splits is not None else load_splits(spec.data, data_dir, spec.seed)
        model = build_model(spec.model)
        opt = build_optimizer(spec.optimizer)
        train_set = splits.train
        X0, y0 = next(train_set.batches(spec.batch_size, seed=spec.seed, epoch=0))
        objective = Objective(model.apply, spec.loss, X0, y0, layout=model.layout())

        checkpoint = None
        if resume and path.exists():
            writer, checkpoint = RunWriter.resume(path)
            if load_run(path).status == "finished":
                log(f"{path}: already finished; nothing to resume")
                return load_run(path)
        else:
            writer = RunWriter.create(path, spec.config(), overwrite=not resume)
        if checkpoint is None:
            theta = model.init_theta(spec.seed, spec.dtype)
            state, epoch0, step, wall = opt.init(theta), 0, 0, 0.0
        else:
            theta, state = B.to_device(checkpoint.theta), checkpoint.opt_state
            epoch0, step, wall = checkpoint.epoch, checkpoint.step, checkpoint.wall_time
            if checkpoint.buffers:
                model.load_buffers(checkpoint.buffers)
            log(f"{path}: resuming after epoch {epoch0} (step {step})")

        has_buffers = bool(model.named_buffers())
        with writer:
            if epoch0 == 0:
                metrics = _metrics(model, theta, splits, spec.loss, math.nan, 0.0)
                if on_epoch is not None:
                    metrics.update(on_epoch(0, theta, model, objective) or {})
                writer.log_epoch(0, metrics)
            bar = _progress(progress, spec, train_set, epoch0)
            for epoch in range(epoch0, spec.epochs):
                losses, start = [], time.perf_counter()
                batches = train_set.batches(spec.batch_size, seed=spec.seed, epoch=epoch)
                limit = spec.data.get("limit_batches")
                for b, (X, y) in enumerate(batches):
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
                    theta, state = new_theta, new_state
                    if has_buffers:
                        model.update_running_stats(theta, X)
                    step += 1
                    losses.append(loss)
                    writer.log_step(step, {**info, "epoch": epoch + 1, "step_time": time.perf_counter() - t0})
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")
                epoch_time = time.perf_counter() - start
                wall += epoch_time
                metrics = _metrics(model, theta, splits, spec.loss, float(np.mean(losses)) if losses else math.nan,
                                   wall, epoch_time)
                state = opt.end_epoch(theta, state, metrics)
                if on_epoch is not None:
                    metrics.update(on_epoch(epoch + 1, theta, model, objective) or {})
                writer.log_epoch(epoch + 1, metrics)
                writer.checkpoint(theta, state, epoch=epoch + 1, step=step, wall_time=wall,
                                  buffers=model.named_buffers())
            if bar is not None:
                bar.close()
            final = dict(metrics, seconds_per_epoch=wall / max(spec.epochs, 1))
            writer.finish(theta, final, buffers=model.named_buffers())
    return load_run(path)


def _metrics(model, theta, splits, loss, train_loss, wall, epoch_time=math.nan):
    val_loss, val_acc = evaluate(model, theta, splits.val, loss)
    test_loss, test_acc = evaluate(model, theta, splits.test, loss)
    return {"train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss,
            "test_acc": test_acc, "wall_time": wall, "epoch_time": epoch_time}


def _progress(progress, spec, train_set, epoch0):
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    per_epoch = train_set.num_batches(spec.batch_size)
    limit = spec.data.get("limit_batches")
    if limit is not None:
        per_epoch = min(per_epoch, limit)
    return tqdm(total=per_epoch * (spec.epochs - epoch0), desc=spec.method, leave=False)
