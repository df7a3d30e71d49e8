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

from _helpers import npt

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
    npt.assert_array_equal(a.steps["loss"], b.steps["loss"])
    npt.assert_array_equal(load_final(tmp_path / "a.h5")[0], load_final(tmp_path / "b.h5")[0])
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
    npt.assert_array_equal(load_final(killed)[0], load_final(whole)[0])
    for key in ("loss", "grad_norm"):
        npt.assert_array_equal(a.steps[key], b.steps[key])
    for key in ("epoch", "train_loss", "val_loss", "val_acc", "test_acc"):
        npt.assert_array_equal(a.epochs[key], b.epochs[key])


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


# ---------------------------------------------------------------- resume, extend, overwrite, Ctrl-C

TIMING = ("step_time", "wall_time", "epoch_time", "seconds_per_epoch")


def assert_same_results(a_path, b_path):
    """The final parameters and every recorded series (timing columns aside) are bit-identical."""
    a, b = load_run(a_path), load_run(b_path)
    assert a.status == b.status == "finished"
    assert load_final(a_path)[0].tobytes() == load_final(b_path)[0].tobytes()
    for series in ("steps", "epochs"):
        x, y = getattr(a, series), getattr(b, series)
        assert set(x) == set(y), series
        for key in x:
            if key not in TIMING:
                assert x[key].tobytes() == y[key].tobytes(), (series, key)
    assert {k: v for k, v in a.final_metrics.items() if k not in TIMING} == \
        {k: v for k, v in b.final_metrics.items() if k not in TIMING}


def test_resume_refuses_other_settings_in_one_line(tmp_path):
    from experiments.runner import RunError

    path = tmp_path / "test__SGD.h5"
    train(small_spec(epochs=2), path, progress=False)
    before = path.read_bytes()
    with pytest.raises(RunError) as err:
        train(small_spec(epochs=4, seed=5), path, resume=True, progress=False)
    assert str(err.value) == ("resume: test__SGD.h5 was recorded with epochs 2, seed 0; this request has epochs 4, "
                              "seed 5 (pass the recorded settings, or --overwrite to start again)")
    with pytest.raises(RunError, match=r"optimizer.kwargs.lr 0.1; this request has optimizer.kwargs.lr 0.5"):
        train(small_spec(kwargs={"lr": 0.5}), path, resume=True, progress=False)
    with pytest.raises(RunError, match="--extend to add epochs"):
        train(small_spec(epochs=4), path, resume=True, progress=False)
    with pytest.raises(RunError, match=r"already holds 2 epochs; --epochs 1 would shorten it"):
        train(small_spec(epochs=1), path, resume=True, extend=True, progress=False)
    with pytest.raises(RunError, match=r"already exists \(status finished\); pass --resume .* or --overwrite"):
        train(small_spec(epochs=2), path, progress=False)
    assert path.read_bytes() == before
    assert train(small_spec(epochs=2), path, resume=True, progress=False).status == "finished"  # nothing to do
    assert path.read_bytes() == before
    train(small_spec(epochs=1), path, overwrite=True, progress=False)
    assert list(load_run(path).epochs["epoch"]) == [0, 1]


def test_extend_a_finished_run_equals_an_uninterrupted_longer_run(tmp_path):
    short, whole = tmp_path / "short.h5", tmp_path / "whole.h5"
    train(small_spec("SGD", {"lr": 0.05, "momentum": 0.9}, epochs=2), short, progress=False)
    run = train(small_spec("SGD", {"lr": 0.05, "momentum": 0.9}, epochs=4), short, resume=True, extend=True,
                progress=False)
    assert run.config["epochs"] == 4 and list(run.epochs["epoch"]) == [0, 1, 2, 3, 4]
    train(small_spec("SGD", {"lr": 0.05, "momentum": 0.9}, epochs=4), whole, progress=False)
    assert_same_results(short, whole)


def test_a_kill_inside_the_final_write_resumes_to_the_same_results(tmp_path, monkeypatch):
    """The checkpoint of the last epoch is on disk, the final write is not: resume only finishes."""
    from experiments import results as R

    class Killed(BaseException):
        pass

    real = R.write_atomically

    def die_in_final(path, data, *, crash_test=False):
        if crash_test:
            raise Killed()
        real(path, data)

    path, whole = tmp_path / "killed.h5", tmp_path / "whole.h5"
    monkeypatch.setattr(R, "write_atomically", die_in_final)
    with pytest.raises(Killed):
        train(small_spec(epochs=2), path, progress=False)
    monkeypatch.undo()
    assert load_run(path).status == "failed" and load_run(path).checkpoint_info["epoch"] == 2
    logged = []
    train(small_spec(epochs=2), path, resume=True, progress=False, log=logged.append)
    assert any("resuming after epoch 2" in line for line in logged)
    train(small_spec(epochs=2), whole, progress=False)
    assert_same_results(path, whole)


