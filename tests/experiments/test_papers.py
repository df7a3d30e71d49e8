"""The four paper reproductions end to end at a tiny scale (``--quick``: a few
batches, tiny widths) on GENERATED data files in the real formats (MNIST IDX
.gz, CIFAR-10 binary batches), through the CLI: the table in the paper's
shape with the paper's numbers, finite results files, the analyses, the PNG."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from experiments import catalog, papers
from experiments.papers import cnn_cifar10_quasi_newton, common, mlp_mnist_newton, sgdph_cifar10
from experiments.__main__ import main
from experiments.results import load_final, load_run
from experiments.runner import load_splits

from _helpers import write_generated_data

pytestmark = pytest.mark.cpu_only  # host-bound: paper CLI runs, subprocesses, plots

ROOT = Path(__file__).resolve().parents[2]
MNIST_TRAIN, MNIST_TEST = 1400, 200   # enough for the balanced 2% split: 140 / 20 per class
CIFAR_PER_BATCH, CIFAR_TEST = 20, 40


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """Small matrices: one BLAS thread is faster, and far faster on a busy machine."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_generated_data(tmp_path_factory.mktemp("data"), mnist=(MNIST_TRAIN, MNIST_TEST),
                                cifar=(CIFAR_PER_BATCH, CIFAR_TEST))


def _run(name, data_dir, out, capsys, *extra):
    assert main(["run", name, "--quick", "--no-verify", "--data-dir", str(data_dir), "--out", str(out), *extra]) == 0
    return capsys.readouterr().out


def _table(text):
    """The lines of the printed table (header first)."""
    return [line for line in text.splitlines() if line.startswith("| ")]


def _check_runs(out, name, n_files):
    files = sorted(out.glob(f"{name}__*.h5"))
    assert len(files) == n_files
    for f in files:
        run = load_run(f)
        assert run.status == "finished", (f, run.message)
        summary = run.summary()
        for key in ("train_loss", "test_loss", "test_acc", "wall_time"):
            assert math.isfinite(summary[key]), (f, key, summary[key])
        assert np.isfinite(load_final(f)[0]).all()
    assert (out / f"{name}.png").stat().st_size > 10_000
    return files


def test_the_four_papers_are_registered():
    for name in ("mlp-mnist-newton", "cnn-cifar10-quasi-newton", "resnet18-mnist-hybrid", "sgdph-cifar10"):
        exp = catalog.get(name)
        assert exp.reported or name == "sgdph-cifar10"
        full = exp.specs(full=True)
        assert full and all(s.data.get("limit_batches") is None for s in full)
    # the papers' settings at full scale
    full = {s.method: s for s in catalog.get("resnet18-mnist-hybrid").specs(full=True)}
    assert len(full) == 50 and full["Hybrid#1"].model["kwargs"]["width"] == 1.0
    newton = {s.method: s for s in catalog.get("mlp-mnist-newton").specs(full=True)}
    assert newton["DampedNewton"].optimizer["kwargs"]["damping"] == 32.0
    assert newton["HF-GaussNewton"].optimizer["kwargs"]["damping"] == 4.0
    assert newton["Newton"].model["kwargs"]["sizes"][0] == 784 and newton["Newton"].epochs == 7


@pytest.mark.parametrize("first, second", [("papers", "catalog"), ("catalog", "papers")])
def test_papers_and_catalog_import_in_either_order(first, second):
    """No import cycle: a fresh interpreter imports the two in either order."""
    code = f"import experiments.{first}; import experiments.{second}"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_papers_do_not_import_the_catalog():
    code = "import sys, experiments.papers; assert 'experiments.catalog' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_one_spec_builder_and_one_experiment_record():
    """The catalog and every paper module use the one _spec (and Experiment) of papers.common."""
    assert catalog._spec is common._spec and catalog.Experiment is common.Experiment
    assert catalog.base_method is common.base_method
    for paper in papers.PAPERS:
        assert paper._spec is common._spec, paper.__name__
        assert isinstance(paper.EXPERIMENT, common.Experiment)
    defined = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "experiments").rglob("*.py"))
               if "def _spec(" in p.read_text(encoding="utf-8")]
    assert defined == ["experiments/papers/common.py"]


