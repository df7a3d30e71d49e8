"""What the catalog and the four paper modules share: the :class:`Experiment`
record, the one :func:`_spec` that builds a :class:`~experiments.runner.RunSpec`,
the choice of a scale, and the small helpers of the analyses (JSON output,
number formatting).

Nothing here imports :mod:`experiments.catalog`: the catalog imports this
package, never the other way round.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

import numpy as np  # host-side only: JSON conversion of the analyses' arrays

from ..runner import RunSpec

NORM_FLOOR = 1e-300  # the smallest denominator of a ratio of norms (a zero norm is not a division error)
MNIST_SIDE = 28      # MNIST images are 28 x 28
N_CLASSES = 10       # MNIST and CIFAR-10 both have ten classes
CIFAR10_TEST = 10000 # test images of CIFAR-10


@dataclasses.dataclass
class Experiment:
    name: str
    description: str
    specs: Callable[..., list]  # (epochs=None, seed=0, quick=False, methods=None, full=False) -> [RunSpec]
    columns: tuple = ("method", "lr", "train_loss", "test_acc", "seconds_per_epoch")
    reported: dict = dataclasses.field(default_factory=dict)  # method -> {column: paper's value}
    # printed after the table: a text, or (specs, scale) -> the text of this run (scale: "quick", "cpu" or "full"),
    # so that the footnotes follow the flags (--quick, --full, --epochs, --optimizers)
    notes: str | Callable[[list, str], str] = ""
    # spec -> None or on_epoch(epoch, theta, model, objective) -> {extra epoch series} (see runner.train)
    epoch_hook: Callable | None = None
    # (specs, paths, splits_of, out_dir) -> printable text: measurements made after the runs
    analysis: Callable | None = None


def base_method(method: str) -> str:
    """"SGD#2" -> "SGD": the method a repetition belongs to."""
    return method.split("#", 1)[0]


def _spec(experiment, method, optimizer, kwargs, *, model, data, epochs, batch_size, seed, dtype="float32"):
    """The one RunSpec builder of every experiment. The optimizer's kwargs and
    the data dict are copied, so a spec never shares them with a method table."""
    return RunSpec(experiment=experiment, method=method, model=model,
                   optimizer={"name": optimizer, "kwargs": dict(kwargs)}, data=dict(data), epochs=epochs,
                   batch_size=batch_size, seed=seed, dtype=dtype)


def scale_name(quick: bool, full: bool) -> str:
    """The scale a run asks for: "quick" (smoke test), "full" (the paper's) or "cpu" (the default)."""
    return "quick" if quick else "full" if full else "cpu"


SCALE_LABELS = {"quick": "--quick (a smoke test)", "cpu": "CPU default", "full": "--full (the paper's scale)"}


def scale_label(scale: str) -> str:
    """How the footnotes name a scale: "CPU default", "--quick (a smoke test)", "--full (the paper's scale)"."""
    return SCALE_LABELS[scale]


def plural(count: int, one: str, many: str | None = None) -> str:
    """"1 epoch", "3 epochs"; ``many`` for an irregular plural: plural(2, "batch", "batches")."""
    return f"{count:,} {one if count == 1 else many or one + 's'}"


def _pick(methods, wanted):
    """The methods to run: all, or those named (by base name) in ``wanted``."""
    return [m for m in methods if not wanted or m in wanted]


def _save_json(out, name, payload):
    path = Path(out) / f"{name}_analysis.json"
    path.write_text(json.dumps(payload, indent=1, default=_plain))
    return path


def _plain(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def _num(x, fmt=".4g"):
    return "-" if x is None else format(x, fmt)


def _finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


def prose(text: str) -> str:
    """A paragraph written across source lines, as one line (runs of whitespace become one space)."""
    return " ".join(text.split())
