"""experiments.plots: a figure a researcher can read. The title names the
experiment, data, model and epochs; every main-job method gets its own colour and
markers; a diverging run is clipped and marked without flattening the other
curves; a 30x slower method puts the wall-clock axes on a log scale; the
folder PNG keeps every method of the experiment after a one-method rerun."""
from __future__ import annotations

import itertools
import json
import math
import os

import matplotlib.colors as mcolors
import numpy as np
import pytest
from PIL import Image

from experiments import catalog, plots
from experiments.results import RunWriter, load_run
from experiments.runner import train

pytestmark = pytest.mark.cpu_only  # host-bound: plots (matplotlib) and PyTorch references

DIGITS = catalog.digits_specs()  # the main job's 12 specs (configs and file names), nothing trained
METHODS = [s.method for s in DIGITS]
INITIAL_LOSS = 2.3
MIN_RGB_DISTANCE = 0.3  # Euclidean, RGB in [0, 1]: far apart even for lines on white


def write_run(path, config, losses, times=None, status="finished", acc=None):
    """A results file with one epoch row per loss (epoch 0: the initial point, no training loss)."""
    times = np.linspace(0.0, 1.0, len(losses)) if times is None else times
    with RunWriter.create(path, config, overwrite=True) as run:
        for e, loss in enumerate(losses):
            run.log_epoch(e, {"train_loss": math.nan if e == 0 else loss, "val_loss": loss * 1.05,
                              "val_acc": 0.1 + 0.08 * e if acc is None else acc[e],
                              "test_acc": 0.1 + 0.07 * e if acc is None else acc[e], "wall_time": times[e]})
        run.finish(None, {}, status=status)
    return path


def digits_folder(folder, slow=1.0):
    """The 12 digits methods as results files in ``folder`` (decreasing losses, 1 s of training each;
    Newton ``slow`` x that)."""
    paths = []
    for k, spec in enumerate(DIGITS):
        losses = [INITIAL_LOSS] + [INITIAL_LOSS * 0.8 ** (e + k / 4) for e in range(1, spec.epochs + 1)]
        times = np.linspace(0.0, slow if spec.method == "Newton" else 1.0, len(losses))
        paths.append(write_run(folder / spec.filename, spec.config(), losses, times))
    return paths


def panel(fig, name):
    return next(ax for ax in fig.axes if ax.get_label() == name)


def curves(ax, split):
    return {line.get_label()[: -len(f" ({split})")]: line for line in ax.get_lines()
            if line.get_label().endswith(f" ({split})")}


def png_text(path):
    with Image.open(path) as image:
        return dict(image.text)


@pytest.fixture
def figure():
    made = []

    def draw(runs, **options):
        made.append(plots.learning_curves(runs, **options))
        return made[-1]

    yield draw
    for fig in made:
        plots.plt.close(fig)


def test_title_names_the_experiment_data_model_and_epochs(tmp_path, figure):
    fig = figure(digits_folder(tmp_path))
    text = fig._suptitle.get_text() + "\n" + "\n".join(t.get_text() for t in fig.texts)
    assert fig._suptitle.get_text() == "digits"
    for part in ("data digits", "model MLP 64-32-10 (relu)", "10 epochs (Newton, DampedNewton: 1 epoch of 2 batches)",
                 "seed 0", "15 methods"):
        assert part in " ".join(text.split()), part
    out = plots.plot_runs(digits_folder(tmp_path), tmp_path / "c.png", title="the main job")
    meta = png_text(out)
    assert meta["Title"] == "the main job" and "MLP 64-32-10" in meta["Description"]


def test_every_main_job_method_gets_its_own_colour_and_marker(tmp_path, figure):
    fig = figure(digits_folder(tmp_path))
    for name in ("loss-epoch", "accuracy-time"):
        lines = curves(panel(fig, name), "train" if name.startswith("loss") else "test")
        assert list(lines) == METHODS
        colours = [mcolors.to_rgb(line.get_color()) for line in lines.values()]
        closest = min(np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(colours, 2))
        assert closest > MIN_RGB_DISTANCE, f"two methods have colours {closest:.2f} apart"
        assert len({line.get_marker() for line in lines.values()}) == len(METHODS) == 15
        step = lines["SGD"].get_markevery()[1]
        assert 1 < step < len(lines["SGD"].get_xdata())  # a marker every few points, not on every one
    # the method legend and the line-style keys are apart: methods in the figure legend, splits per panel
    assert [t.get_text() for t in fig.legends[0].get_texts()] == METHODS
    assert [t.get_text() for t in panel(fig, "loss-epoch").get_legend().get_texts()] == ["train", "validation"]
    assert [t.get_text() for t in panel(fig, "accuracy-epoch").get_legend().get_texts()] == ["test", "validation"]