def test_scales_are_named_frozen_dataclasses():
    import dataclasses

    for paper in papers.PAPERS:
        scales = next(v for k, v in vars(paper).items() if k.endswith("_SCALES"))
        assert set(scales) == {"cpu", "full", "quick"}
        for scale in scales.values():
            assert dataclasses.is_dataclass(scale) and type(scale).__dataclass_params__.frozen


def test_mlp_mnist_newton(data_dir, tmp_path, capsys):
    out = _run("mlp-mnist-newton", data_dir, tmp_path, capsys)
    table = _table(out)
    assert [c.strip() for c in table[0].split("|")[1:4]] == ["method", "hyper", "wall_time"]
    assert "paper wall_time" in table[0] and "paper test_acc" in table[0]
    assert "21257.00" in out and "2.3050" in out and "0.1028" in out  # the paper's Newton row
    assert "λ 32" in out and "negative" in out and "dead ReLUs" in out
    _check_runs(tmp_path, "mlp-mnist-newton", len(mlp_mnist_newton.NEWTON_METHODS))
    report = json.loads((tmp_path / "mlp-mnist-newton_analysis.json").read_text())
    spec = report["init_spectrum"]
    assert spec["negative"] + spec["zero"] + spec["positive"] == report["n_parameters"] == 250
    assert spec["zero"] >= 5  # at least the softmax null directions (hidden 4 + 1)
    assert {e["method"] for e in report["end_of_training"]} == set(mlp_mnist_newton.NEWTON_METHODS)


def test_cnn_cifar10_quasi_newton_lbfgs_is_finite(data_dir, tmp_path, capsys):
    out = _run("cnn-cifar10-quasi-newton", data_dir, tmp_path, capsys)
    table = _table(out)
    assert "paper test_acc" in table[0] and "paper seconds_per_epoch" in table[0]
    lbfgs = next(line for line in table if line.startswith("| L-BFGS "))
    assert "NaN" in lbfgs  # the paper's L-BFGS beside ours
    assert "0.6400" in out and "8.28" in out
    _check_runs(tmp_path, "cnn-cifar10-quasi-newton", len(cnn_cifar10_quasi_newton.CNN_METHODS))
    run = load_run(tmp_path / "cnn-cifar10-quasi-newton__L-BFGS.h5")
    assert 0.0 <= run.summary()["test_acc"] <= 1.0 and np.isfinite(run.steps["loss"]).all()
    report = json.loads((tmp_path / "cnn-cifar10-quasi-newton_analysis.json").read_text())
    assert set(report) == {"L-BFGS", "L-BFGS-naive", "L-BFGS-torch"} and report["L-BFGS"]["status"] == "finished"


def test_resnet18_mnist_hybrid_repetitions(data_dir, tmp_path, capsys):
    out = _run("resnet18-mnist-hybrid", data_dir, tmp_path, capsys, "--optimizers", "SGD", "Hybrid")
    table = _table(out)
    assert "paper test_acc" in table[0] and "paper wall_time" in table[0]
    rows = {line.split("|")[1].strip(): line for line in table[1:]}
    assert set(rows) == {"SGD (x2)", "Hybrid (x2)"}
    assert "0.9420 ± 0.0079" in rows["Hybrid (x2)"] and "17.43" in rows["Hybrid (x2)"]
    assert rows["SGD (x2)"].count("±") >= 3  # ours (accuracy, loss, time) and the paper's accuracy
    assert "width 0.0625" in out and "switch" in out
    files = _check_runs(tmp_path, "resnet18-mnist-hybrid", 4)
    seeds = {load_run(f).config["seed"] for f in files}
    assert seeds == {0, 1}


