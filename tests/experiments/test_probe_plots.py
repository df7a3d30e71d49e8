"""experiments.probe_plots: the curvature-probe figure beside the learning
curves. One panel per kind of probe recorded (sharpness with its 2/lr edge,
the SLQ density over training, the diagonal-estimate error, the gradient's
spectral norms), in the learning curves' colours; nothing when no run has
probes; the plot CLI writes it beside the learning curves."""
from __future__ import annotations

import json
import math

import matplotlib.colors as mcolors
import numpy as np
import pytest
from PIL import Image

from experiments import catalog, plots, probe_plots
from experiments.__main__ import main
from experiments.results import RunWriter

pytestmark = pytest.mark.cpu_only  # host-bound: plots (matplotlib) and CLI

SPEC = catalog.digits_specs()[0]  # a real config: data, model, epochs
STEPS = [0, 5, 10, 15]
NODES = 6


def config(method, optimizer="SGD", **kwargs):
    return dict(SPEC.config(), method=method, optimizer={"name": optimizer, "kwargs": kwargs},
                probes={"names": [], "every": 5, "batch": 32})


def density_row(rng, step):
    nodes = np.sort(rng.normal(0.0, 1.0 + step / 5, NODES))
    weights = rng.random(NODES)
    weights /= weights.sum()  # SLQ weights sum to 1
    return ({f"density:node{i}": float(v) for i, v in enumerate(nodes)}
            | {f"density:weight{i}": float(v) for i, v in enumerate(weights)})


def write(path, cfg, rows=None, batch=32):
    """A finished results file with two epoch rows and ``rows`` (step -> {column: value}) as its probes."""
    with RunWriter.create(path, cfg, overwrite=True) as run:
        for e, loss in enumerate((2.3, 1.0)):
            run.log_epoch(e, {"train_loss": math.nan if e == 0 else loss, "val_loss": loss,
                              "test_acc": 0.1 + 0.5 * e, "val_acc": 0.1 + 0.5 * e, "wall_time": float(e)})
        for step, values in (rows or {}).items():
            run.log_probes(step, values)
        if rows:
            run.probe_batch = list(range(batch))
        run.finish(None, {}, status="finished")
    return path


def sgd_rows(seed=0):
    rng = np.random.default_rng(seed)
    rows = {s: {"lambda_max:0": 1.0 + s / 5, "lambda_max:1": 0.5, "sharpness_ratio": 0.1 * (1.0 + s / 5),
                "sharpness_ratio:lr": 0.1, **density_row(rng, s),
                "grad_spectral_norm:1.weight": 1.0 + s, "grad_spectral_norm:2.weight": 7.0,
                "grad_spectral_norm:3.weight": 0.5 + s, "time:lambda_max": 0.01} for s in STEPS}
    for s in STEPS[1:]:  # a step probe: nothing at step 0
        rows[s] |= {"newton_cosine:newton": 0.01 * s, "newton_cosine:gauss_newton": 0.05 * s}
    return rows


def ada_rows():
    rng = np.random.default_rng(1)
    rows = {s: {"lambda_max:0": 2.0 + s, **density_row(rng, s)} for s in STEPS}
    for s in STEPS[1:]:  # a step probe: nothing at step 0
        rows[s] |= {"diag_error": 1.0 / s, "diag_error:rms": 2.0 / s, "diag_error:1.weight": 0.3}
    return rows


@pytest.fixture
def folder(tmp_path):
    write(tmp_path / "digits__SGD.h5", config("SGD", lr=0.1), sgd_rows())
    write(tmp_path / "digits__AdaHessian.h5", config("AdaHessian", "AdaHessian", lr=0.05), ada_rows())
    write(tmp_path / "digits__K-FAC.h5", config("K-FAC", "KFAC", damping=0.01),
          {s: {"lambda_max:0": 3.0} for s in STEPS})
    return tmp_path


@pytest.fixture
def figure():
    made = []

    def draw(runs, **options):
        made.append(probe_plots.probe_curves(runs, **options))
        return made[-1]

    yield draw
    for fig in made:
        if fig is not None:
            plots.plt.close(fig)


