"""Curvature-probe series as PNG: the second figure beside the learning curves.

``plot_probes(["runs/digits__SGD.h5", ...], "runs/digits-probes.png")`` draws
the probes the runs recorded (:mod:`experiments.probes`, ``Run.probes``) on
training steps; ``plot_probe_folder("runs", "digits")`` draws those of every
results file of one experiment in a folder (the files and the method order of
:func:`experiments.plots.plot_folder`) into ``runs/digits-probes.png``. When no
run has probes, nothing is written and both return None.

One panel per kind of probe recorded (Axes labels in brackets); panels
without data are left out:

* sharpness ["sharpness"]: λ_max of the Hessian on the probe batch
  (``lambda_max:0``, else ``sharpness_ratio`` / ``sharpness_ratio:lr``) per
  method, and for each method with a constant step length lr a dashed line in
  its colour at 2/lr, the edge of stability of gradient descent (Cohen et al.
  2021); lr is ``sharpness_ratio:lr`` when recorded, else the config's
  optimizer ``lr``;
* density ["density"]: for one method (the first with a ``density`` probe, or
  ``density_method``) the SLQ spectral density over training: x = probed
  step, y = eigenvalue bins shared by all steps (from the smallest to the
  largest node of the run), colour = the quadrature weight per bin (each
  column sums to 1) on a log scale. The bins are uniform on a symmetric-log
  axis, linear within ±``linthresh`` (1% of the largest |node|): a Hessian
  spectrum is a bulk near 0 and a few outliers, which linear bins would put
  into one or two rows;
* diag_error ["diag_error"]: the relative error of the optimizer's
  Hessian-diagonal estimate (solid) and, for AdaHessian, of the RMS average
  it divides by (``diag_error:rms``, dashed), for the methods that have it;
* grad_spectral_norm ["grad_spectral_norm"]: the gradient's largest singular
  value of the first weight tensor (solid) and the last (dashed) per method:
  the ResNet18 paper's Figure 7 (first conv, last linear layer).

Y axes go logarithmic when every value shown is positive and they span more
than :data:`LOG_DECADES` decades. Colours and markers are those of the
learning-curve figure (:func:`experiments.plots.method_styles` by the runs'
order), as are the title, the method legend and notes column, the size, the
PNG text chunks ("Title", "Description", "Methods" and "Panels": JSON lists)
and the atomic write.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np  # host-side only: the plotted series
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator
from matplotlib.transforms import blended_transform_factory

from experiments import plots
from experiments.plots import DPI, FONT_SIZE, MARKS_PER_CURVE, PLAIN, SIZE, plt
from experiments.results import STEP_INDEX, Run, load_run, write_atomically

PANELS = ("sharpness", "density", "diag_error", "newton_cosine", "grad_spectral_norm")
EDGE_REACH = 3.0  # a 2/lr line is drawn when it is at most this many times the method's largest λ_max
LOG_DECADES = 2.0        # a y axis spanning more decades than this (all values > 0) goes logarithmic
DENSITY_BINS = 60        # eigenvalue bins of the density heatmap
DENSITY_FLOOR = 1e-4     # the colour scale covers the largest bin mass down to this fraction of it
LINTHRESH_FRACTION = 1e-2  # the density's symlog axis is linear within ±(this x the largest |node|)


def probe_png(png) -> Path:
    """``runs/digits.png`` -> ``runs/digits-probes.png``: where the probe figure goes."""
    png = Path(png)
    return png.with_name(f"{png.stem}-probes.png")


def plot_probe_folder(folder, experiment, png=None, **options) -> Path | None:
    """The probe figure of ``experiment``'s results files in ``folder`` (the
    runs :func:`experiments.plots.plot_folder` draws) into ``png`` (default
    ``folder/EXPERIMENT-probes.png``); None, writing nothing, when no run has
    probes."""
    folder = Path(folder)
    runs, _ = plots.folder_runs(folder, experiment)  # unreadable files: already said by the learning curves
    return plot_probes(runs, png if png is not None else folder / f"{experiment}-probes.png", **options)


def has_probes(run) -> bool:
    return len(run.probes.get(STEP_INDEX, ())) > 0 and any(
        k != STEP_INDEX and not k.startswith("time:") for k in run.probes)


def plot_probes(runs, out_png, *, title=None, labels=None, density_method=None, size=SIZE, dpi=DPI,
                notes=()) -> Path | None:
    """Draw the probe figure of ``runs`` (results files or Run objects) into
    ``out_png`` and return its path; None, writing nothing, when no run has
    probes. ``labels``: legend names (default as the learning curves);
    ``density_method``: the method whose density heatmap is drawn."""
    runs = [r if isinstance(r, Run) else load_run(r) for r in runs]
    if not any(has_probes(r) for r in runs):
        return None
    out_png = Path(out_png)
    if out_png.is_dir():
        raise IsADirectoryError(f"plot: {out_png} is a folder; give a PNG file name such as "
                                f"{out_png / 'probes.png'}")
    fig = probe_curves(runs, title=title, labels=labels, density_method=density_method, size=size, dpi=dpi,
                       notes=notes)
    try:
        out_png.parent.mkdir(parents=True, exist_ok=True)
        image = io.BytesIO()
        fig.savefig(image, dpi=dpi, format="png", metadata=fig.png_text)
        write_atomically(out_png, image.getvalue())
    finally:
        plt.close(fig)
    return out_png


def probe_curves(runs, *, title=None, labels=None, density_method=None, size=SIZE, dpi=DPI, notes=()):
    """The figure :func:`plot_probes` saves (the caller closes it), or None
    when no run has probes. Panels are labelled as in the module docstring
    (``Axes.get_label``); method lines "NAME", their 2/lr lines "NAME (2/lr)",
    diag_error lines "NAME (estimate)" / "NAME (rms)", spectral norms
    "NAME (first)" / "NAME (last)"; the heatmap's mesh carries ``bin_edges``,
    ``steps`` and ``mass`` (bins x steps)."""
    runs = [r if isinstance(r, Run) else load_run(r) for r in runs]
    labels = list(labels) if labels is not None else [plots._name(r) for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"plot_probes: {len(labels)} labels for {len(runs)} runs")
    styles = plots.method_styles(len(runs))  # by position among all runs: the learning curves' colours
    shown = [i for i, r in enumerate(runs) if has_probes(r)]
    if not shown:
        return None
    notes = list(notes)
    density_at = _density_run(runs, labels, shown, density_method)
    present = [name for name, ok in (
        ("sharpness", any(_sharpness(runs[i]) is not None for i in shown)),
        ("density", density_at is not None),
        ("diag_error", any(_column(runs[i], "diag_error") is not None for i in shown)),
        ("newton_cosine", any(_column(runs[i], "newton_cosine:newton") is not None for i in shown)),
        ("grad_spectral_norm", any(_spectral_columns(runs[i]) for i in shown))) if ok]
    with plt.rc_context({"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE + 1, "axes.labelsize": FONT_SIZE,
                         "legend.fontsize": FONT_SIZE - 1, "xtick.labelsize": FONT_SIZE - 1,
                         "ytick.labelsize": FONT_SIZE - 1, "lines.linewidth": 1.8}):
        fig = plt.figure(figsize=size, dpi=dpi)
        try:
            head, details = plots._title([runs[i] for i in shown], title)
            head = f"{head}: curvature probes"
            batch = _batch_text([runs[i] for i in shown])
            if batch:
                details += f" · {batch}"
            width_in, height_in = size
            legend_frac = min(plots.LEGEND_WIDTH_IN / width_in, 0.4)
            extra = plots._wrap(details, width_in, FONT_SIZE).count("\n")  # lines the subtitle wraps onto
            top = 1 - min((1.05 + 0.2 * extra) / height_in, 0.3)
            if present[:1] == ["density"] and len(present) > 1:  # its colour bar goes right of it: right column
                present[:2] = present[1::-1]
            bar_in = 0.95 if "density" in present else 0.0  # density is alone or in the right column
            axes = _grid(fig, len(present), legend_frac + bar_in / width_in, top, width_in, height_in)
            for ax, name in zip(axes, present):
                ax.set_label(name)
                if name == "sharpness":
                    notes += _draw_sharpness(ax, runs, labels, styles, shown)
                elif name == "density":
                    notes += _draw_density(fig, ax, runs[density_at], labels[density_at])
                elif name == "diag_error":
                    notes += _draw_diag_error(ax, runs, labels, styles, shown)
                elif name == "newton_cosine":
                    _draw_newton_cosine(ax, runs, labels, styles, shown)
                else:
                    _draw_spectral_norms(ax, runs, labels, styles, shown)
            legend_runs = [runs[i] for i in shown]
            plots._legend_column(fig, legend_runs, [labels[i] for i in shown], [styles[i] for i in shown], notes,
                                 legend_frac, top)
            fig.suptitle(plots._wrap(head, width_in), fontsize=FONT_SIZE + 3, fontweight="bold", x=0.02,
                         y=1 - 0.12 / height_in, ha="left", va="top")
            fig.text(0.02, 1 - 0.48 / height_in, plots._wrap(details, width_in, FONT_SIZE), fontsize=FONT_SIZE,
                     ha="left", va="top")
            fig.png_text = {"Title": head, "Description": details, "Methods": json.dumps([labels[i] for i in shown]),
                            "Panels": json.dumps(present)}
        except BaseException:
            plt.close(fig)
            raise
    return fig


def _grid(fig, n, legend_frac, top, width_in, height_in):
    """n panels left of the legend column: one row for n <= 2, 2 x 2 for 3-4 (a third panel spans the
    bottom row), 2 x 3 for 5-6."""
    rows = 1 if n <= 2 else 2
    cols = 1 if n == 1 else 2 if n <= 4 else 3
    grid = fig.add_gridspec(rows, cols, left=min(0.85 / width_in, 0.2), right=1 - legend_frac,
                            bottom=min(0.6 / height_in, 0.2), top=top, wspace=0.3 * 12 / width_in,
                            hspace=0.38 * 8.5 / height_in)
    cells = [grid[r, c] for r in range(rows) for c in range(cols)]
    if n == 3:
        cells = cells[:2] + [grid[1, :]]
    return [fig.add_subplot(cell) for cell in cells[:n]]


# ---------------------------------------------------------------- series


def _column(run, key):
    """(steps, values) of one probe column where it is finite, or None."""
    if key not in run.probes:
        return None
    steps = np.asarray(run.probes[STEP_INDEX], dtype=float)
    values = np.asarray(run.probes[key], dtype=float)[: len(steps)]
    keep = np.isfinite(values)
    return (steps[: len(values)][keep], values[keep]) if keep.any() else None


def _sharpness(run):
    """(steps, λ_max) from lambda_max:0, else sharpness_ratio / its lr; None without either."""
    top = _column(run, "lambda_max:0")
    if top is not None:
        return top
    ratio, lr = _column(run, "sharpness_ratio"), _column(run, "sharpness_ratio:lr")
    if ratio is None or lr is None:
        return None
    common, i, j = np.intersect1d(ratio[0], lr[0], return_indices=True)
    lrs = lr[1][j]
    keep = lrs > 0
    return (common[keep], ratio[1][i][keep] / lrs[keep]) if keep.any() else None


def _constant_lr(run):
    """(lr, None) for a constant step length; (None, why not) otherwise."""
    recorded = _column(run, "sharpness_ratio:lr")
    if recorded is not None:
        values = recorded[1]
        if np.allclose(values, values[0], rtol=1e-6, atol=0) and values[0] > 0:
            return float(values[0]), None
        return None, f"lr varies ({values.min():.3g} to {values.max():.3g})"
    lr = ((run.config.get("optimizer") or {}).get("kwargs") or {}).get("lr") \
        if isinstance(run.config.get("optimizer"), dict) else None
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0:
        return float(lr), None
    return None, "no constant lr"


def _momentum(run):
    """The heavy-ball momentum β of a plain SGD run (0 otherwise)."""
    opt = run.config.get("optimizer") if isinstance(run.config.get("optimizer"), dict) else {}
    kwargs = opt.get("kwargs") or {}
    if opt.get("name") != "SGD" or kwargs.get("nesterov") or kwargs.get("dampening"):
        return 0.0
    beta = kwargs.get("momentum", 0.0)
    return float(beta) if isinstance(beta, (int, float)) else 0.0


def _density(run):
    """(steps (P,), nodes (P, m), weights (P, m)) of the rows with a density snapshot, or None."""
    nodes = sorted((k for k in run.probes if k.startswith("density:node")), key=lambda k: int(k[12:]))
    weights = [f"density:weight{k[12:]}" for k in nodes]
    if not nodes or any(w not in run.probes for w in weights):
        return None
    steps = np.asarray(run.probes[STEP_INDEX], dtype=float)
    N = np.stack([np.asarray(run.probes[k], dtype=float) for k in nodes], axis=1)
    W = np.stack([np.asarray(run.probes[k], dtype=float) for k in weights], axis=1)
    keep = np.isfinite(N).all(axis=1) & np.isfinite(W).all(axis=1)
    return (steps[keep], N[keep], W[keep]) if keep.any() else None


def _density_run(runs, labels, shown, method):
    """The index of the run whose density is drawn: the named method's, else the first with one."""
    having = [i for i in shown if _density(runs[i]) is not None]
    if method is not None:
        named = [i for i in range(len(runs)) if labels[i] == method or runs[i].config.get("method") == method]
        if not named:
            raise ValueError(f"plot: no run of method {method!r} (methods: {', '.join(labels)})")
        if named[0] not in having:
            raise ValueError(f"plot: {method} has no density probe "
                             f"(methods with one: {', '.join(labels[i] for i in having) or 'none'})")
        return named[0]
    return having[0] if having else None


