"""Paper: Ying Sun, Hongwei Yong, Lei Zhang, "SGD with Partial Hessian for Deep
Neural Networks Optimization" (SGD-PH), arXiv:2403.02681, 2024; the authors'
code is public (the SGD-PH optimizer follows it, see ``optimizers/sgdph.py``).

Experiment ``sgdph-cifar10``: VGG11 with BN, without a norm and with WN on
CIFAR-10; SGD-PH with row sums (the paper) against the exact block diagonal
(ours), and the measured off-diagonal mass of the BN γ blocks of the Hessian
along training (the paper takes those blocks to be diagonal).
"""
from __future__ import annotations

import dataclasses

import numpy as np  # host-side only: the dense γ blocks and their summaries

from tinygrad2 import backend as B

from ..probes import dense_blocks, offdiag_ratio
from ..results import load_run
from .common import (CIFAR10_TEST, NORM_FLOOR, Experiment, _pick, _save_json, _spec, plural, prose, scale_label,
                     scale_name)

SGDPH = "sgdph-cifar10"
VGG_DEPTH = 11       # the paper's VGG11
OFFDIAG_CHUNK = 64   # HVP directions per pass in the off-diagonal measurement
OFFDIAG_BATCH = 32   # examples of the probe batch

_PH = {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.005, "hessian_momentum": 0.9, "eps": 1e-4,
       "second_order_lr": 1e-3}
_SGDM = {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.005}
# method -> (VGG norm, optimizer, kwargs)
SGDPH_METHODS = {
    "BN/SGD-momentum": ("bn", "SGD", _SGDM),
    "BN/Adam": ("bn", "Adam", {"lr": 1e-3, "weight_decay": 5e-4}),
    "BN/AdaHessian": ("bn", "AdaHessian", {"lr": 0.1, "weight_decay": 5e-4}),
    "BN/SGD-PH": ("bn", "SGDPH", dict(_PH, diag="row_sums")),
    "BN/SGD-PH-exact": ("bn", "SGDPH", dict(_PH, diag="exact")),  # ours: the true block diagonal
    "none/SGD-momentum": ("none", "SGD", _SGDM),
    "none/SGD-PH": ("none", "SGDPH", dict(_PH, diag="row_sums")),
    "WN/SGD-momentum": ("wn", "SGD", _SGDM),
    "WN/SGD-PH": ("wn", "SGDPH", dict(_PH, diag="row_sums")),
}
# We have none of this paper's numbers, so none are printed beside ours (add them here).
SGDPH_REPORTED: dict = {}


@dataclasses.dataclass(frozen=True)
class SgdphScale:
    """One size of the experiment."""
    width: float                     # channel multiplier of VGG11 (1: the paper's 64..512)
    subset: tuple                    # (train, validation, test) examples, stratified; None in it: all
    epochs: int
    batch_size: int
    batches_per_epoch: int | None    # None: all batches


SGDPH_SCALES = {
    "cpu": SgdphScale(width=0.125, subset=(2560, 1000, 2000), epochs=3, batch_size=64, batches_per_epoch=None),
    "full": SgdphScale(width=1.0, subset=(45000, 5000, None), epochs=200, batch_size=128, batches_per_epoch=None),
    "quick": SgdphScale(width=0.0625, subset=(64, 16, 32), epochs=1, batch_size=16, batches_per_epoch=2),
}
SGDPH_DESCRIPTION = prose("""
    'SGD with Partial Hessian': VGG11 with BN / no norm / WN on CIFAR-10; SGD-PH with row sums (the
    paper) vs the exact block diagonal, and the off-diagonal mass of the BN γ blocks
""")
SGDPH_COLUMNS = ("method", "hyper", "test_acc", "train_loss", "seconds_per_epoch")  # the columns of the paper's table
VGG_BASE_CHANNELS = (64, 512)   # the first and the last convolution's channels of VGG11 at width 1