def panel(fig, name):
    return next(ax for ax in fig.axes if ax.get_label() == name)


def panels(fig):
    return sorted(ax.get_label() for ax in fig.axes if ax.get_label() in probe_plots.PANELS)


def lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def runs_of(folder, *names):
    return [folder / f"digits__{n}.h5" for n in names]


def test_the_panels_are_those_of_the_probes_recorded(folder, figure, tmp_path):
    fig = figure(runs_of(folder, "SGD", "AdaHessian", "K-FAC"))
    assert panels(fig) == sorted(probe_plots.PANELS)
    assert panels(figure(runs_of(folder, "K-FAC"))) == ["sharpness"]
    assert panels(figure(runs_of(folder, "SGD", "K-FAC"))) == ["density", "grad_spectral_norm", "newton_cosine",
                                                               "sharpness"]
    only = write(tmp_path / "digits__Adam.h5", config("Adam", "AdaHessian", lr=0.05),
                 {s: {k: v for k, v in ada_rows()[s].items() if not k.startswith("lambda")} for s in STEPS})
    assert panels(figure([only])) == ["density", "diag_error"]
    png = probe_plots.plot_probes(runs_of(folder, "SGD", "AdaHessian", "K-FAC"), tmp_path / "p.png")
    with Image.open(png) as image:
        text = dict(image.text)
        assert image.size == (1200, 850)
    assert sorted(json.loads(text["Panels"])) == sorted(probe_plots.PANELS)
    assert json.loads(text["Methods"]) == ["SGD", "AdaHessian", "K-FAC"]
    assert text["Title"] == "digits: curvature probes"
    assert "probe batch 32 examples, every 5 steps" in text["Description"]


def test_each_method_has_its_colour_and_its_2_over_lr_line(folder, figure, tmp_path):
    ratio_only = write(tmp_path / "digits__SGD-momentum.h5", config("SGD-momentum", lr=0.5, momentum=0.9),
                       {s: {"sharpness_ratio": 0.25 * (1 + s), "sharpness_ratio:lr": 0.25} for s in STEPS})
    runs = runs_of(folder, "SGD", "AdaHessian", "K-FAC") + [ratio_only]
    fig = figure(runs)
    ax = panel(fig, "sharpness")
    drawn = lines(ax)
    styles = plots.method_styles(len(runs))
    for i, name in enumerate(("SGD", "AdaHessian", "K-FAC", "SGD-momentum")):
        assert mcolors.to_hex(drawn[name].get_color()) == styles[i][0] and drawn[name].get_marker() == styles[i][1]
    assert list(drawn["SGD"].get_ydata()) == pytest.approx([1.0 + s / 5 for s in STEPS])  # lambda_max:0
    assert list(drawn["SGD-momentum"].get_ydata()) == pytest.approx([1.0 + s for s in STEPS])  # ratio / lr
    for name, lr, colour in (("AdaHessian", 0.05, styles[1][0]),
                             ("SGD-momentum", 0.25, styles[3][0])):  # the recorded lr before the config's 0.5
        edge = drawn[f"{name} (2/lr)"]
        assert list(edge.get_ydata()) == pytest.approx([2 / lr, 2 / lr]) and mcolors.to_hex(edge.get_color()) == colour
    assert "K-FAC (2/lr)" not in drawn  # no lr
    assert "SGD (2/lr)" not in drawn  # 2/lr = 20 is over 3x its largest λ_max (4): a line there flattens the curves
    notes = " ".join(" ".join(t.get_text() for t in fig.texts).split())
    assert "K-FAC: no constant lr, no 2/lr line" in notes and "(2+2\u03b2)/lr = 15.2" in notes
    assert "SGD: 2/lr = 20, over 3x its largest \u03bb_max: not drawn" in notes
    assert ax.get_yscale() == "linear"  # 1 .. 40: under two decades
    steep = write(tmp_path / "digits__steep.h5", config("steep", lr=1e-4),
                  {s: {"lambda_max:0": 10.0 ** (s / 5 - 1)} for s in STEPS})
    assert panel(figure([steep]), "sharpness").get_yscale() == "log"  # 0.1 .. 2e4