def _spectral_columns(run):
    """The grad_spectral_norm columns of the first and last weight tensors (one if there is one)."""
    columns = [k for k in run.probes if k.startswith("grad_spectral_norm:") and _column(run, k) is not None]
    return columns[:1] + columns[-1:] if len(columns) > 1 else columns


def _batch_text(runs):
    """"probe batch 256 examples, every 5 steps" from the runs' probe batches and configs."""
    sizes = plots._distinct(len(r.probe_batch) if r.probe_batch else None for r in runs)
    every = plots._distinct((r.config.get("probes") or {}).get("every") if isinstance(r.config.get("probes"), dict)
                            else None for r in runs)
    parts = (["probe batch " + "/".join(map(str, sizes)) + " examples"] if sizes else []) + \
        (["every " + "/".join(map(str, every)) + " steps"] if every else [])
    return ", ".join(parts) or None


# ---------------------------------------------------------------- panels


def _line(ax, i, steps, values, style, label, linestyle="-"):
    colour, marker = style
    every = max(1, math.ceil(len(values) / MARKS_PER_CURVE))
    ax.plot(steps, values, linestyle=linestyle, color=colour, marker=marker, markevery=(i % every, every),
            markersize=6, markerfacecolor=colour if linestyle == "-" else "white", markeredgecolor=colour,
            label=label)


