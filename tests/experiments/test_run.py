"""The run loop and the CLI end to end: a tiny run, report, plot, list;
SIGKILL mid-run and resume ends bit-identical to an uninterrupted run; a
damaged results file is refused and left alone; a NaN stops the run and keeps
the last good state."""
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import optimizers
from experiments.__main__ import main
from experiments.results import ResultsError, load_checkpoint, load_final, load_run
from experiments.runner import RunSpec, train

ROOT = Path(__file__).resolve().parents[2]


def small_spec(name="SGD", kwargs=None, epochs=2, **overrides):
    return RunSpec(
        experiment="test", method=name, model={"name": "MLP", "kwargs": {"sizes": [64, 8, 10]}},
        optimizer={"name": name, "kwargs": kwargs or {"lr": 0.1}},
        data={"name": "digits", "reshape": [-1], "limit_batches": 3}, epochs=epochs, batch_size=32,
        **overrides,
    )


def test_cli_list_names_the_main_job(capsys):
    assert main(["list"]) == 0
    assert "digits" in capsys.readouterr().out


def test_cli_tiny_run_then_report_and_plot(tmp_path, capsys):
    assert main(["run", "digits", "--quick", "--optimizers", "SGD", "Adam", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    files = sorted(tmp_path.glob("digits__*.h5"))
    assert [f.name for f in files] == ["digits__Adam.h5", "digits__SGD.h5"]
    assert "| method" in out and "test_acc" in out
    png = tmp_path / "digits.png"
    assert png.stat().st_size > 10_000
    for f in files:
        run = load_run(f)
        assert run.status == "finished"
        assert len(run.steps["loss"]) == 2  # --quick: two batches, one epoch
        assert 0.0 <= run.summary()["test_acc"] <= 1.0

    assert main(["report", *map(str, files)]) == 0
    report = capsys.readouterr().out
    assert "Adam" in report and "SGD" in report and "0.003" in report
    other = tmp_path / "again.png"
    assert main(["plot", *map(str, files), "--png", str(other)]) == 0
    assert other.stat().st_size > 10_000


def test_cli_rejects_an_unknown_experiment_and_method(tmp_path, capsys):
    assert main(["run", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert main(["run", "digits", "--optimizers", "Bogus", "--quick", "--out", str(tmp_path)]) == 2
    assert "Bogus" in capsys.readouterr().err


def test_run_logs_steps_and_epochs_and_is_deterministic(tmp_path):
    a = train(small_spec(), tmp_path / "a.h5", progress=False)
    b = train(small_spec(), tmp_path / "b.h5", progress=False)
    assert len(a.steps["loss"]) == 6 and list(a.epochs["epoch"]) == [0, 1, 2]
    np.testing.assert_array_equal(a.steps["loss"], b.steps["loss"])
    np.testing.assert_array_equal(load_final(tmp_path / "a.h5")[0], load_final(tmp_path / "b.h5")[0])
    c = train(small_spec(seed=1), tmp_path / "c.h5", progress=False)
    assert not np.array_equal(a.steps["loss"], c.steps["loss"])


SLOW_RUN = textwrap.dedent("""
    import sys, time
    import optimizers
    from experiments.runner import RunSpec, train

    class SlowSGD(optimizers.SGD):
        def step(self, objective, theta, state):
            time.sleep(0.03)
            return super().step(objective, theta, state)

    optimizers.SlowSGD = SlowSGD
    spec = RunSpec(experiment="kill", method="SlowSGD", model={"name": "MLP", "kwargs": {"sizes": [64, 16, 10]}},
                   optimizer={"name": "SlowSGD", "kwargs": {"lr": 0.05, "momentum": 0.9}},
                   data={"name": "digits", "reshape": [-1], "limit_batches": 8}, epochs=6, batch_size=32)
    train(spec, sys.argv[1], resume=sys.argv[2] == "resume", progress=False)
""")


def test_sigkill_mid_run_and_resume_is_bit_identical(tmp_path):
    script = tmp_path / "slow_run.py"
    script.write_text(SLOW_RUN)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    killed, whole = tmp_path / "killed.h5", tmp_path / "whole.h5"

    proc = subprocess.Popen([sys.executable, str(script), str(killed), "new"], env=env, cwd=ROOT)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # wait for the second epoch's checkpoint, then kill
            if killed.exists():
                try:
                    info = load_run(killed).checkpoint_info
                except (ResultsError, OSError):
                    info = None
                if info and info["epoch"] >= 2:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the run never reached its second checkpoint")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    interrupted = load_run(killed)
    assert interrupted.status == "running"
    assert 2 <= interrupted.checkpoint_info["epoch"] < 6

    for path, mode in ((killed, "resume"), (whole, "new")):
        subprocess.run([sys.executable, str(script), str(path), mode], env=env, cwd=ROOT, check=True, timeout=300)
    a, b = load_run(killed), load_run(whole)
    assert a.status == b.status == "finished"
    np.testing.assert_array_equal(load_final(killed)[0], load_final(whole)[0])
    for key in ("loss", "grad_norm"):
        np.testing.assert_array_equal(a.steps[key], b.steps[key])
    for key in ("epoch", "train_loss", "val_loss", "val_acc", "test_acc"):
        np.testing.assert_array_equal(a.epochs[key], b.epochs[key])


@pytest.mark.parametrize("damage", ["truncated", "checkpoint edited"])
def test_a_damaged_results_file_is_refused_and_left_alone(tmp_path, damage):
    path = tmp_path / "run.h5"
    train(small_spec(epochs=1), path, progress=False)
    if damage == "truncated":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    else:  # change the checkpoint's parameters behind its digest's back
        with h5py.File(path, "r+") as f:
            theta = f["checkpoint/theta"]
            theta[0] = theta[0] + 1.0
    before = path.read_bytes()
    with pytest.raises((ResultsError, OSError)) as err:
        train(small_spec(epochs=2), path, resume=True, progress=False)
    assert "run.h5" in str(err.value)
    assert path.read_bytes() == before


def test_a_nan_stops_the_run_and_keeps_the_last_good_state(tmp_path):
    class Exploding(optimizers.SGD):
        def step(self, objective, theta, state):
            theta, state, info = super().step(objective, theta, state)
            if state["step"] >= 4:
                theta = theta * float("nan")
            return theta, state, info

    optimizers.Exploding = Exploding
    try:
        path = tmp_path / "nan.h5"
        run = train(small_spec("Exploding", {"lr": 0.1}, epochs=3), path, progress=False)
    finally:
        del optimizers.Exploding
    assert run.status == "diverged"
    assert "non-finite parameters" in run.message and "epoch 2, step 4" in run.message
    final = load_final(path)[0]
    assert np.isfinite(final).all()
    # the last good checkpoint is epoch 1's, and the final parameters are those of step 3
    assert load_checkpoint(path).epoch == 1
    assert len(run.steps["loss"]) == 3
    assert all(math.isfinite(x) for x in run.steps["loss"])
