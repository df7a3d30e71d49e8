"""Learning curves as PNG, like the papers' figures.

``plot_runs(["runs/sgd.h5", "runs/adahessian.h5"], "curves.png")`` draws one
figure of 2x2 panels from results files (or :class:`~experiments.results.Run`
objects): loss and accuracy against epochs (top) and against wall-clock time
(bottom). Each run has one colour; training loss is solid and validation loss
dashed; validation accuracy is solid and test accuracy dotted. Columns that a
run lacks are skipped, and a panel with nothing to draw says so.

The epoch series columns read are ``train_loss``, ``val_loss``, ``val_acc``,
``test_acc`` and ``wall_time`` (seconds of training; the same names the run
loop logs). Matplotlib runs on its Agg backend, selected before pyplot is
imported, so no display is needed.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from experiments.results import EPOCH_INDEX, Run, load_run, write_atomically  # noqa: E402

LOSS_LINES = (("train_loss", "-", "train"), ("val_loss", "--", "val"))
ACC_LINES = (("val_acc", "-", "val"), ("test_acc", ":", "test"))
TIME_KEY = "wall_time"


def plot_runs(runs, out_png, *, title=None, labels=None, size=(10.0, 8.0), dpi=100, log_loss=True) -> Path:
    """Draw the 2x2 learning-curve figure of ``runs`` into ``out_png``
    (``size`` inches at ``dpi``: the PNG is size*dpi pixels). ``labels``
    overrides the legend names (default: each run's config label/name or
    file stem). Returns the PNG's path."""
    runs = [r if isinstance(r, Run) else load_run(r) for r in runs]
    if not runs:
        raise ValueError("plot_runs: no runs to plot")
    labels = list(labels) if labels is not None else [r.label for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"plot_runs: {len(labels)} labels for {len(runs)} runs")
    out_png = Path(out_png)
    if out_png.is_dir():
        raise IsADirectoryError(f"plot: {out_png} is a folder; give a PNG file name such as {out_png / 'curves.png'}")
    out_png.parent.mkdir(parents=True, exist_ok=True)

    fig, axes = plt.subplots(2, 2, figsize=size, dpi=dpi)
    try:
        panels = [(axes[0, 0], EPOCH_INDEX, LOSS_LINES, "loss"), (axes[0, 1], EPOCH_INDEX, ACC_LINES, "accuracy"),
                  (axes[1, 0], TIME_KEY, LOSS_LINES, "loss"), (axes[1, 1], TIME_KEY, ACC_LINES, "accuracy")]
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        if len(runs) > len(colors):  # one distinct colour per run
            colors = [plt.get_cmap("tab20")(i % 20) for i in range(len(runs))]
        for ax, x_key, lines, what in panels:
            drawn = 0
            for i, (run, label) in enumerate(zip(runs, labels)):
                x = run.epochs.get(x_key)
                if x is None:
                    continue
                for key, style, split in lines:
                    y = run.epochs.get(key)
                    if y is None or len(y) == 0:
                        continue
                    ax.plot(x, y, linestyle=style, color=colors[i % len(colors)], label=f"{label} ({split})")
                    drawn += 1
            ax.set_xlabel("epoch" if x_key == EPOCH_INDEX else "wall-clock time (s)")
            ax.set_ylabel(what)
            ax.grid(True, alpha=0.3)
            if drawn == 0:
                ax.text(0.5, 0.5, f"no {what} vs {x_key}", ha="center", va="center", transform=ax.transAxes)
                continue
            if what == "loss" and log_loss and _all_positive(ax):
                ax.set_yscale("log")
        # one legend for the figure: a colour per run, a line style per split
        from matplotlib.lines import Line2D
        handles = [Line2D([], [], color=colors[i % len(colors)], label=label) for i, label in enumerate(labels)]
        handles += [Line2D([], [], color="black", linestyle=style, label=f"{split} {what}")
                    for lines, what in ((LOSS_LINES, "loss"), (ACC_LINES, "accuracy")) for _, style, split in lines]
        fig.legend(handles=handles, loc="center right", fontsize="small", frameon=False)
        if title:
            fig.suptitle(title)
        fig.tight_layout(rect=(0, 0, 0.8, 1))
        image = io.BytesIO()
        fig.savefig(image, dpi=dpi, format="png")
        write_atomically(out_png, image.getvalue())  # whole or not at all, like the results files
    finally:
        plt.close(fig)
    return out_png


def _all_positive(ax) -> bool:
    import numpy as np  # host-side only: checking the plotted values

    ys = [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()]
    values = np.concatenate(ys) if ys else np.empty(0)
    values = values[np.isfinite(values)]
    return values.size > 0 and bool((values > 0).all())
