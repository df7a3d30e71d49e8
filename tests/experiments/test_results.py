"""experiments.results (one HDF5 file per run, atomic snapshots, checkpoints,
damage detection) and experiments.plots (PNG learning curves)."""
from __future__ import annotations

import hashlib
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from experiments import results as R
from optimizers.state import states_equal

CONFIG = {"paper": "adahessian", "optimizer": {"name": "Adam", "lr": 1e-3, "betas": [0.9, 0.999]},
          "data": {"name": "mnist-2pct", "seed": 0}, "epochs": 3, "label": "Adam lr 1e-3", "notes": None}


def opt_state(k):
    return {"m": np.full(5, k, dtype=np.float32), "v": np.arange(5, dtype=np.float64) * k,
            "t": k, "lr": 0.1 / 3, "nan": math.nan, "history": [np.ones(2) * k, "phase-a", None]}


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def temps(folder) -> list:
    return [p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp")]


def test_series_append_with_new_and_missing_keys_read_back(tmp_path):
    path = tmp_path / "run.h5"
    with R.RunWriter.create(path, CONFIG) as run:
        run.log_step(0, {"loss": 2.0, "grad_norm": 1.5})
        run.log_step(1, {"loss": 1.5, "grad_norm": 1.0, "cg_iters": 4, "phase": "adam", "ok": True})
        run.log_step(2, {"loss": np.float32(1.25), "damping": np.array(0.5)})
        run.log_epoch(0, {"val_loss": 2.2, "val_acc": 0.1})
        run.log_epoch(1, {"train_loss": 1.3, "val_loss": 1.4, "val_acc": 0.6, "wall_time": 1.5})
    got = R.load_run(path)
    assert got.status == "running" and got.config == CONFIG and got.label == "Adam lr 1e-3"
    s = got.steps
    assert s["step"].tolist() == [0, 1, 2] and s["step"].dtype == np.int64
    np.testing.assert_array_equal(s["loss"], [2.0, 1.5, 1.25])
    np.testing.assert_array_equal(s["grad_norm"], [1.5, 1.0, np.nan])
    np.testing.assert_array_equal(s["cg_iters"], [np.nan, 4, np.nan])
    np.testing.assert_array_equal(s["ok"], [np.nan, 1.0, np.nan])
    np.testing.assert_array_equal(s["damping"], [np.nan, np.nan, 0.5])
    assert "phase" not in s and got.skipped_keys == ["phase"]
    np.testing.assert_array_equal(got.epochs["train_loss"], [np.nan, 1.3])
    assert got.last("val_acc") == 0.6 and got.last("train_loss") == 1.3 and got.last("nope") is None
    assert got.summary()["val_loss"] == 1.4


def test_config_round_trip_with_numpy_values(tmp_path):
    config = {**CONFIG, "lr": np.float64(0.25), "sizes": np.arange(3), "dir": tmp_path, "flag": np.bool_(True)}
    R.RunWriter.create(tmp_path / "c.h5", config)
    back = R.load_run(tmp_path / "c.h5").config
    assert back == {**CONFIG, "lr": 0.25, "sizes": [0, 1, 2], "dir": str(tmp_path), "flag": True}
    with pytest.raises(TypeError, match="type object .* cannot be stored as JSON"):
        R.RunWriter.create(tmp_path / "bad.h5", {"x": object()})
    assert not (tmp_path / "bad.h5").exists()


def test_existing_file_is_never_overwritten_by_create(tmp_path):
    path = tmp_path / "run.h5"
    R.RunWriter.create(path, CONFIG)
    before = sha(path)
    with pytest.raises(FileExistsError, match="already exists"):
        R.RunWriter.create(path, {"other": 1})
    assert sha(path) == before


def write_run_with_checkpoint(path):
    """3 steps + 1 epoch, checkpoint at step 3; then 2 more steps + 1 epoch, flushed."""
    rng = np.random.default_rng(42)
    rng.random(7)
    run = R.RunWriter.create(path, CONFIG)
    for i in range(3):
        run.log_step(i, {"loss": 1.0 / (i + 1)})
    run.log_epoch(1, {"val_loss": 0.5, "wall_time": 2.0})
    theta = np.linspace(-1, 1, 11).astype(np.float32)
    buffers = {"bn.running_mean": np.arange(3.0), "bn.running_var": np.ones(3)}
    run.checkpoint(theta, opt_state(3), epoch=1, step=3, wall_time=2.5, rng_state=rng, buffers=buffers,
                   extra={"batch": 0, "best_val": 0.5})
    expected_draws = rng.random(4)
    for i in range(3, 5):
        run.log_step(i, {"loss": 0.1, "new_key": 1.0})
    run.log_epoch(2, {"val_loss": 0.4})
    run.flush()
    return theta, buffers, expected_draws


def test_checkpoint_resume_is_exact_and_truncates_the_series(tmp_path):
    path = tmp_path / "run.h5"
    theta, buffers, expected_draws = write_run_with_checkpoint(path)
    assert R.load_run(path).steps["step"].tolist() == [0, 1, 2, 3, 4]  # the file has the later rows too
    run, ckpt = R.RunWriter.resume(path)
    assert (ckpt.epoch, ckpt.step, ckpt.wall_time) == (1, 3, 2.5)
    assert ckpt.theta.dtype == np.float32 and ckpt.theta.tobytes() == theta.tobytes()
    assert states_equal(ckpt.opt_state, opt_state(3))
    assert states_equal(ckpt.buffers, buffers) and ckpt.extra == {"batch": 0, "best_val": 0.5}
    np.testing.assert_array_equal(R.generator_from_state(ckpt.rng_state).random(4), expected_draws)
    assert run.steps.columns["step"].tolist() == [0, 1, 2] and len(run.epochs) == 1  # rows after the checkpoint dropped
    run.log_step(3, {"loss": 0.2})
    run.finish(theta * 2, {"test_acc": 0.9, "name": "done"}, buffers=buffers)
    done = R.load_run(path)
    assert done.status == "finished" and done.steps["step"].tolist() == [0, 1, 2, 3]
    assert done.final_metrics == {"test_acc": 0.9, "name": "done"} and done.summary()["test_acc"] == 0.9
    final_theta, final_buffers = R.load_final(path)
    assert final_theta.tobytes() == (theta * 2).tobytes() and states_equal(final_buffers, buffers)
    assert R.load_checkpoint(path).step == 3  # carried over by finish


def test_run_without_checkpoint_resumes_from_scratch(tmp_path):
    path = tmp_path / "run.h5"
    with R.RunWriter.create(path, CONFIG) as run:
        run.log_step(0, {"loss": 1.0})
    run, ckpt = R.RunWriter.resume(path)
    assert ckpt is None and len(run.steps) == 0
    with pytest.raises(R.ResultsError, match="has no checkpoint"):
        R.load_checkpoint(path)
    with pytest.raises(R.ResultsError, match="no final parameters"):
        R.load_final(path)


def test_crash_during_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    run.log_step(0, {"loss": 1.0})
    run.checkpoint(np.ones(4), opt_state(1), epoch=1, step=1)
    before = sha(path)
    real_save = R.save_state

    def crash_mid_write(group, state):
        real_save(group, {"m": state["m"]})  # half of it is on disk...
        raise OSError("disk died mid-write")  # ...then the crash

    monkeypatch.setattr(R, "save_state", crash_mid_write)
    run.log_step(1, {"loss": 0.5})
    with pytest.raises(OSError, match="disk died"):
        run.checkpoint(np.zeros(4), opt_state(2), epoch=2, step=2)
    assert sha(path) == before and temps(tmp_path) == []
    ckpt = R.load_checkpoint(path)
    assert ckpt.step == 1 and states_equal(ckpt.opt_state, opt_state(1)) and ckpt.theta.tolist() == [1, 1, 1, 1]

    monkeypatch.setattr(R, "save_state", real_save)
    monkeypatch.setattr(R.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises(OSError, match="rename failed"):
        run.checkpoint(np.zeros(4), opt_state(2), epoch=2, step=2)
    assert sha(path) == before and temps(tmp_path) == []
    monkeypatch.undo()
    run.checkpoint(np.zeros(4), opt_state(2), epoch=2, step=2)  # the writer is still usable
    assert R.load_checkpoint(path).step == 2 and R.load_run(path).steps["step"].tolist() == [0, 1]


def damaged_copies(tmp_path):
    """(kind, path) for a truncated file, a flipped byte in theta, and a non-results file."""
    path = tmp_path / "good.h5"
    run = R.RunWriter.create(path, CONFIG)
    theta = np.arange(1000, dtype=np.float64) * 1.2345 + 7
    run.checkpoint(theta, opt_state(1), epoch=1, step=10)
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(raw[: len(raw) // 2])
    at = raw.find(theta[500:502].tobytes())
    assert at > 0
    flipped = tmp_path / "flipped.h5"
    flipped.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an HDF5 file" * 100)
    return {"truncated": truncated, "flipped": flipped, "garbage": garbage}


@pytest.mark.parametrize("kind", ["truncated", "flipped", "garbage"])
def test_damaged_file_gives_a_clear_error_and_is_left_alone(tmp_path, kind):
    path = damaged_copies(tmp_path)[kind]
    before = sha(path)
    with pytest.raises(R.ResultsError) as err:
        R.RunWriter.resume(path)
    assert str(path) in str(err.value) and "left as it is" in str(err.value)
    if kind == "flipped":
        assert "checkpoint is damaged" in str(err.value)
        assert R.load_run(path).config == CONFIG  # the series and config are intact and readable
    else:
        with pytest.raises(R.ResultsError, match=str(path)):
            R.load_run(path)
    with pytest.raises(FileExistsError):
        R.RunWriter.create(path, CONFIG)
    assert sha(path) == before and temps(tmp_path) == []


def test_other_hdf5_files_are_not_results(tmp_path):
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.ones(3)
    with pytest.raises(R.ResultsError, match="not a tinygrad2 results file"):
        R.load_run(tmp_path / "other.h5")
    with pytest.raises(FileNotFoundError):
        R.load_run(tmp_path / "absent.h5")


def test_context_manager_records_a_failure(tmp_path):
    path = tmp_path / "run.h5"
    with pytest.raises(RuntimeError):
        with R.RunWriter.create(path, CONFIG) as run:
            run.log_step(0, {"loss": 1.0})
            raise RuntimeError("diverged")
    got = R.load_run(path)
    assert got.status == "failed" and "diverged" in got.message and got.steps["loss"].tolist() == [1.0]
    assert R.list_runs(tmp_path) == [path]


# ---------------------------------------------------------------- plots


def png_size(path):
    raw = Path(path).read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def test_plot_runs_writes_a_png_of_the_right_size(tmp_path):
    from experiments.plots import plot_runs

    paths = []
    for k, name in enumerate(["sgd", "adahessian"]):
        path = tmp_path / f"{name}.h5"
        with R.RunWriter.create(path, {"name": name}) as run:
            for e in range(6):
                run.log_epoch(e, {"train_loss": 2.0 / (e + 1 + k), "val_loss": 2.2 / (e + 1 + k),
                                  "val_acc": 0.5 + 0.05 * e, "test_acc": 0.48 + 0.05 * e, "wall_time": 1.5 * e})
        paths.append(path)
    with R.RunWriter.create(tmp_path / "bare.h5", {}) as run:  # no wall time, no accuracy
        run.log_epoch(0, {"train_loss": -1.0})
    out = plot_runs(paths + [tmp_path / "bare.h5"], tmp_path / "figs" / "curves.png", title="MNIST 2%",
                    size=(8, 6), dpi=50)
    assert out == tmp_path / "figs" / "curves.png" and out.stat().st_size > 5000
    assert png_size(out) == (400, 300)
    with pytest.raises(ValueError, match="2 labels for 3 runs"):
        plot_runs(paths + [tmp_path / "bare.h5"], tmp_path / "x.png", labels=["a", "b"])
    os.remove(out)


# ---------------------------------------------------------------- the disk: full, permissions


def test_a_full_disk_is_an_ordinary_error_and_keeps_the_previous_file(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    run.checkpoint(np.ones(4), opt_state(1), epoch=1, step=1)
    before = sha(path)

    def full_disk(fd, data):
        os.write(fd, bytes(data[: len(data) // 3]))  # part of it fits, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(R, "_write_bytes", full_disk)
    with pytest.raises(R.WriteError) as err:
        with run:
            run.log_step(1, {"loss": 0.5})
            run.checkpoint(np.zeros(4), opt_state(2), epoch=2, step=2)
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert str(err.value) == (f"could not write {path}: No space left on device; the previous file (if any) "
                              f"is left as it was")
    assert sha(path) == before and temps(tmp_path) == []
    assert R.load_checkpoint(path).step == 1


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_results_files_get_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        R.RunWriter.create(tmp_path / "run.h5", CONFIG).flush()
        from experiments.plots import plot_runs
        plot_runs([tmp_path / "run.h5"], tmp_path / "run.png", size=(6, 4), dpi=20)
    finally:
        os.umask(old)
    assert (tmp_path / "run.h5").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "run.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_only_our_old_temp_files_are_cleaned(tmp_path):
    ours = tmp_path / ".run.h5.k2_x9AbZ.tmp"
    for p in (ours, tmp_path / "run.h5.k2_x9AbZ.tmp", tmp_path / ".run.h5.short.tmp"):
        p.write_bytes(b"x")
        os.utime(p, (1, 1))
    (tmp_path / ".dir.h5.abcdefgh.tmp").mkdir()
    assert R.clean_temp_files(tmp_path) == [ours]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dir.h5.abcdefgh.tmp", ".run.h5.short.tmp",
                                                          "run.h5.k2_x9AbZ.tmp"]
