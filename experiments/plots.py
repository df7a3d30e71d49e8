"""Learning curves as PNG, like the papers' figures.

``plot_runs(["runs/sgd.h5", "runs/adahessian.h5"], "curves.png")`` draws one
figure from results files (or :class:`~experiments.results.Run` objects):
loss and accuracy against epochs (top) and against wall-clock time (bottom),
with the method legend and the notes in a column on the right.
``plot_folder("runs", "digits")`` draws every results file of one experiment
in a folder (the first repetition of a repeated method) into
``runs/digits.png``: the figure the CLI writes and the docs show.

What the figure promises a reader:

* a title: the experiment, then the data, the model, the epochs (per-method
  exceptions named), the seeds and the number of methods, all read from the
  runs' recorded config;
* one colour *and* one marker per method (:data:`PALETTE`, :data:`MARKERS`:
  12 hues chosen for their distance from each other on white, a marker every
  few points, offset per method), so methods stay apart in print and for
  colour-blind readers; a run that did not finish says so in the legend
  ("diverged", "interrupted", ...);
* one line-style key per panel, apart from the method legend: loss panels
  draw training loss solid and validation loss dashed; accuracy panels draw
  test accuracy solid and validation accuracy dashed;
* losses on a log axis (when all are positive), clipped at
  :data:`CLIP_FACTOR` x the median first finite loss of the runs: a value above the
  clip is drawn at the clip with an arrow marker, so one diverging run (a loss
  of 1e32) does not flatten the others, and the notes name it and its largest
  value; a NaN or infinite value is marked ("NaN", "inf") at the top of its
  panel, never silently dropped (the training loss at epoch 0 is NaN by
  design: nothing has been trained yet, so it is not drawn);
* wall-clock axes on a symmetric log scale (linear near 0, so the initial
  point at t = 0 stays) when the slowest run took more than
  :data:`SLOW_RATIO` x the time of the fastest, with a note saying so;
* a size (12 x 8.5 in at 100 dpi: 1200 x 850 px) and fonts chosen to be read
  at the saved size.

The PNG also carries text chunks "Title", "Description" and "Methods" (a
JSON list of the legend's names). It is written atomically (a temp file in
the same folder, the umask's permissions, fsync, rename:
:func:`experiments.results.write_atomically`). Matplotlib runs on its Agg
backend, selected before pyplot is imported, so no display is needed.
"""
from __future__ import annotations

import io
import json
import math
import sys
import textwrap
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402  (host-side only: the plotted series)
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from experiments.results import EPOCH_INDEX, ResultsError, Run, list_runs, load_run, write_atomically  # noqa: E402

# (column, line style, split): the headline series solid, validation dashed
LOSS_LINES = (("train_loss", "-", "train"), ("val_loss", "--", "validation"))
ACC_LINES = (("test_acc", "-", "test"), ("val_acc", "--", "validation"))
TIME_KEY = "wall_time"

# 15 hues for lines on white, ordered so that neighbours in a method table differ most (any two at least
# 0.33 apart in RGB)
PALETTE = ("#1f5fd1", "#f0801a", "#1e9e3a", "#d81e3c", "#8a2cc2", "#8a8a00",
           "#2bc3e8", "#e33fc8", "#222222", "#8fd14f", "#7a0f1e", "#8f8f8f",
           "#ff9db0", "#004080", "#4b0082")
MARKERS = ("o", "s", "^", "D", "v", "P", "*", "<", ">", "X", "h", "p", "8", "H", "d")
CLIP_MARKER = r"$\uparrow$"  # a value above the clip, drawn at the clip
CLIP_FACTOR = 10.0           # losses above CLIP_FACTOR x the median first finite loss are clipped
SLOW_RATIO = 10.0            # wall-clock axes go symlog when the slowest run took this many times the fastest
MARKS_PER_CURVE = 6          # about this many method markers on a curve
SIZE, DPI, FONT_SIZE = (12.0, 8.5), 100, 11.0
LEGEND_WIDTH_IN = 2.9        # the right column: method legend and notes
NOTES_MAX = 6                # notes shown; the rest are counted
PLAIN = FuncFormatter(lambda v, _: f"{v:g}")  # tick labels 0.1, 1, 10, 1e+32: no 10^x, no "1e-01"