def test_the_density_heatmap_covers_the_nodes_and_each_column_sums_to_one(folder, figure):
    fig = figure(runs_of(folder, "K-FAC", "SGD", "AdaHessian"))
    ax = panel(fig, "density")
    mesh = ax.collections[0]
    rows = sgd_rows()  # K-FAC has no density: the first method with one is SGD
    nodes = np.array([[rows[s][f"density:node{i}"] for i in range(NODES)] for s in STEPS])
    assert "SGD" in ax.get_title() and "AdaHessian" not in ax.get_title()
    assert mesh.bin_edges[0] == nodes.min() and mesh.bin_edges[-1] == nodes.max()
    assert np.all(np.diff(mesh.bin_edges) > 0) and len(mesh.bin_edges) == probe_plots.DENSITY_BINS + 1
    assert mesh.mass.shape == (probe_plots.DENSITY_BINS, len(STEPS)) and list(mesh.steps) == STEPS
    assert mesh.mass.sum(axis=0) == pytest.approx(np.ones(len(STEPS)))  # the SLQ weights sum to 1
    assert ax.get_yscale() == "symlog" and isinstance(mesh.norm, mcolors.LogNorm)
    chosen = panel(figure(runs_of(folder, "SGD", "AdaHessian"), density_method="AdaHessian"), "density")
    assert "AdaHessian" in chosen.get_title()
    with pytest.raises(ValueError, match="K-FAC has no density probe"):
        figure(runs_of(folder, "SGD", "K-FAC"), density_method="K-FAC")


def test_diag_error_curves_only_for_the_methods_that_have_them(folder, figure):
    fig = figure(runs_of(folder, "SGD", "AdaHessian", "K-FAC"))
    drawn = lines(panel(fig, "diag_error"))
    assert sorted(drawn) == ["AdaHessian (estimate)", "AdaHessian (rms)"]
    assert list(drawn["AdaHessian (estimate)"].get_xdata()) == STEPS[1:]  # step 0 has none: not drawn
    assert list(drawn["AdaHessian (rms)"].get_ydata()) == pytest.approx([2.0 / s for s in STEPS[1:]])
    assert drawn["AdaHessian (rms)"].get_linestyle() == "--"
    assert mcolors.to_hex(drawn["AdaHessian (estimate)"].get_color()) == plots.method_styles(2)[1][0]
    norms = lines(panel(fig, "grad_spectral_norm"))  # the first and the last weight, not the middle one
    assert sorted(norms) == ["SGD (first)", "SGD (last)"]
    assert list(norms["SGD (first)"].get_ydata()) == [1.0 + s for s in STEPS]
    assert list(norms["SGD (last)"].get_ydata()) == [0.5 + s for s in STEPS]


def test_no_probe_figure_without_probes(tmp_path, figure):
    plain = write(tmp_path / "digits__SGD.h5", config("SGD", lr=0.1))
    assert figure([plain]) is None
    assert probe_plots.plot_probes([plain], tmp_path / "p.png") is None and not (tmp_path / "p.png").exists()
    assert probe_plots.plot_probe_folder(tmp_path, "digits") is None
    assert not (tmp_path / "digits-probes.png").exists()


def test_the_plot_cli_writes_the_probe_figure_beside_the_learning_curves(folder, tmp_path, capsys):
    assert main(["plot", *map(str, runs_of(folder, "SGD", "AdaHessian")), "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    png = tmp_path / "figs" / "digits-probes.png"
    assert f"learning curves: {tmp_path / 'figs' / 'digits.png'}" in out and f"probe curves: {png}" in out
    with Image.open(png) as image:
        assert json.loads(image.text["Methods"]) == ["SGD", "AdaHessian"]
    plain = write(tmp_path / "plain" / "digits__SGD.h5", config("SGD", lr=0.1))
    assert main(["plot", str(plain), "--png", str(tmp_path / "plain" / "c.png")]) == 0
    assert "probe curves" not in capsys.readouterr().out and not (tmp_path / "plain" / "c-probes.png").exists()
    assert probe_plots.plot_probe_folder(folder, "digits") == folder / "digits-probes.png"
