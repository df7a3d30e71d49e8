"""Curvature probes (experiments.probes): each against dense linear algebra on a
small net in float64; forecasts skip, never crash; the run loop records them
at step 0, every N steps and the last step, and a resumed run continues the
series exactly."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import nets
import optimizers
from experiments import catalog, probes, runner
from experiments.__main__ import main
from experiments.probes import ProbeContext, run_probes

pytestmark = pytest.mark.usefixtures("float64")


def small(rng, activation="tanh", batch=24):
    model = nets.MLP((5, 6, 3), activation=activation)
    X = rng.standard_normal((batch, 5))
    obj = model.objective("cross_entropy", X, (X @ rng.standard_normal((5, 3))).argmax(axis=1))
    return model, obj, model.init_theta(1)


def measure(name, ctx, **kw):
    values = run_probes([name], ctx, **kw)
    return {k: v for k, v in values.items() if not k.startswith("time:")}


# ---------------------------------------------------------------- against dense linear algebra


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_spectrum_probes_match_eigh(rng):
    _, obj, theta = small(rng)
    ctx = ProbeContext(obj, theta, step=3)
    eig = np.linalg.eigvalsh(obj.hessian(theta))
    top = measure("lambda_max", ctx)
    np.testing.assert_allclose([top[f"lambda_max:{i}"] for i in range(3)], eig[::-1][:3], rtol=1e-8)
    assert measure("lambda_min", ctx)["lambda_min"] == pytest.approx(eig[0], rel=1e-8)
    assert measure("ggn_lambda_max", ctx)["ggn_lambda_max"] == pytest.approx(
        np.linalg.eigvalsh(obj.ggn(theta))[-1], rel=1e-8)
    trace = measure("trace", ctx)
    assert 0 < trace["trace:stderr"] and abs(trace["trace"] - eig.sum()) <= 5 * trace["trace:stderr"]
    density = measure("density", ctx)
    nodes = np.array([v for k, v in density.items() if ":node" in k])
    weights = np.array([v for k, v in density.items() if ":weight" in k])
    assert weights.sum() == pytest.approx(1.0, rel=1e-12)
    # SLQ estimates tr(H^k)/n; with 4 Rademacher probes that is a Hutchinson estimate: within 50%
    assert (weights * nodes ** 2).sum() == pytest.approx((eig ** 2).mean(), rel=0.5)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_sharpness_ratio_is_lr_times_lambda_max(rng):
    _, obj, theta = small(rng)
    ctx = ProbeContext(obj, theta, optimizer=optimizers.SGD(lr=0.3), info={"lr": 0.3})
    assert measure("sharpness_ratio", ctx)["sharpness_ratio"] == pytest.approx(
        0.3 * np.linalg.eigvalsh(obj.hessian(theta))[-1], rel=1e-8)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_grad_noise_from_the_same_batches(rng):
    _, obj, theta = small(rng)
    batches = [(rng.standard_normal((4, 5)), rng.integers(0, 3, 4)) for _ in range(probes.NOISE_BATCHES)]
    ctx = ProbeContext(obj, theta, batches=lambda count, seed: batches[:count])
    got = measure("grad_noise", ctx)
    G = np.stack([obj.with_batch(X, y).grad(theta) for X, y in batches])
    var = ((G - G.mean(0)) ** 2).sum() / (len(G) - 1)
    assert got["grad_noise:trace_sigma"] == pytest.approx(4 * var, rel=1e-10)
    g2 = G.mean(0) @ G.mean(0) - var / len(G)
    assert got["grad_noise:g2"] == pytest.approx(g2, rel=1e-10)
    assert got["grad_noise:b_simple"] == pytest.approx(4 * var / g2, rel=1e-10)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_diag_error_of_adahessian_against_the_exact_diagonal(rng):
    _, obj, theta0 = small(rng)
    opt = optimizers.AdaHessian(lr=0.01, seed=2)
    theta1, state, info = opt.step(obj, theta0, opt.init(theta0))
    got = measure("diag_error", ProbeContext(obj, theta1, 1, prev_theta=theta0, optimizer=opt, state=state, info=info))
    exact = opt.average(np.abs(np.diag(obj.hessian(theta0))), obj.layout)
    want = np.linalg.norm(state["D"] - exact) / np.linalg.norm(exact)
    assert got["diag_error"] == pytest.approx(want, rel=1e-10)
    rms = np.sqrt(state["v"] / (1 - opt.betas[1]))
    assert got["diag_error:rms"] == pytest.approx(np.linalg.norm(rms - exact) / np.linalg.norm(exact), rel=1e-10)
    assert {k for k in got if k.startswith("diag_error:")} - {"diag_error:rms"} == \
        {f"diag_error:{p.name}" for p in obj.layout}


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_newton_cosine_is_one_for_newtons_own_step_and_lbfgs_pairs_agree_on_a_quadratic(rng):
    model = nets.MLP((5, 3), activation="tanh")  # softmax regression: convex, H = G
    X = rng.standard_normal((30, 5))
    obj = model.objective("cross_entropy", X, rng.integers(0, 3, 30))
    theta0 = model.init_theta(0)
    opt = optimizers.DampedNewton(damping=1e-6, adapt="fixed")
    theta1, state, info = opt.step(obj, theta0, opt.init(theta0))
    got = measure("newton_cosine", ProbeContext(obj, theta1, 1, prev_theta=theta0, optimizer=opt, state=state))
    assert got["newton_cosine:newton"] > 1 - 1e-6 and got["newton_cosine:gauss_newton"] > 1 - 1e-6
    sgd = theta0 - 0.1 * obj.grad(theta0)
    assert measure("newton_cosine", ProbeContext(obj, sgd, 1, prev_theta=theta0))["newton_cosine:newton"] < 0.99

    from tinygrad2 import Quadratic
    q = Quadratic(np.diag([1.0, 3.0, 10.0]), np.ones(3))
    lbfgs = optimizers.LBFGS(history_size=3)
    x0 = np.array([1.0, -2.0, 0.5])
    x1, st, _ = lbfgs.step(q, x0, lbfgs.init(x0))
    pair = measure("newton_cosine", ProbeContext(q, x1, 1, prev_theta=x0, optimizer=lbfgs, state=st))
    assert pair["newton_cosine:lbfgs_sHs"] == pytest.approx(pair["newton_cosine:lbfgs_sy"], rel=1e-10)

    hf = optimizers.HessianFree(damping=1e-3)
    x1, st, info = hf.step(q, x0, hf.init(x0))
    got = measure("newton_cosine", ProbeContext(q, x1, 1, prev_theta=x0, optimizer=hf, state=st, info=info))
    assert got["newton_cosine:cg_residual"] == info["cg_residual"] and got["newton_cosine:newton"] > 0.999


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_grad_spectral_norm_per_matrix_and_per_filter(rng):
    model = nets.Sequential(nets.Conv2d(2, 3, 3), nets.Tanh(), nets.Flatten(), nets.Linear(12, 3))
    obj = model.objective("cross_entropy", rng.standard_normal((4, 2, 4, 4)), rng.integers(0, 3, 4))
    theta = model.init_theta(0)
    got = measure("grad_spectral_norm", ProbeContext(obj, theta))
    parts = obj.layout.unflatten(obj.grad(theta))
    assert got["grad_spectral_norm:3.weight"] == pytest.approx(np.linalg.norm(parts["3.weight"], 2), rel=1e-12)
    per_filter = [np.linalg.norm(parts["0.weight"][o].reshape(2, 9), 2) for o in range(3)]
    assert got["grad_spectral_norm:0.weight"] == pytest.approx(np.mean(per_filter), rel=1e-12)
    assert set(got) == {"grad_spectral_norm:0.weight", "grad_spectral_norm:3.weight"}


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_dead_units_counts_relus_that_never_fire(rng):
    model, obj, theta = small(rng, activation="relu")
    theta = theta.copy()
    bias = obj.layout["1.bias"].slice
    theta[bias.start: bias.start + 2] = -1e3  # two of the six hidden units never fire
    assert measure("dead_units", ProbeContext(obj, theta)) == {"dead_units:3": pytest.approx(2 / 6)}


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_offdiag_mass_of_each_small_block(rng):
    _, obj, theta = small(rng)
    H = obj.hessian(theta)
    got = measure("offdiag_mass", ProbeContext(obj, theta))
    for p in obj.layout:
        block = H[p.slice, p.slice]
        want = np.linalg.norm(block - np.diag(np.diag(block))) / np.linalg.norm(np.diag(block))
        assert got[f"offdiag_mass:{p.name}"] == pytest.approx(want, rel=1e-10)


# ---------------------------------------------------------------- forecasts and names


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_a_probe_over_budget_is_skipped_with_one_line(rng):
    _, obj, theta = small(rng)
    lines, skipped = [], {}
    ctx = ProbeContext(obj, theta, 2, prev_theta=theta - 0.01, optimizer=optimizers.SGD(lr=0.1))
    values = run_probes(["newton_cosine", "lambda_max", "diag_error"], ctx, skipped, max_products=60, log=lines.append)
    assert "lambda_max:0" in values and not any(k.startswith("newton_cosine") for k in values)
    assert lines == [
        f"probe newton_cosine skipped: it needs about {2 * obj.layout.n} curvature products per call "
        f"(n = {obj.layout.n}), over the budget of 60",
        "probe diag_error skipped: SGD keeps no Hessian-diagonal estimate (AdaHessian, SGD-PH, Hybrid do)"]
    run_probes(["newton_cosine", "diag_error"], ctx, skipped, max_products=60, log=lines.append)
    assert len(lines) == 2  # said once per run


def test_unknown_and_repeated_names_are_refused():
    with pytest.raises(ValueError, match="unknown probes bogus, nope; choose from lambda_max, "):
        probes.check_names("lambda_max,bogus,nope")
    with pytest.raises(ValueError, match="named twice"):
        probes.check_names(["trace", "trace"])


# ---------------------------------------------------------------- in the run loop


def digits_spec(method="AdaHessian", epochs=2, names=("lambda_max", "diag_error", "grad_noise"), every=7):
    spec = [s for s in catalog.get("digits").specs(epochs=epochs) if s.method == method][0]
    return dataclasses.replace(spec, dtype="float64", probes={"names": list(names), "every": every, "batch": 64})


def without_time(run):
    return {k: v for k, v in run.probes.items() if not k.startswith("time:")}


def test_the_run_records_probes_at_zero_every_n_and_the_last_step(tmp_path):
    run = runner.train(digits_spec(), tmp_path / "a.h5", progress=False, log=lambda *_: None)
    steps = run.probes["step"]
    last = int(run.steps["step"][-1])
    assert list(steps) == list(range(0, last, 7)) + [last]
    assert np.isnan(run.probes["diag_error"][0]) and np.isfinite(run.probes["diag_error"][1:]).all()
    assert len(run.probe_batch) == 64 and run.probe_batch == sorted(set(run.probe_batch))
    _, values, labels = run.probe("lambda_max")
    assert values.shape == (len(steps), 3) and labels == ["0", "1", "2"]
    assert "probes" not in runner.comparable_settings(run.config) and run.config["probes"]["every"] == 7


def test_probes_do_not_change_the_training(tmp_path):
    plain = runner.train(dataclasses.replace(digits_spec(), probes=None), tmp_path / "p.h5", progress=False)
    probed = runner.train(digits_spec(), tmp_path / "q.h5", progress=False, log=lambda *_: None)
    assert np.array_equal(plain.steps["loss"], probed.steps["loss"])
    assert plain.probes == {} and "probes" not in plain.config


def test_a_resumed_run_continues_the_probe_series_exactly(tmp_path):
    whole = runner.train(digits_spec(epochs=2), tmp_path / "whole.h5", progress=False, log=lambda *_: None)
    runner.train(digits_spec(epochs=1), tmp_path / "part.h5", progress=False, log=lambda *_: None)
    resumed = runner.train(digits_spec(epochs=2), tmp_path / "part.h5", resume=True, extend=True, progress=False,
                           log=lambda *_: None)
    a, b = without_time(whole), without_time(resumed)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_the_cli_takes_probes_and_refuses_bad_ones(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "digits", "--optimizers", "SGD", "--epochs", "1", "--out", str(out),
                 "--probes", "lambda_max,sharpness_ratio", "--probe-every", "5", "--probe-batch", "32"]) == 0
    from experiments.results import load_run
    run = load_run(out / "digits__SGD.h5")
    assert run.config["probes"] == {"names": ["lambda_max", "sharpness_ratio"], "every": 5, "batch": 32}
    np.testing.assert_allclose(run.probe("sharpness_ratio")[1][:, 0], 0.1 * run.probe("lambda_max")[1][:, 0],
                               rtol=1e-6)
    assert main(["run", "digits", "--optimizers", "SGD", "--out", str(out), "--probes", "lambda_max,bad"]) == 2
    assert "run: --probes: unknown probe bad; choose from" in capsys.readouterr().err
    assert main(["run", "digits", "--optimizers", "SGD", "--out", str(out), "--probe-every", "5"]) == 2
    assert "--probe-every and --probe-batch need --probes" in capsys.readouterr().err


def test_the_curvature_study_runs_at_quick_scale(tmp_path, capsys):
    import os
    if not os.environ.get("TINYGRAD2_DATA"):
        pytest.skip("needs the real MNIST ($TINYGRAD2_DATA)")
    assert main(["run", "curvature-study", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "SGD-lr2: λ_max" in out and "AdaHessian:" in out and "diag error" in out
    from experiments.results import load_run
    for path in sorted(tmp_path.glob("curvature-study__*.h5")):
        run = load_run(path)
        assert list(run.probes["step"]) == [0, 1, 2] and len(run.probe_batch) == 100


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_sharpness_ratio_is_decided_by_the_probe_not_by_when_the_prober_starts(rng):
    """At step 0 a method that picks its own step has no lr yet: NaN, not a skip, so a prober that starts
    later (a resumed run) records the same columns as one that ran from step 0."""
    _, obj, theta = small(rng)
    fresh = probes.Prober(["sharpness_ratio"], obj, every=5, log=None)
    at0 = fresh(0, theta, optimizer=optimizers.KFAC())
    assert np.isnan(at0["sharpness_ratio"]) and at0["sharpness_ratio:lr"] != at0["sharpness_ratio:lr"]
    later = fresh(5, theta, prev_theta=theta, optimizer=optimizers.KFAC(), info={"lr": 0.5})
    resumed = probes.Prober(["sharpness_ratio"], obj, every=5, log=None)
    again = resumed(5, theta, prev_theta=theta, optimizer=optimizers.KFAC(), info={"lr": 0.5})
    assert later.keys() == again.keys() and later["sharpness_ratio"] == again["sharpness_ratio"] > 0
    assert fresh.skipped == {} == resumed.skipped


def test_a_kill_before_the_final_write_keeps_the_last_probe_row(tmp_path, monkeypatch):
    """The last step's probes are taken before the final checkpoint, so a resume after a kill between that
    checkpoint and the final write has nothing to redo and loses no column (diag_error needs the last step)."""
    from experiments.results import RunWriter

    whole = runner.train(digits_spec(epochs=1), tmp_path / "whole.h5", progress=False, log=lambda *_: None)
    real, calls = RunWriter.finish, []

    def dies_once(self, *args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("killed before the final write")
        return real(self, *args, **kw)

    monkeypatch.setattr(RunWriter, "finish", dies_once)
    with pytest.raises(RuntimeError, match="killed before"):
        runner.train(digits_spec(epochs=1), tmp_path / "part.h5", progress=False, log=lambda *_: None)
    resumed = runner.train(digits_spec(epochs=1), tmp_path / "part.h5", resume=True, progress=False,
                           log=lambda *_: None)
    a, b = without_time(whole), without_time(resumed)
    assert a.keys() == b.keys() and np.isfinite(a["diag_error"][-1])
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_resume_with_another_probe_batch_is_refused(tmp_path):
    runner.train(digits_spec(epochs=1), tmp_path / "a.h5", progress=False, log=lambda *_: None)
    other = digits_spec(epochs=2)
    other.probes = dict(other.probes, batch=32)
    with pytest.raises(runner.RunError, match=r"probed on another probe batch \(64 examples\); resume with its "
                                              r"--probe-batch 64"):
        runner.train(other, tmp_path / "a.h5", resume=True, extend=True, progress=False, log=lambda *_: None)