def test_long_steps_checkpoint_per_step_and_resume_mid_epoch_bit_identical(tmp_path):
    class Interrupted(optimizers.SGD):
        def step(self, objective, theta, state):
            if state["step"] == 4 and os.environ.get("INTERRUPT_AT_4"):
                raise KeyboardInterrupt
            return super().step(objective, theta, state)

    optimizers.Interrupted = Interrupted
    path, whole = tmp_path / "cut.h5", tmp_path / "whole.h5"
    try:
        os.environ["INTERRUPT_AT_4"] = "1"
        with pytest.raises(KeyboardInterrupt):  # checkpoint_seconds=0: every step counts as long
            train(small_spec("Interrupted", epochs=3), path, progress=False, checkpoint_seconds=0)
        del os.environ["INTERRUPT_AT_4"]
        cut = load_run(path)
        assert cut.status == "interrupted" and cut.checkpoint_info["step"] == 4  # no step lost
        assert load_checkpoint(path).extra["batch"] == 1 and cut.checkpoint_info["epoch"] == 1
        train(small_spec("Interrupted", epochs=3), path, resume=True, progress=False, checkpoint_seconds=0)
        train(small_spec("Interrupted", epochs=3), whole, progress=False)
    finally:
        os.environ.pop("INTERRUPT_AT_4", None)
        del optimizers.Interrupted
    assert_same_results(path, whole)


def test_temp_files_of_killed_writes_are_removed_by_the_next_run(tmp_path):
    old = [tmp_path / ".test__SGD.h5.a1b2c3d4.tmp", tmp_path / ".other.h5.zz_9YY00.tmp"]
    keep = [tmp_path / ".test__SGD.h5.tmp", tmp_path / "notes.tmp", tmp_path / ".young.h5.abcdefgh.tmp"]
    for p in old + keep:
        p.write_bytes(b"partial")
    for p in old + keep[:2]:
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    os.utime(keep[2], (time.time() + 3600, time.time() + 3600))  # newer than this process: not ours to remove
    logged = []
    train(small_spec(epochs=1), tmp_path / "test__SGD.h5", progress=False, log=logged.append)
    assert [p.exists() for p in old] == [False, False] and all(p.exists() for p in keep)
    assert any("removed 2 temp file(s)" in line for line in logged)


def test_ctrl_c_during_training_lands_at_the_next_safe_point(tmp_path):
    # SIGINT inside the loop (here: from the epoch hook, before the epoch row is written)
    # takes effect only after that epoch is logged and checkpointed, never inside a write
    def hook(epoch, theta, model, objective):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return {}

    path = tmp_path / "test__SGD.h5"
    with pytest.raises(KeyboardInterrupt):
        train(small_spec(epochs=3), path, progress=False, log=lambda line: None, on_epoch=hook)
    run = load_run(path)
    assert run.status == "interrupted"
    assert list(run.epochs["epoch"]) == [0, 1] and run.checkpoint_info is not None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_ctrl_c_prints_the_resume_command_and_exits_130(tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "experiments", "run", "digits", "--optimizers", "SGD", "--epochs", "400",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    path, deadline = out / "digits__SGD.h5", time.time() + 60
    try:
        while time.time() < deadline:
            try:
                if load_run(path).checkpoint_info:
                    break
            except (ResultsError, OSError):
                pass
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.splitlines() == [f"interrupted; resume with: python -m experiments run digits --optimizers SGD "
                                f"--epochs 400 --out {out} --resume"]
    assert load_run(path).status == "interrupted"
    assert main(["run", "digits", "--optimizers", "SGD", "--epochs", "400", "--out", str(out)]) == 2  # no silent restart


def test_report_does_not_average_unrelated_runs(tmp_path, capsys):
    from experiments.results import RunWriter

    def fake(name, experiment, seed, epochs, acc):
        config = {"experiment": experiment, "method": "Adam", "optimizer": {"name": "Adam", "kwargs": {"lr": 0.001}},
                  "seed": seed, "epochs": epochs, "data": {"name": experiment}}
        with RunWriter.create(tmp_path / name, config) as run:
            run.log_epoch(epochs, {"test_acc": acc, "train_loss": 1.0})
            run.finish(np.zeros(2), {"test_acc": acc})
        return str(tmp_path / name)

    cifar = fake("c.h5", "cnn-cifar10-quasi-newton", 0, 5, 0.4555)
    digits = [fake(f"d{s}.h5", "digits", s, 10, 0.9 + s / 100) for s in (0, 1)]
    longer = fake("d_long.h5", "digits", 0, 20, 0.95)
    assert main(["report", cifar, *digits, longer]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert "experiment" in rows[0] and "seed" in rows[0] and "epochs" in rows[0] and "paper test_acc" in rows[0]
    cells = [[c.strip() for c in r.split("|")[1:-1]] for r in rows]
    header = cells[0]
    table = {(r[0], r[header.index("epochs")]): dict(zip(header, r)) for r in cells[1:]}
    assert set(table) == {("cnn-cifar10-quasi-newton", "5"), ("digits", "10"), ("digits", "20")}
    assert table["cnn-cifar10-quasi-newton", "5"]["paper test_acc"] == "0.6200"
    assert table["cnn-cifar10-quasi-newton", "5"]["method"] == "Adam"
    assert table["digits", "10"]["method"] == "Adam (x2)" and table["digits", "10"]["seed"] == "0,1"
    assert table["digits", "10"]["test_acc"] == "0.9050 ± 0.0071" and table["digits", "10"]["paper test_acc"] == "-"
    assert table["digits", "20"]["test_acc"] == "0.9500" and table["digits", "20"]["paper test_acc"] == "-"