def _y_axis(ax, values):
    """Log scale when all values are positive and span more than LOG_DECADES decades."""
    values = np.asarray([v for v in values if np.isfinite(v)])
    if values.size and values.min() > 0 and math.log10(values.max() / values.min()) > LOG_DECADES:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(PLAIN)


def _finish(ax, ylabel, keys=()):
    ax.set_xlabel("training step (probed)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if keys:
        ax.legend(handles=[Line2D([], [], color="0.3", linestyle=s, label=t) for s, t in keys], loc="best",
                  handlelength=2.6, framealpha=0.9)


def _draw_sharpness(ax, runs, labels, styles, shown):
    notes, values, edges, guides = [], [], {}, []
    for i in shown:
        series = _sharpness(runs[i])
        if series is None:
            continue
        _line(ax, i, *series, styles[i], labels[i])
        values.extend(series[1])
        lr, why = _constant_lr(runs[i])
        if lr is None:
            notes.append(f"{labels[i]}: {why}, no 2/lr line")
            continue
        if 2 / lr > EDGE_REACH * max(series[1].max(), 0):  # far above the curve: a line there flattens it
            notes.append(f"{labels[i]}: 2/lr = {2 / lr:.3g}, over {EDGE_REACH:g}x its largest \u03bb_max: not drawn")
            continue
        edges.setdefault(round(2 / lr, 12), []).append(i)
        values.append(2 / lr)
        beta = _momentum(runs[i])
        if beta > 0:
            notes.append(f"{labels[i]}: with momentum {beta:g} the edge of heavy-ball GD is "
                         f"(2+2\u03b2)/lr = {(2 + 2 * beta) / lr:.3g}, not drawn")
        elif (runs[i].config.get("optimizer") or {}).get("name") != "SGD":
            guides.append(labels[i])
    for edge, group in edges.items():  # methods sharing an edge share its line: their dashes interleave
        k = len(group)
        for j, i in enumerate(group):
            ax.axhline(edge, color=styles[i][0], linewidth=1.4, label=f"{labels[i]} (2/lr)",
                       linestyle="--" if k == 1 else (4.0 * j, (4.0, 4.0 * (k - 1))))
        ax.text(0.01, edge, f" 2/lr = {edge:.3g}", transform=blended_transform_factory(ax.transAxes, ax.transData),
                color="0.25", fontsize=FONT_SIZE - 2, ha="left", va="bottom")
    _y_axis(ax, values)
    if edges:
        ax.set_ylim(top=ax.get_ylim()[1] * (1.5 if ax.get_yscale() == "log" else 1.06))  # room for the labels
    ax.set_title("sharpness \u03bb_max(H) on the probe batch")
    _finish(ax, "\u03bb_max (top Hessian eigenvalue)",
            [("-", "\u03bb_max"), ("--", "2/lr (edge of stability)")] if edges else [("-", "\u03bb_max")])
    if edges:
        notes.insert(0, "dashed: 2/lr, the edge of stability of gradient descent (Cohen et al. 2021)")
    if guides:
        notes.append(f"{', '.join(guides)}: preconditioned, so 2/lr bounds the preconditioned "
                     f"Hessian's \u03bb_max, not H's: a guide only")
    return notes


def _draw_density(fig, ax, run, label):
    steps, nodes, weights = _density(run)
    low, high = float(nodes.min()), float(nodes.max())
    linthresh = max(LINTHRESH_FRACTION * max(abs(low), abs(high)), 1e-12)
    edges = _symlog_edges(low, high, linthresh, DENSITY_BINS)
    mass = np.stack([np.histogram(n, bins=edges, weights=w)[0] for n, w in zip(nodes, weights)], axis=1)
    x_edges = _step_edges(steps)
    top = float(mass.max()) if mass.size and mass.max() > 0 else 1.0
    shown = np.ma.masked_less_equal(mass, 0)
    mesh = ax.pcolormesh(x_edges, edges, shown, cmap="viridis", norm=LogNorm(vmin=top * DENSITY_FLOOR, vmax=top),
                         shading="flat")
    mesh.bin_edges, mesh.steps, mesh.mass = edges, steps, mass
    ax.set_yscale("symlog", linthresh=linthresh, linscale=0.5)
    ax.set_ylim(edges[0], edges[-1])
    ax.set_xlim(x_edges[0], x_edges[-1])
    ax.set_facecolor("white")
    ax.yaxis.set_major_locator(FixedLocator(_symlog_ticks(edges[0], edges[-1], linthresh)))
    ax.yaxis.set_major_formatter(PLAIN)
    bar = fig.colorbar(mesh, cax=ax.inset_axes([1.03, 0.0, 0.035, 1.0]))
    bar.set_label("weight per bin")
    ax.set_title(f"Hessian spectral density (SLQ) of {label}")
    _finish(ax, f"eigenvalue (symlog, linear within \u00b1{linthresh:.2g})")
    return [f"density: {label}'s SLQ weights in {DENSITY_BINS} bins from {low:.3g} to {high:.3g}; "
            f"white: no weight"]


def _symlog_edges(low, high, linthresh, n):
    """n + 1 bin edges from low to high, uniform in asinh(x / (2 linthresh)) (a symmetric log)."""
    if high <= low:
        pad = max(abs(low) * 1e-3, linthresh)
        low, high = low - pad, high + pad
    scale = 2 * linthresh
    edges = np.sinh(np.linspace(np.arcsinh(low / scale), np.arcsinh(high / scale), n + 1)) * scale
    edges[0], edges[-1] = low, high  # exact: every node inside, the last one in the closed last bin
    return edges


def _symlog_ticks(low, high, linthresh):
    """0 and the powers of 10 at or beyond linthresh (either sign) within [low, high]."""
    ticks = [0.0] if low <= 0 <= high else []
    for sign, end in ((1, high), (-1, -low)):
        if end <= 0:
            continue
        first = math.ceil(math.log10(linthresh))
        ticks += [sign * 10.0 ** e for e in range(first, math.floor(math.log10(end)) + 1)]
    return sorted(ticks)


def _step_edges(steps):
    """Cell edges around the probed steps (halfway between neighbours)."""
    steps = np.asarray(steps, dtype=float)
    if len(steps) == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]])