def test_a_diverging_run_is_clipped_and_marked_while_the_others_keep_their_scale(tmp_path, figure):
    paths = digits_folder(tmp_path)
    calm = figure(paths)
    config = dict(DIGITS[0].config(), method="L-BFGS-torch")
    bad = write_run(tmp_path / "digits__L-BFGS-torch.h5", config, [INITIAL_LOSS, 1.9, 1e32, math.inf, math.nan],
                    status="diverged", acc=[0.1, 0.2, 0.1, math.nan, 0.1])
    fig = figure(paths + [bad])
    ax, before = panel(fig, "loss-epoch"), panel(calm, "loss-epoch")
    clip = plots.CLIP_FACTOR * INITIAL_LOSS * 1.05  # the median first loss: validation at epoch 0, the same in every run
    assert ax.get_yscale() == "log" and before.get_yscale() == "log"
    low, high = ax.get_ylim()
    assert low == pytest.approx(before.get_ylim()[0])  # the other curves' floor is where it was
    floor = min(np.nanmin(line.get_ydata()) for line in curves(before, "train").values())
    assert floor / 1.5 < low < floor
    assert clip < high <= 10 * clip  # not 1e32: the other losses keep their decades
    lbfgs = curves(ax, "train")["L-BFGS-torch"]
    assert np.nanmax(lbfgs.get_ydata()) == pytest.approx(clip)  # drawn at the clip
    clipped = [line for line in ax.get_lines() if line.get_label() == "L-BFGS-torch (clipped)"]
    assert clipped and clipped[0].get_ydata()[0] == pytest.approx(clip)
    marks = [t.get_text() for t in ax.texts if t.get_label().endswith("(non-finite)")]
    assert marks == ["inf", "NaN"]  # epoch 3 (train and val inf), epoch 4 (both NaN); nobody's epoch-0
    assert {t.get_label() for t in ax.texts if t.get_text() in marks} == {"L-BFGS-torch (non-finite)"}  # NaN
    assert [t.get_text() for t in panel(fig, "accuracy-epoch").texts if "non-finite" in t.get_label()] == ["NaN"]
    notes = " ".join(" ".join(t.get_text() for t in fig.texts).split())
    assert "L-BFGS-torch: validation loss up to 1.05e+32, drawn at the clip 24.1" in notes and "NaN/inf in" in notes
    assert "L-BFGS-torch (diverged)" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_the_wall_clock_axes_go_log_when_one_method_is_30x_slower(tmp_path, figure):
    (tmp_path / "even").mkdir()
    (tmp_path / "slow").mkdir()
    even = figure(digits_folder(tmp_path / "even"))
    assert panel(even, "loss-time").get_xscale() == "linear"
    fig = figure(digits_folder(tmp_path / "slow", slow=30.0))  # Newton takes 30 s, the others 1 s
    for name in ("loss-time", "accuracy-time"):
        ax = panel(fig, name)
        assert ax.get_xscale() in ("log", "symlog") and ax.get_xlim()[0] == 0  # t = 0 still on the axis
    notes = " ".join(" ".join(t.get_text() for t in fig.texts).split())
    assert "time axes on a log scale: Newton took 30 s, 30x" in notes


def test_plot_folder_draws_every_method_after_a_one_method_rerun(tmp_path):
    digits_folder(tmp_path)
    write_run(tmp_path / "other__SGD.h5", dict(DIGITS[0].config(), experiment="other"), [1.0, 0.5])
    png = plots.plot_folder(tmp_path, "digits")
    assert png == tmp_path / "digits.png"
    assert json.loads(png_text(png)["Methods"]) == METHODS
    first = png.read_bytes()

    # the main job's rerun of one method: the real run loop, two batches, over its results file
    rerun = catalog.digits_specs(quick=True, methods=["SGD"])[0]
    run = train(rerun, tmp_path / rerun.filename, overwrite=True, progress=False, log=lambda *a: None)
    assert run.status == "finished" and run.config["epochs"] == 1
    old = os.umask(0o027)
    try:
        png = plots.plot_folder(tmp_path, "digits")
    finally:
        os.umask(old)
    assert json.loads(png_text(png)["Methods"]) == METHODS  # still all 12, in the catalog's order
    assert png.read_bytes() != first
    assert "10 epochs (SGD, Newton, DampedNewton: 1 epoch of 2 batches)" in png_text(png)["Description"]
    assert png.stat().st_mode & 0o777 == 0o640 and not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_plot_folder_takes_the_first_repetition_and_leaves_out_a_damaged_file(tmp_path, capsys):
    spec = DIGITS[0]
    for r in (2, 1, 3):
        write_run(tmp_path / f"digits__SGD-{r}.h5", dict(spec.config(), method=f"SGD#{r}"), [2.3, 1.0 + r])
    write_run(tmp_path / "digits__Adam.h5", DIGITS[2].config(), [2.3, 1.0])
    (tmp_path / "digits__Broken.h5").write_bytes(b"not HDF5")
    runs, skipped = plots.folder_runs(tmp_path, "digits")
    assert [r.config["method"] for r in runs] == ["SGD#1", "Adam"] and skipped == ["digits__Broken.h5"]
    png = plots.plot_folder(tmp_path, "digits")
    assert json.loads(png_text(png)["Methods"]) == ["SGD#1", "Adam"]
    assert "digits__Broken.h5" in capsys.readouterr().err
    assert load_run(tmp_path / "digits__SGD-1.h5").config["method"] == "SGD#1"
    with pytest.raises(ValueError, match="no readable results files of 'absent'"):
        plots.plot_folder(tmp_path, "absent")