def method_styles(n: int) -> list[tuple[str, str]]:
    """(colour, marker) of the first ``n`` methods; all pairs distinct for
    n <= 225 (past 15 the markers shift against the colours)."""
    k = len(PALETTE)
    return [(PALETTE[i % k], MARKERS[(i + i // k) % len(MARKERS)]) for i in range(n)]


def plot_folder(folder, experiment, png=None, **options) -> Path:
    """Draw every results file of ``experiment`` in ``folder`` (one curve per
    method: a repeated method's first repetition) into ``png`` (default
    ``folder/EXPERIMENT.png``) and return its path. Files of other experiments
    are left out; a file that cannot be read is left out with a note on the
    figure and a line on stderr. ``options`` go to :func:`plot_runs`."""
    folder = Path(folder)
    runs, skipped = folder_runs(folder, experiment)
    if not runs:
        raise ValueError(f"plot: no readable results files of {experiment!r} in {folder}")
    notes = [f"not plotted (unreadable): {name}" for name in skipped]
    return plot_runs(runs, png if png is not None else folder / f"{experiment}.png", notes=notes, **options)


def folder_runs(folder, experiment) -> tuple[list[Run], list[str]]:
    """(runs, names of unreadable files): the results files of ``experiment``
    in ``folder``, one per method (the lowest repetition of ``"SGD#1"``,
    ``"SGD#2"``, ...), in the experiment's method order (its catalog's, else
    the files' name order)."""
    runs, skipped = {}, []
    for path in list_runs(folder):
        try:
            run = load_run(path)
        except (ResultsError, OSError) as err:
            if path.name.startswith(f"{experiment}__"):  # ours by name, yet unreadable: say so
                skipped.append(path.name)
                print(f"plot: left out {path} ({' '.join(str(err).split())})", file=sys.stderr)
            continue
        if run.config.get("experiment") != experiment:
            continue
        base, repetition = _repetition(str(run.config.get("method", path.stem)))
        if base not in runs or repetition < runs[base][0]:
            runs[base] = (repetition, run)
    order = _method_order(experiment)
    names = sorted(runs, key=lambda m: (order.index(m) if m in order else len(order), m))
    return [runs[m][1] for m in names], skipped


def _repetition(method: str) -> tuple[str, int]:
    """"SGD#2" -> ("SGD", 2); "SGD" -> ("SGD", 0)."""
    base, _, number = method.partition("#")
    return base, int(number) if number.isdigit() else 0


def _method_order(experiment) -> list[str]:
    """The experiment's methods in its catalog order ([] if it is not in the catalog)."""
    try:
        from experiments import catalog

        specs = catalog.get(experiment).specs(quick=True)
    except Exception:  # an experiment the catalog does not know (or cannot build): file order
        return []
    return list(dict.fromkeys(_repetition(s.method)[0] for s in specs))


def plot_runs(runs, out_png, *, title=None, labels=None, size=SIZE, dpi=DPI, log_loss=True, notes=()) -> Path:
    """Draw the learning-curve figure of ``runs`` into ``out_png`` (``size``
    inches at ``dpi``: the PNG is size*dpi pixels) and return its path.
    ``title`` (default: the runs' experiment) heads the figure, above the line
    of data, model and epochs read from the configs. ``labels`` overrides the
    legend names (default: each run's config label, method or name, else its
    file stem). ``notes`` are extra lines for the notes column."""
    out_png = Path(out_png)
    if out_png.is_dir():
        raise IsADirectoryError(f"plot: {out_png} is a folder; give a PNG file name such as {out_png / 'curves.png'}")
    fig = learning_curves(runs, title=title, labels=labels, size=size, dpi=dpi, log_loss=log_loss, notes=notes)
    try:
        out_png.parent.mkdir(parents=True, exist_ok=True)
        image = io.BytesIO()
        fig.savefig(image, dpi=dpi, format="png", metadata=fig.png_text)
        write_atomically(out_png, image.getvalue())  # whole or not at all, like the results files
    finally:
        plt.close(fig)
    return out_png


def learning_curves(runs, *, title=None, labels=None, size=SIZE, dpi=DPI, log_loss=True, notes=()):
    """The figure :func:`plot_runs` saves (the caller closes it). Its panels
    are labelled "loss-epoch", "accuracy-epoch", "loss-time", "accuracy-time"
    (``Axes.get_label``); each method's curves are labelled "NAME (split)",
    clip arrows "NAME (clipped)" and non-finite marks "NAME (non-finite)"."""
    runs = [r if isinstance(r, Run) else load_run(r) for r in runs]
    if not runs:
        raise ValueError("plot_runs: no runs to plot")
    labels = list(labels) if labels is not None else [_name(r) for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"plot_runs: {len(labels)} labels for {len(runs)} runs")
    styles = method_styles(len(runs))
    notes = list(notes)
    with plt.rc_context({"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE + 1, "axes.labelsize": FONT_SIZE,
                         "legend.fontsize": FONT_SIZE - 1, "xtick.labelsize": FONT_SIZE - 1,
                         "ytick.labelsize": FONT_SIZE - 1, "lines.linewidth": 1.8}):
        fig = plt.figure(figsize=size, dpi=dpi)
        try:
            head, details = _title(runs, title)
            width_in, height_in = size
            legend_frac = min(LEGEND_WIDTH_IN / width_in, 0.4)
            top = 1 - min(1.05 / height_in, 0.3)
            grid = fig.add_gridspec(2, 2, left=min(0.85 / width_in, 0.2), right=1 - legend_frac,
                                    bottom=min(0.6 / height_in, 0.2), top=top, wspace=0.22 * 12 / width_in,
                                    hspace=0.3 * 8.5 / height_in)
            panels = [(fig.add_subplot(grid[r, c]), x_key, lines, what)
                      for r, x_key in enumerate((EPOCH_INDEX, TIME_KEY))
                      for c, (lines, what) in enumerate(((LOSS_LINES, "loss"), (ACC_LINES, "accuracy")))]
            clip = _loss_clip(runs)
            time_scale = _time_scale(runs)
            for ax, x_key, lines, what in panels:
                ax.set_label(f"{what}-{'epoch' if x_key == EPOCH_INDEX else 'time'}")
                _draw_panel(ax, runs, labels, styles, x_key, lines, what, clip if what == "loss" else None,
                            log_loss, time_scale if x_key == TIME_KEY else None)
            notes[:0] = (_clip_notes(runs, labels, clip) + _nonfinite_notes(runs, labels)
                         + _time_notes(runs, labels, time_scale))
            _legend_column(fig, runs, labels, styles, notes, legend_frac, top)
            fig.suptitle(_wrap(head, width_in), fontsize=FONT_SIZE + 3, fontweight="bold", x=0.02,
                         y=1 - 0.12 / height_in, ha="left", va="top")
            fig.text(0.02, 1 - 0.48 / height_in, _wrap(details, width_in, FONT_SIZE), fontsize=FONT_SIZE,
                     ha="left", va="top")
            fig.png_text = {"Title": head, "Description": details, "Methods": json.dumps(labels)}
        except BaseException:
            plt.close(fig)
            raise
    return fig


# ---------------------------------------------------------------- panels


def _draw_panel(ax, runs, labels, styles, x_key, lines, what, clip, log_loss, time_scale):
    top_edge = blended_transform_factory(ax.transData, ax.transAxes)
    drawn, finite, used, marks = 0, [], [], {}
    for i, (run, label) in enumerate(zip(runs, labels)):
        x = run.epochs.get(x_key)
        if x is None or len(x) == 0:
            continue
        x = np.asarray(x, dtype=float)
        colour, marker = styles[i]
        for key, style, split in lines:
            y = run.epochs.get(key)
            if y is None or len(y) == 0:
                continue
            y = np.asarray(y, dtype=float)[: len(x)]
            xs = x[: len(y)]
            keep = np.isfinite(xs)
            if key == "train_loss":  # the initial point has no training loss (NaN by design)
                keep &= ~(_initial_rows(run, len(y)) & np.isnan(y))
            xs, y = xs[keep], y[keep]
            if len(y) == 0 or (np.isnan(y).all()):  # not measured (e.g. no accuracy for a regression loss)
                continue
            bad = ~np.isfinite(y)
            high = np.isfinite(y) & (y > clip) if clip is not None else np.zeros_like(bad)
            shown = np.where(high, clip, np.where(bad, np.nan, y)) if clip is not None else np.where(bad, np.nan, y)
            step = max(1, math.ceil(len(y) / MARKS_PER_CURVE))
            ax.plot(xs, shown, linestyle=style, color=colour, marker=marker, markevery=(i % step, step),
                    markersize=6, markerfacecolor=colour if style == "-" else "white", markeredgecolor=colour,
                    label=f"{label} ({split})")
            finite.append(shown[np.isfinite(shown)])
            drawn += 1
            if style not in [s for s, _ in used]:
                used.append((style, split))
            if high.any():
                ax.plot(xs[high], np.full(high.sum(), clip), linestyle="none", marker=CLIP_MARKER, markersize=16,
                        color=colour, label=f"{label} (clipped)", zorder=5)
            for xb, yb in zip(xs[bad], y[bad]):
                words = marks.setdefault(float(xb), {}).setdefault(i, [])
                word = "NaN" if np.isnan(yb) else ("inf" if yb > 0 else "-inf")
                if word not in words:
                    words.append(word)
    for n, (xb, by_run) in enumerate(sorted(marks.items())):  # one box per run and point: stacked when runs
        for k, (i, words) in enumerate(by_run.items()):          # share a point, staggered between points
            ax.text(xb, 0.97 - 0.075 * (k + n % 2 * len(by_run)), "/".join(words), transform=top_edge,
                    color=styles[i][0],
                    fontsize=FONT_SIZE - 2, fontweight="bold", ha="center", va="top", zorder=6,
                    label=f"{labels[i]} (non-finite)",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": styles[i][0], "lw": 0.8})
    ax.set_xlabel("epoch" if x_key == EPOCH_INDEX else "wall-clock time (s)")
    ax.set_ylabel(what)
    ax.grid(True, alpha=0.3)
    if drawn == 0:
        ax.text(0.5, 0.5, f"no {what} vs {'epochs' if x_key == EPOCH_INDEX else 'wall-clock time'} recorded",
                ha="center", va="center", transform=ax.transAxes)
        return
    if x_key == EPOCH_INDEX:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    elif time_scale is not None:
        ax.set_xscale("symlog", linthresh=time_scale, linscale=0.4)
        ax.set_xlim(left=0)
        ax.set_xlabel(f"wall-clock time (s, log scale above {time_scale:g} s)")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(PLAIN)
    values = np.concatenate(finite) if finite else np.empty(0)
    if what == "loss" and values.size:
        _loss_axis(ax, values, clip, log_loss)
    ax.legend(handles=[Line2D([], [], color="0.3", linestyle=s, label=split) for s, split in used],
              loc="best", handlelength=2.6, framealpha=0.9)


def _loss_axis(ax, values, clip, log_loss):
    """Log scale when every shown loss is positive; limits from the shown (clipped) values."""
    low, high = float(values.min()), float(values.max())
    if log_loss and low > 0:
        ax.set_yscale("log")
        below = values[values < clip] if clip is not None and (values < clip).any() else values
        pad = 10 ** max(0.06 * math.log10(float(below.max()) / low), 0.01)  # 6% of the decades, not the clip's
        ax.set_ylim(low / pad, high * (6.0 if clip is not None and high >= clip else pad))
        ax.yaxis.set_major_formatter(PLAIN)
        ax.yaxis.set_minor_formatter(PLAIN if high / low < 10 else NullFormatter())  # under a decade: label 2, 3..
    else:
        pad = 0.05 * (high - low) or 0.5
        ax.set_ylim(low - pad, high + (4 if clip is not None and high >= clip else 1) * pad)
    if clip is not None and high >= clip:
        ax.axhline(clip, color="0.4", linestyle=":", linewidth=1.0)
        ax.text(0.01, clip, f" clip {clip:.3g}", transform=blended_transform_factory(ax.transAxes, ax.transData),
                color="0.3", fontsize=FONT_SIZE - 2, va="bottom", ha="left")


def _loss_clip(runs):
    """CLIP_FACTOR x the median of the runs' first finite losses (None without
    one): the median, so that a run that diverged before its first record (a
    Newton step can take the loss to 1e5 at once) does not set the scale."""
    initial = [v for run in runs for v in [_initial_loss(run)] if v is not None]
    if not initial or float(np.median(initial)) <= 0:
        return None
    return CLIP_FACTOR * float(np.median(initial))


def _initial_loss(run):
    """The first finite loss of a run (its epoch 0 row, else the earliest)."""
    for row in range(len(run.epochs.get(EPOCH_INDEX, ()))):
        values = [float(run.epochs[k][row]) for k, _, _ in LOSS_LINES if k in run.epochs and
                  row < len(run.epochs[k]) and np.isfinite(run.epochs[k][row])]
        if values:
            return max(values)
    return None


def _clip_notes(runs, labels, clip):
    if clip is None:
        return []
    out = []
    for run, label in zip(runs, labels):
        worst = None
        for key, _, split in LOSS_LINES:
            y = np.asarray(run.epochs.get(key, ()), dtype=float)
            y = y[np.isfinite(y)]
            if y.size and y.max() > clip and (worst is None or y.max() > worst[0]):
                worst = (float(y.max()), split)
        if worst:
            out.append(f"\u2191 {label}: {worst[1]} "
                       f"loss up to {worst[0]:.3g}, drawn at the clip {clip:.3g} "
                       f"({CLIP_FACTOR:g}x the median first loss)")
    return out


def _initial_rows(run, n):
    """True where a row is the initial point (epoch 0), whose training loss is NaN by design."""
    index = np.asarray(run.epochs.get(EPOCH_INDEX, np.ones(n)))[:n]
    return np.pad(index == 0, (0, n - len(index)))


def _nonfinite_notes(runs, labels):
    out = []
    for run, label in zip(runs, labels):
        found = []
        for key, _, split in LOSS_LINES + ACC_LINES:
            y = np.asarray(run.epochs.get(key, ()), dtype=float)
            bad = ~np.isfinite(y)
            if key == "train_loss":
                bad &= ~(_initial_rows(run, len(y)) & np.isnan(y))
            if bad.any() and not np.isnan(y).all():
                found.append(f"{split} {'loss' if key.endswith('loss') else 'accuracy'} ({int(bad.sum())})")
        if found:
            out.append(f"{label}: NaN/inf in {', '.join(found)}; marked at the top of the panels")
    return out


def _time_scale(runs):
    """The symlog linear threshold (a power of 10) when the slowest run took more than
    SLOW_RATIO x the fastest, else None (a linear axis)."""
    totals = [t for t in (_total_time(r) for r in runs) if t is not None and t > 0]
    if len(totals) < 2 or max(totals) <= SLOW_RATIO * min(totals):
        return None
    smallest = min(float(np.min(t[t > 0])) for t in (_times(r) for r in runs) if (t > 0).any())
    return 10.0 ** math.floor(math.log10(smallest))


def _times(run):
    t = np.asarray(run.epochs.get(TIME_KEY, ()), dtype=float)
    return t[np.isfinite(t)]


def _total_time(run):
    t = _times(run)
    return float(t.max()) if t.size else None


def _time_notes(runs, labels, time_scale):
    if time_scale is None:
        return []
    totals = {label: _total_time(r) for r, label in zip(runs, labels) if _total_time(r)}
    slow, fast = max(totals, key=totals.get), min(totals, key=totals.get)
    return [f"time axes on a log scale: {slow} took {totals[slow]:.3g} s, "
            f"{totals[slow] / totals[fast]:.0f}x {fast} ({totals[fast]:.3g} s)"]


# ---------------------------------------------------------------- legend, notes, title


def _legend_column(fig, runs, labels, styles, notes, legend_frac, top):
    handles = [Line2D([], [], color=c, marker=m, markersize=7, linewidth=2, label=label + _status(run))
               for run, label, (c, m) in zip(runs, labels, styles)]
    left = 1 - legend_frac + 0.012
    legend = fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(left, top + 0.01), frameon=False,
                        title="method", alignment="left", title_fontproperties={"weight": "bold"},
                        borderaxespad=0.0, handlelength=2.4)
    if not notes:
        return
    shown = notes[:NOTES_MAX] + ([f"... and {len(notes) - NOTES_MAX} more"] if len(notes) > NOTES_MAX else [])
    width = max(20, int((legend_frac - 0.02) * fig.get_figwidth() * 72 / (0.6 * (FONT_SIZE - 1))))
    text = "\n".join(textwrap.fill(n if n.startswith("\u2191") else "\u2022 " + n, width, subsequent_indent="  ")
                     for n in shown)
    box = legend.get_window_extent(fig.canvas.get_renderer()).transformed(fig.transFigure.inverted())
    below = box.y0 - 0.25 / fig.get_figheight()
    fig.text(left, below, "notes", fontsize=FONT_SIZE, fontweight="bold", va="top", ha="left")
    fig.text(left, below - 0.3 / fig.get_figheight(), text, fontsize=FONT_SIZE - 1, va="top", ha="left",
             linespacing=1.3)


def _status(run) -> str:
    return "" if run.status == "finished" else f" ({run.status})"


def _name(run) -> str:
    c = run.config
    return str(c.get("label") or c.get("method") or c.get("name") or run.path.stem)


def _title(runs, title):
    """(heading, details line) from the configs: experiment, data, model, epochs, seeds, methods."""
    configs = [r.config for r in runs]
    experiments = _distinct(c.get("experiment") for c in configs)
    head = title or (" + ".join(experiments) if experiments else "learning curves")
    parts = []
    data = _distinct(_data_text(c.get("data")) for c in configs)
    if data:
        parts.append("data " + " / ".join(data))
    models = _distinct(_model_text(c.get("model")) for c in configs)
    if models:
        parts.append("model " + " / ".join(models))
    budget = _budget_text(runs)
    if budget:
        parts.append(budget)
    seeds = _distinct(c.get("seed") for c in configs)
    if seeds:
        parts.append(("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds)))
    dtypes = _distinct(c.get("dtype") for c in configs)
    if dtypes:
        parts.append("/".join(dtypes))
    parts.append(f"{len(runs)} method{'s' if len(runs) != 1 else ''}")
    return head, " · ".join(parts)


def _distinct(values) -> list:
    return list(dict.fromkeys(v for v in values if v not in (None, "")))


def _data_text(data) -> str | None:
    if not isinstance(data, dict) or not data.get("name"):
        return data if isinstance(data, str) else None
    text = str(data["name"])
    if data.get("subset"):
        text += " (subset " + "/".join(map(str, data["subset"])) + ")"
    if data.get("pool"):
        text += f", pooled {data['pool']}x{data['pool']}"
    if data.get("normalize"):
        text += ", normalized"
    return text


def _model_text(model) -> str | None:
    if not isinstance(model, dict) or not model.get("name"):
        return model if isinstance(model, str) else None
    words = []
    for key, value in (model.get("kwargs") or {}).items():
        if key == "sizes" and isinstance(value, (list, tuple)):
            words.insert(0, "-".join(map(str, value)))
        elif isinstance(value, (list, tuple)):
            words.append(f"{key} {'x'.join(map(str, value))}")
        elif isinstance(value, str):
            words.append(value)
        elif value is not None and not isinstance(value, dict):
            words.append(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}")
    head = [w for w in words[:1] if "-" in w and " " not in w]
    rest = words[len(head):]
    return " ".join([str(model["name"]), *head]) + (f" ({', '.join(rest)})" if rest else "")


def _budget_text(runs) -> str | None:
    """"10 epochs (Newton, DampedNewton: 1 epoch of 2 batches)": the common budget, exceptions named."""
    budgets = {}
    for run in runs:
        epochs = run.config.get("epochs")
        if epochs is None:
            continue
        limit = (run.config.get("data") or {}).get("limit_batches") if isinstance(run.config.get("data"), dict) \
            else None
        text = f"{epochs} epoch{'s' if epochs != 1 else ''}" + (f" of {limit} batches" if limit else "")
        budgets.setdefault(text, []).append(_name(run))
    if not budgets:
        return None
    common = Counter({k: len(v) for k, v in budgets.items()}).most_common(1)[0][0]
    others = [f"{', '.join(names)}: {text}" for text, names in budgets.items() if text != common]
    return common + (f" ({'; '.join(others)})" if others else "")


def _wrap(text, width_in, font_size=FONT_SIZE + 3) -> str:
    return textwrap.fill(text, max(30, int(width_in * 0.96 * 72 / (0.55 * font_size))))