def _sgdph_scale_text(scale, epochs):
    """Width, data, batch and length of one scale."""
    low, high = (int(c * scale.width) for c in VGG_BASE_CHANNELS)
    train, val, test = scale.subset
    limit = f" of {plural(scale.batches_per_epoch, 'batch', 'batches')}" if scale.batches_per_epoch else ""
    return (f"VGG11 at width {scale.width:g} (channels {low}..{high}), a stratified CIFAR-10 subset ({train:,} train, "
            f"{val:,} validation, {f'{test:,}' if test else f'all {CIFAR10_TEST:,}'} test), batch {scale.batch_size}, "
            f"{plural(epochs, 'epoch')}{limit}, no learning-rate schedule")


def sgdph_notes(specs, scale):
    """The footnotes of this run: its scale (as --quick / --full / --epochs made it), the other scales, and
    which rows are ours."""
    parts = [f"{scale_label(scale)}: {_sgdph_scale_text(SGDPH_SCALES[scale], specs[0].epochs)}."]
    if scale != "full":
        full = SGDPH_SCALES["full"]
        train, val, test = full.subset
        parts.append(f"--full: width {full.width:g}, {train:,} / {val:,} / {test or CIFAR10_TEST:,}, batch "
                     f"{full.batch_size}, {full.epochs} epochs.")
    parts.append("We have none of this paper's numbers, so no paper column is printed.")
    if any(s.method == "BN/SGD-PH-exact" for s in specs):
        parts.append("BN/SGD-PH-exact is ours: SGD-PH with the exact diagonal of each 1-D block (|g| HVPs per "
                     "visit) instead of the row sums H_gg·1.")
    return " ".join(parts)


def sgdph_specs(epochs=None, seed=0, quick=False, methods=None, full=False):
    scale = SGDPH_SCALES[scale_name(quick, full)]
    data = {"name": "cifar10", "normalize": True, "subset": list(scale.subset)}
    if scale.batches_per_epoch:
        data["limit_batches"] = scale.batches_per_epoch
    specs = []
    for m in _pick(SGDPH_METHODS, methods):
        norm, opt, kwargs = SGDPH_METHODS[m]
        model = {"name": "VGG", "kwargs": {"depth": VGG_DEPTH, "norm": norm, "width": scale.width}}
        specs.append(_spec(SGDPH, m, opt, kwargs, model=model, data=data,
                           epochs=epochs if epochs is not None else scale.epochs, batch_size=scale.batch_size,
                           seed=seed))
    return specs


# ---------------------------------------------------------------- the off-diagonal mass of the γ blocks


def block_summary(Hgg):
    """||offdiag||_F / ||diag||_F, ||H_gg·1 - diag|| / ||diag|| and the range of
    |row sum| / |diagonal| over the channels of one block."""
    diag = np.diag(Hgg).copy()
    rowsum = Hgg.sum(axis=1)
    dn = max(float(np.linalg.norm(diag)), NORM_FLOOR)
    ratio = np.abs(rowsum) / np.maximum(np.abs(diag), NORM_FLOOR)
    return {"offdiag_ratio": offdiag_ratio(Hgg),  # the offdiag_mass probe's quantity
            "rowsum_error": float(np.linalg.norm(rowsum - diag) / dn),
            "abs_ratio_min": float(ratio.min()), "abs_ratio_median": float(np.median(ratio)),
            "abs_ratio_max": float(ratio.max()), "size": len(diag)}


def bn_block_curvature(objective, theta, groups, chunk=OFFDIAG_CHUNK):
    """For each 1-D parameter group g: the dense block H_gg (from |g| HVPs with
    unit directions on g, batched across the groups in chunks), and from it
    ||offdiag||_F / ||diag||_F, the row sums H_gg·1 (what SGD-PH uses) against
    the diagonal, and the range of |row sum| / |diagonal| over the channels
    (SGD-PH's per-channel step relative to the exact-diagonal step is the
    inverse of that)."""
    return {name: block_summary(Hgg) for name, Hgg in dense_blocks(objective, theta, groups, chunk).items()}


def _is_rowsum_sgdph_on_bn(spec):
    return (spec.model["kwargs"].get("norm") == "bn" and spec.optimizer["name"] == "SGDPH"
            and spec.optimizer["kwargs"].get("diag", "row_sums") == "row_sums")


