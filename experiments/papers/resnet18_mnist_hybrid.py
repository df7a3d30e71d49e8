"""Paper: "Discussion on the viability of a modern second order method".
Bibliographic details (authors, venue, year) are not known to this project:
it has the title and the setup as the reproduction brief quotes them.
The paper's runs: PyTorch on a K80.

Experiment ``resnet18-mnist-hybrid``: ResNet18 on 2% of MNIST (1,200 / 200 /
200), 15 epochs, batch 100, mean ± std over repetitions, with the paper's
hybrid that trains with SGD-momentum until the validation loss falls below a
threshold and then switches to AdaHessian; the analysis reports when it
switched.
"""
from __future__ import annotations

import dataclasses

import numpy as np  # host-side only: the logged switch epochs

from ..results import load_run
from ..runner import build_model
from .common import (MNIST_SIDE, N_CLASSES, Experiment, _pick, _save_json, _spec, base_method, plural, prose,
                     scale_label, scale_name)

RESNET = "resnet18-mnist-hybrid"
RESNET_BATCH = 100   # the paper's batch size
# the paper's Figure 7: the gradient's spectral norm of the first conv and the last linear layer along training,
# measured by the grad_spectral_norm probe once per epoch (1,200 / 100 = 12 steps) on 200 training images
FIGURE7_PROBES = {"names": ["grad_spectral_norm"], "every": 12, "batch": 200}
FIGURE7_LAYERS = ("conv1.weight", "fc.weight")

RESNET_METHODS = {
    "SGD": ("SGD", {"lr": 0.01}),
    "SGD-momentum": ("SGD", {"lr": 0.005, "momentum": 0.9}),
    "Adam": ("Adam", {"lr": 0.001}),
    "AdaHessian": ("AdaHessian", {"lr": 0.1}),
    "Hybrid": ("Hybrid", {"threshold": 1.0, "sgd_lr": 0.005, "sgd_momentum": 0.9, "ada_lr": 0.001}),
}
RESNET_REPORTED = {  # test accuracy mean ± std over 10 repetitions; training time in seconds
    "SGD": {"test_acc": (0.8745, 0.0142), "wall_time": 14.57},
    "SGD-momentum": {"test_acc": (0.935, 0.0135), "wall_time": 13.79},
    "Adam": {"test_acc": (0.9335, 0.0351), "wall_time": 11.30},
    "AdaHessian": {"test_acc": (0.93, 0.0228), "wall_time": 14.26},
    "Hybrid": {"test_acc": (0.942, 0.0079), "wall_time": 17.43},
}


@dataclasses.dataclass(frozen=True)
class ResnetScale:
    """One size of the experiment."""
    width: float                     # channel multiplier of ResNet18 (1: the paper's 64-128-256-512)
    repetitions: int                 # runs per method, seeds seed .. seed + repetitions - 1
    epochs: int
    batches_per_epoch: int | None    # None: all batches


RESNET_SCALES = {
    "cpu": ResnetScale(width=0.25, repetitions=3, epochs=15, batches_per_epoch=None),
    "full": ResnetScale(width=1.0, repetitions=10, epochs=15, batches_per_epoch=None),
    "quick": ResnetScale(width=0.0625, repetitions=2, epochs=1, batches_per_epoch=2),
}
RESNET_DESCRIPTION = prose("""
    'Discussion on the viability of a modern second order method': ResNet18 on 2% MNIST (1,200 / 200 /
    200), mean ± std over repetitions (the paper: 15 epochs, batch 100, 10 repetitions)
""")
RESNET_COLUMNS = ("method", "hyper", "test_acc", "test_loss", "wall_time")  # the columns of the paper's table
RESNET_PAPER_PARAMETERS = 11_175_370   # ResNet18 at width 1 with our stem and ten classes
RESNET_BASE_CHANNELS = (64, 128, 256, 512)


def resnet_notes(specs, scale):
    """The footnotes of this run: its width, length and repetitions (as --quick / --full / --epochs made
    them), the other scales, and what wall_time measures."""
    spec = specs[0]
    width = spec.model["kwargs"]["width"]
    channels = "-".join(str(int(c * width)) for c in RESNET_BASE_CHANNELS)
    n = build_model(spec.model).num_parameters()
    reps = len({s.seed for s in specs})
    paper = "" if width == 1 else f"; the paper's width 1 has {RESNET_PAPER_PARAMETERS:,}"
    limit = spec.data.get("limit_batches")
    length = plural(spec.epochs, "epoch") + (f" of {plural(limit, 'batch', 'batches')}" if limit else "")
    parts = [f"{scale_label(scale)}: ResNet18 at width {width:g} (channels {channels}, {n:,} parameters{paper}), "
             f"batch {spec.batch_size}, {length}, {plural(reps, 'repetition')} per method (the paper: 10)."]
    if scale != "full":
        full = RESNET_SCALES["full"]
        parts.append(f"--full: width {full.width:g}, {full.repetitions} repetitions, {full.epochs} epochs.")
    parts.append("wall_time: our seconds of training per run (paper: K80 GPU).")
    parts.append(f"The repetitions in parallel, with 95% intervals and paired tests: python -m experiments sweep "
                 f"{RESNET} --seeds 0-{reps - 1}{' --full' if scale == 'full' else ''}.")
    return " ".join(parts)