def _draw_diag_error(ax, runs, labels, styles, shown):
    values, keys = [], [("-", "estimate")]
    for i in shown:
        series = _column(runs[i], "diag_error")
        if series is None:
            continue
        _line(ax, i, *series, styles[i], f"{labels[i]} (estimate)")
        values.extend(series[1])
        rms = _column(runs[i], "diag_error:rms")
        if rms is not None:
            _line(ax, i, *rms, styles[i], f"{labels[i]} (rms)", linestyle="--")
            values.extend(rms[1])
            if len(keys) == 1:
                keys.append(("--", "RMS average (AdaHessian's divisor)"))
    _y_axis(ax, values)
    ax.set_title("Hessian-diagonal estimate error")
    _finish(ax, "relative error ||d \u2212 |diag H| || / ||diag H||", keys)
    return []


def _draw_newton_cosine(ax, runs, labels, styles, shown):
    keys = []
    for i in shown:
        for column, linestyle, key in (("newton_cosine:newton", "-", "damped Newton step"),
                                       ("newton_cosine:gauss_newton", "--", "Gauss-Newton step")):
            series = _column(runs[i], column)
            if series is None:
                continue
            _line(ax, i, *series, styles[i], f"{labels[i]} ({key})", linestyle)
            if (linestyle, key) not in keys:
                keys.append((linestyle, key))
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_title("cosine of the step to the exact step at its start")
    _finish(ax, "cos \u2220(\u03b8\u209c \u2212 \u03b8\u209c\u208b\u2081, d)", keys)


def _draw_spectral_norms(ax, runs, labels, styles, shown):
    values, names = [], {"first": set(), "last": set()}
    for i in shown:
        columns = _spectral_columns(runs[i])
        for column, which, linestyle in zip(columns, ("first", "last"), ("-", "--")):
            steps, y = _column(runs[i], column)
            _line(ax, i, steps, y, styles[i], f"{labels[i]} ({which})", linestyle)
            values.extend(y)
            names[which].add(column.partition(":")[2])
    _y_axis(ax, values)
    ax.set_title("gradient spectral norm per layer")
    keys = [(s, f"{which} layer" + (f" ({next(iter(names[which]))})" if len(names[which]) == 1 else ""))
            for which, s in (("first", "-"), ("last", "--")) if names[which]]
    _finish(ax, "largest singular value of the gradient", keys)