def block_metrics(blocks):
    """The epoch series logged from one measurement: per layer and summarized."""
    metrics = {f"offdiag:{name}": v["offdiag_ratio"] for name, v in blocks.items()}
    metrics.update({f"rowsum_err:{name}": v["rowsum_error"] for name, v in blocks.items()})
    ratios = [v["offdiag_ratio"] for v in blocks.values()]
    metrics.update(offdiag_mean=float(np.mean(ratios)), offdiag_max=float(np.max(ratios)),
                   rowsum_err_mean=float(np.mean([v["rowsum_error"] for v in blocks.values()])),
                   rowsum_ratio_min=float(min(v["abs_ratio_min"] for v in blocks.values())),
                   rowsum_ratio_max=float(max(v["abs_ratio_max"] for v in blocks.values())))
    return metrics


def sgdph_epoch_hook(spec):
    """For the SGD-PH run (row sums) on the BN network: the off-diagonal mass
    of every BN γ block along training (at initialization and after every
    epoch, on the first OFFDIAG_BATCH examples of the first training batch,
    always the same ones), logged in the run's epoch series."""
    if not _is_rowsum_sgdph_on_bn(spec):
        return None

    def hook(epoch, theta, model, objective):
        probe = objective.with_batch(objective.X[:OFFDIAG_BATCH], objective.y[:OFFDIAG_BATCH])
        return block_metrics(bn_block_curvature(probe, theta, probe.layout.groups(kind="scale", ndim=1)))

    return hook


def _layer_order(name):
    """features.12.weight -> 12: the BN layers in network order."""
    return int(name.split(".")[1]) if name.split(".")[1].isdigit() else 0


def offdiag_series(ep):
    """The logged off-diagonal measurements of one run, as lists per epoch."""
    layers = sorted((k.split(":", 1)[1] for k in ep if k.startswith("offdiag:")), key=_layer_order)
    return {"epoch": ep["epoch"].tolist(), "offdiag_mean": ep["offdiag_mean"].tolist(),
            "offdiag_max": ep["offdiag_max"].tolist(), "rowsum_err_mean": ep["rowsum_err_mean"].tolist(),
            "rowsum_ratio_min": ep["rowsum_ratio_min"].tolist(),
            "rowsum_ratio_max": ep["rowsum_ratio_max"].tolist(),
            "per_layer": {name: ep[f"offdiag:{name}"].tolist() for name in layers}}


def _offdiag_lines(method, entry):
    lines = [f"  {method}: epoch | offdiag mean | offdiag max | row-sum error mean | "
             f"|row sum|/|diag| range over channels"]
    for i, e in enumerate(entry["epoch"]):
        lines.append(f"    {int(e):>5} | {entry['offdiag_mean'][i]:12.3f} | {entry['offdiag_max'][i]:11.3f} | "
                     f"{entry['rowsum_err_mean'][i]:18.3f} | {entry['rowsum_ratio_min'][i]:.3g} .. "
                     f"{entry['rowsum_ratio_max'][i]:.3g}")
    lines.append("    per layer (init -> end): " + ", ".join(
        f"{name} {v[0]:.2f}->{v[-1]:.2f}" for name, v in entry["per_layer"].items()))
    return lines


def sgdph_analysis(specs, paths, splits_of, out):
    """The measured off-diagonal mass of the BN γ blocks along training."""
    lines = [f"Off-diagonal mass of the BN γ blocks of the Hessian (probe: {OFFDIAG_BATCH} training images; per block "
             "||H_gg - diag||_F / ||diag||_F, and ||H_gg·1 - diag|| / ||diag|| for the row sums SGD-PH uses):"]
    report = {}
    for s, p in zip(specs, paths):
        ep = load_run(p).epochs
        if "offdiag_mean" not in ep:
            continue
        report[s.method] = entry = offdiag_series(ep)
        lines += _offdiag_lines(s.method, entry)
    if report:
        lines.append("  (0 would mean the block is diagonal, as the paper claims; row sums equal the diagonal "
                     "only then)")
        lines.append(f"  saved: {_save_json(out, SGDPH, report)}")
    return "\n".join(lines)


EXPERIMENT = Experiment(SGDPH, SGDPH_DESCRIPTION, sgdph_specs, columns=SGDPH_COLUMNS, reported=SGDPH_REPORTED,
                        notes=sgdph_notes, epoch_hook=sgdph_epoch_hook, analysis=sgdph_analysis)