def resnet_specs(epochs=None, seed=0, quick=False, methods=None, full=False):
    scale = RESNET_SCALES[scale_name(quick, full)]
    model = {"name": "ResNet18", "kwargs": {"in_channels": 1, "num_classes": N_CLASSES, "stem": "imagenet",
                                            "width": scale.width}}
    data = {"name": "mnist-2pct", "reshape": [1, MNIST_SIDE, MNIST_SIDE], "normalize": True}
    if scale.batches_per_epoch:
        data["limit_batches"] = scale.batches_per_epoch
    specs = []
    for m in _pick(RESNET_METHODS, methods):
        for r in range(scale.repetitions):
            spec = _spec(RESNET, f"{m}#{r + 1}", *RESNET_METHODS[m], model=model, data=data,
                         epochs=epochs if epochs is not None else scale.epochs, batch_size=RESNET_BATCH,
                         seed=seed + r)
            spec.probes = dict(FIGURE7_PROBES, every=1) if quick else dict(FIGURE7_PROBES)
            specs.append(spec)
    return specs


def hybrid_switch_epochs(specs, paths):
    """{Hybrid run: the epoch after which it switched to AdaHessian, or None}."""
    switches = {}
    for s, p in zip(specs, paths):
        if s.optimizer["name"] != "Hybrid":
            continue
        col = load_run(p).steps.get("switch_epoch", np.array([]))
        col = col[np.isfinite(col)]
        switches[s.method] = int(col[0]) if len(col) else None
    return switches


def _setup_line(specs, width, n):
    reps = len({s.seed for s in specs})
    return (f"ResNet18 at width {width:g}: {n:,} parameters (the paper's width 1: 11,175,370); "
            f"{reps} repetition(s) per method (seeds {specs[0].seed}..{specs[0].seed + reps - 1}: initialization "
            f"and batch order; the 2% split is the fixed seed-0 split); ± is the sample std.")


def resnet_analysis(specs, paths, splits_of, out):
    """When the Hybrid switched (epoch whose validation loss fell below t_l), and Figure 7."""
    width = specs[0].model["kwargs"]["width"]
    n = build_model(specs[0].model).num_parameters()
    lines = [_setup_line(specs, width, n)]
    switches = hybrid_switch_epochs(specs, paths)
    if switches:
        threshold = RESNET_METHODS["Hybrid"][1]["threshold"]
        lines.append(f"  Hybrid switch to AdaHessian (validation loss < t_l = {threshold}) after epoch: "
                     + ", ".join(f"{k}: {'never' if v is None else v}" for k, v in switches.items()))
        lines.append(f"  saved: {_save_json(out, RESNET, {'switch_epoch': switches, 'width': width, 'n': n})}")
    lines += figure7_lines(specs, paths)
    return "\n".join(lines)


def figure7_lines(specs, paths):
    """The paper's Figure 7 in numbers: per method (mean over its repetitions), the gradient's spectral
    norm of the first conv and the last linear layer at the start, its peak and at the end (the probe
    figure draws the curves)."""
    series = {}
    for spec, path in zip(specs, paths):
        run = load_run(path)
        for layer in FIGURE7_LAYERS:
            column = run.probes.get(f"grad_spectral_norm:{layer}")
            if column is not None and len(column):
                series.setdefault((base_method(spec.method), layer), []).append(column)
    if not series:
        return []
    every = specs[0].probes["every"] if specs[0].probes else FIGURE7_PROBES["every"]
    lines = [f"  Figure 7 (gradient spectral norm on a probe batch of {FIGURE7_PROBES['batch']} training images, "
             f"every {plural(every, 'step')}; start / peak / end, mean over repetitions):"]
    for method in dict.fromkeys(base_method(s.method) for s in specs):
        parts = []
        for layer in FIGURE7_LAYERS:
            runs = series.get((method, layer))
            if runs:
                n = min(len(c) for c in runs)
                mean = np.mean([c[:n] for c in runs], axis=0)
                parts.append(f"{layer} {mean[0]:.3g} / {mean.max():.3g} / {mean[-1]:.3g}")
        if parts:
            lines.append(f"    {method}: " + "; ".join(parts))
    return lines


EXPERIMENT = Experiment(RESNET, RESNET_DESCRIPTION, resnet_specs, columns=RESNET_COLUMNS, reported=RESNET_REPORTED,
                        notes=resnet_notes, analysis=resnet_analysis)