def test_resnet18_mnist_hybrid_repetitions_as_a_sweep(data_dir, tmp_path, capsys):
    """sweep runs the repetitions of run as seeds (on a worker process): the same numbers, bit for bit, with
    the paper's numbers beside the table and the statistics after it."""
    _run("resnet18-mnist-hybrid", data_dir, tmp_path / "run", capsys, "--optimizers", "SGD")
    assert main(["sweep", "resnet18-mnist-hybrid", "--quick", "--no-verify", "--data-dir", str(data_dir),
                 "--optimizers", "sgd", "--workers", "1", "--out", str(tmp_path / "sweep")]) == 0
    out = capsys.readouterr().out
    assert "1 method (SGD) x 2 seeds (0,1) = 2 runs" in out and "0.8745 ± 0.0142" in out
    assert "statistics of test_acc over seeds" in out and "  SGD  n=2  " in out
    for r in (1, 2):
        run = load_run(tmp_path / "run" / f"resnet18-mnist-hybrid__SGD-{r}.h5")
        point = load_run(tmp_path / "sweep" / f"resnet18-mnist-hybrid__SGD__seed={r - 1}.h5")
        assert (run.config["method"], point.config["method"], point.config["seed"]) == (f"SGD#{r}", "SGD", r - 1)
        assert {**run.config, "method": "SGD"} == point.config
        assert run.steps["loss"].tobytes() == point.steps["loss"].tobytes()
        assert load_final(run.path)[0].tobytes() == load_final(point.path)[0].tobytes()


def test_sgdph_cifar10_offdiagonal_mass(data_dir, tmp_path, capsys):
    out = _run("sgdph-cifar10", data_dir, tmp_path, capsys,
               "--optimizers", "BN/SGD-momentum", "BN/SGD-PH", "BN/SGD-PH-exact", "WN/SGD-PH")
    assert "Off-diagonal mass" in out and "BN/SGD-PH-exact" in out and "diag exact" in out
    _check_runs(tmp_path, "sgdph-cifar10", 4)
    ep = load_run(tmp_path / "sgdph-cifar10__BN-SGD-PH.h5").epochs
    assert list(ep["epoch"]) == [0, 1]
    assert np.isfinite(ep["offdiag_mean"]).all() and (ep["offdiag_mean"] > 0).all()
    for other in ("BN-SGD-momentum", "BN-SGD-PH-exact", "WN-SGD-PH"):
        assert "offdiag_mean" not in load_run(tmp_path / f"sgdph-cifar10__{other}.h5").epochs
    report = json.loads((tmp_path / "sgdph-cifar10_analysis.json").read_text())
    assert set(report) == {"BN/SGD-PH"} and len(report["BN/SGD-PH"]["per_layer"]) == 8


def test_bn_block_curvature_agrees_with_the_objectives_block_products(data_dir):
    """Diagonal and row sums of the dense H_gg equal Objective.block_diag / block_row_sums."""
    spec = sgdph_cifar10.sgdph_specs(quick=True, methods=["BN/SGD-PH"])[0]
    spec.data["verify"] = False
    from experiments.runner import build_model
    from tinygrad2 import Objective

    model, splits = build_model(spec.model), load_splits(spec.data, data_dir, 0)
    X, y = next(splits.train.batches(16, seed=0, epoch=0))
    theta = model.init_theta(0)
    obj = Objective(model.apply, "cross_entropy", X, y, layout=model.layout())
    group = obj.layout.groups(kind="scale", ndim=1)[1]
    block = sgdph_cifar10.bn_block_curvature(obj, theta, [group], chunk=3)[group.name]
    diag = np.asarray(obj.block_diag(theta, group.name), dtype=np.float64)
    rowsum = np.asarray(obj.block_row_sums(theta, group.name), dtype=np.float64)
    dn = np.linalg.norm(diag)
    assert block["rowsum_error"] == pytest.approx(np.linalg.norm(rowsum - diag) / dn, rel=1e-3, abs=1e-6)
    assert block["offdiag_ratio"] > 0 and block["size"] == group.slice.stop - group.slice.start


def test_average_pooling_of_the_data(data_dir):
    full = load_splits({"name": "mnist", "verify": False}, data_dir)
    pooled = load_splits({"name": "mnist", "verify": False, "pool": 4}, data_dir)
    assert pooled.train.X.shape == (MNIST_TRAIN, 7, 7)
    np.testing.assert_allclose(pooled.train.X[3, 1, 2], full.train.X[3, 4:8, 8:12].mean(), rtol=1e-6)
