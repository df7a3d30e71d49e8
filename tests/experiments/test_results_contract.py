"""experiments.results: the contract of each function, one behaviour per test.

Written against the gaps of the mutation pass (docs/MUTATION.md): statuses after Ctrl-C and
clean exits, the timestamps and attributes written and read back, carry-over of the
checkpoint and the final parameters, list_runs, and the disk helpers (check_writable,
clean_temp_files, write_atomically and its test-only crash points, run in-process here)."""
from __future__ import annotations

import datetime
import errno
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import results as R

CONFIG = {"name": "adam-run", "lr": 0.001}


def iso_utc(text):
    """The timestamp parsed; it must be ISO 8601, whole seconds, UTC."""
    stamp = datetime.datetime.fromisoformat(text)
    assert stamp.utcoffset() == datetime.timedelta(0) and stamp.microsecond == 0 and text.endswith("+00:00")
    return stamp


def attrs(path, group="/"):
    import h5py

    with h5py.File(path, "r") as f:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in f[group].attrs.items()}


def groups(path):
    import h5py

    with h5py.File(path, "r") as f:
        return sorted(f)


def count_writes(monkeypatch, run):
    calls = []
    real = run._write

    def counting(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(run, "_write", counting)
    return calls


# ---------------------------------------------------------------- numbers and series


@pytest.mark.parametrize("value, expected", [
    (True, 1.0), (3, 3.0), (2.5, 2.5), (np.float32(0.5), 0.5), (np.int8(-2), -2.0), (np.bool_(False), 0.0),
    (np.array(4, dtype=np.int64), 4.0), (np.array(True), 1.0), (np.array(7, dtype=np.uint16), 7.0),
    (np.array(1.5, dtype=np.float32), 1.5),
])
def test_numeric_scalars_become_floats(value, expected):
    got = R._number(value)
    assert type(got) is float and got == expected


class ShapeOnly:
    shape = ()


class DtypeOnly:
    dtype = np.dtype("f8")


@pytest.mark.parametrize("value", [
    "1.0", None, [1.0], np.array([1.0]), np.zeros((1, 1)), np.array("x"), np.array(1 + 2j),
    np.array(None, dtype=object), ShapeOnly(), DtypeOnly(),
])
def test_anything_else_is_not_a_number(value):
    assert R._number(value) is None


def test_series_columns_truncate_and_types():
    s = R._Series("step")
    s.append(0, {"loss": 1.0, "step": 99})
    s.append(1, {"loss": 0.5, "extra": 2})
    s.append(2, {"note": "text"})
    assert len(s) == 3 and s.skipped == {"note"}
    a = s.arrays()
    assert a["step"].dtype == np.int64 and a["step"].tolist() == [0, 1, 2]
    assert a["loss"].dtype == np.float64
    np.testing.assert_array_equal(a["extra"], [np.nan, 2.0, np.nan])
    s.truncate(1)
    assert len(s) == 1 and {k: len(v) for k, v in s.arrays().items()} == {"step": 1, "loss": 1, "extra": 1}


# ---------------------------------------------------------------- the writer: statuses and attributes


def test_a_fresh_run_has_its_status_message_and_timestamps(tmp_path):
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    path = tmp_path / "sub" / "dir" / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    assert path.exists() and run.status == "running" and run.message == "" and run.final_metrics == {}
    got = R.load_run(path)
    assert got.status == "running" and got.message == "" and got.final_metrics == {}
    assert got.checkpoint_info is None and got.skipped_keys == []
    after = datetime.datetime.now(datetime.timezone.utc)
    assert before <= iso_utc(got.created) <= after and before <= iso_utc(got.updated) <= after
    assert got.created == run.created
    a = attrs(path)
    assert a["format"] == R.FORMAT == "tinygrad2.results/1"
    assert json.loads(a["versions"]) == R._versions()
    assert set(R._versions()) == {"python", "numpy", "h5py", "tinygrad2", "backend"}
    assert groups(path) == ["epochs", "steps"]


def test_updated_moves_and_created_stays_across_writes_and_resume(tmp_path):
    path = tmp_path / "run.h5"
    run = R.RunWriter("unused", CONFIG, R._Series("step"), R._Series("epoch"), created="2020-01-02T03:04:05+00:00")
    assert run.created == "2020-01-02T03:04:05+00:00" and run.status == "running" and run.message == ""
    run.path = path
    run._write(fresh=True)
    got = R.load_run(path)
    assert got.created == "2020-01-02T03:04:05+00:00" and iso_utc(got.updated).year >= 2026
    writer, ckpt = R.RunWriter.resume(path)
    assert ckpt is None and writer.created == "2020-01-02T03:04:05+00:00" and writer.status == "running"
    writer.flush()
    assert R.load_run(path).created == "2020-01-02T03:04:05+00:00"


@pytest.mark.parametrize("error, status", [(KeyboardInterrupt("stop now"), "interrupted"),
                                           (ValueError("bad batch"), "failed")], ids=["ctrl-c", "error"])
def test_an_exception_is_recorded_with_its_status_type_and_text_and_propagates(tmp_path, error, status):
    """Ctrl-C gives "interrupted", any other exception "failed"; the rows logged so far are kept."""
    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    run.log_step(0, {"loss": 1.0})
    with pytest.raises(type(error)) as raised:
        with run:
            raise error
    assert raised.value is error
    got = R.load_run(path)
    assert (got.status, got.message) == (status, f"{type(error).__name__}: {error}")
    assert got.steps["loss"].tolist() == [1.0]


def test_a_clean_exit_flushes_a_running_run_once_and_returns_false(tmp_path, monkeypatch):
    run = R.RunWriter.create(tmp_path / "run.h5", CONFIG)
    calls = count_writes(monkeypatch, run)
    run.log_epoch(0, {"val_loss": 1.0})
    assert run.__exit__(None, None, None) is False
    assert len(calls) == 1 and R.load_run(tmp_path / "run.h5").epochs["val_loss"].tolist() == [1.0]


def test_a_clean_exit_after_finish_does_not_write_again(tmp_path, monkeypatch):
    with R.RunWriter.create(tmp_path / "run.h5", CONFIG) as run:
        run.finish(np.ones(2), {"test_acc": 0.5})
        calls = count_writes(monkeypatch, run)
    assert calls == [] and R.load_run(tmp_path / "run.h5").status == "finished"


def test_a_write_error_is_not_written_again(tmp_path, monkeypatch):
    run = R.RunWriter.create(tmp_path / "run.h5", CONFIG)
    calls = count_writes(monkeypatch, run)
    err = R.WriteError(errno.ENOSPC, "could not write", "No space left on device")
    assert run.__exit__(R.WriteError, err, None) is False
    assert calls == [] and R.load_run(tmp_path / "run.h5").status == "running"


def test_a_status_that_cannot_be_recorded_is_reported_on_stderr(tmp_path, monkeypatch, capsys):
    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)

    def broken(**kw):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(run, "_write", broken)
    assert run.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None) is False
    assert capsys.readouterr().err == f"results: could not record the interrupted status in {path}: disk gone\n"
    assert run.__exit__(ValueError, ValueError("x"), None) is False
    assert capsys.readouterr().err == f"results: could not record the failed status in {path}: disk gone\n"


def test_the_writer_repr(tmp_path):
    run = R.RunWriter.create(tmp_path / "run.h5", CONFIG)
    run.log_step(0, {"loss": 1.0})
    run.log_step(1, {"loss": 1.0})
    run.log_epoch(0, {"loss": 1.0})
    assert repr(run) == f"RunWriter({str(tmp_path / 'run.h5')!r}, status='running', 2 step rows, 1 epoch rows)"


def test_flush_sets_status_and_message_only_when_given(tmp_path):
    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    run.flush(status="paused", message="waiting")
    run.flush()
    got = R.load_run(path)
    assert (got.status, got.message) == ("paused", "waiting")
    run.flush(message="")
    assert (R.load_run(path).status, R.load_run(path).message) == ("paused", "")


def test_skipped_keys_are_the_sorted_union_of_both_series(tmp_path):
    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    run.log_step(0, {"zeta": "a", "loss": 1.0})
    run.log_epoch(0, {"alpha": [1, 2], "val_loss": 1.0})
    run.flush()
    assert R.load_run(path).skipped_keys == ["alpha", "zeta"]
    writer, _ = R.RunWriter.resume(path)
    assert writer.steps.skipped == {"alpha", "zeta"}


# ---------------------------------------------------------------- checkpoint, finish, carry-over


def test_checkpoint_defaults_and_attributes(tmp_path):
    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    run.log_step(0, {"loss": 1.0})
    run.log_epoch(0, {"val_loss": 1.0})
    run.log_step(1, {"loss": 0.5})
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    run.checkpoint(np.arange(3.0), {"t": 1}, epoch=np.int64(1), step=2.0)
    a = attrs(path, "checkpoint")
    assert before <= iso_utc(a["written"]) <= datetime.datetime.now(datetime.timezone.utc)
    assert (a["epoch"], a["step"], a["wall_time"], a["n_step_rows"], a["n_epoch_rows"]) == (1, 2, 0.0, 2, 1)
    ckpt = R.load_checkpoint(path)
    assert type(ckpt.epoch) is int and type(ckpt.step) is int and ckpt.wall_time == 0.0
    assert ckpt.extra == {} and ckpt.rng_state is None and ckpt.buffers is None
    assert R.load_run(path).checkpoint_info == {"epoch": 1, "step": 2, "wall_time": 0.0, "n_step_rows": 2,
                                                "n_epoch_rows": 1, "n_probe_rows": 0}
    assert groups(path) == ["checkpoint", "epochs", "steps"]
    import h5py
    with h5py.File(path, "r") as f:
        assert sorted(f["checkpoint"]) == ["optimizer", "theta"]


def test_checkpoint_with_a_generator_buffers_and_extra(tmp_path):
    path = tmp_path / "run.h5"
    rng = np.random.default_rng(5)
    rng.random(3)
    run = R.RunWriter.create(path, CONFIG)
    run.checkpoint(np.ones(2, dtype=np.float32), {"t": 3}, epoch=1, step=4, wall_time=2.5, rng_state=rng,
                   buffers={"mean": np.zeros(2)}, extra={"batch": 7})
    ckpt = R.load_checkpoint(path)
    assert ckpt.wall_time == 2.5 and ckpt.extra == {"batch": 7} and list(ckpt.buffers) == ["mean"]
    assert ckpt.theta.dtype == np.float32
    resumed = R.generator_from_state(ckpt.rng_state)
    assert resumed.random() == rng.random()
    assert repr(ckpt) == "Checkpoint(epoch=1, step=4, wall_time=2.500, theta (2,), optimizer keys ['t'])"


def test_finish_keeps_non_numeric_metrics_and_sets_the_status(tmp_path):
    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    run.finish(metrics={"test_acc": np.float32(0.75), "n": np.array(3), "note": "early stop", "best": None})
    got = R.load_run(path)
    assert got.status == "finished"
    assert got.final_metrics == {"test_acc": 0.75, "n": 3.0, "note": "early stop", "best": None}
    assert type(got.final_metrics["n"]) is float
    assert "final" not in groups(path)
    with pytest.raises(R.ResultsError) as err:
        R.load_final(path)
    assert str(err.value) == f"results: {path} has no final parameters (status 'finished')"
    run.finish(np.ones(2), status="diverged")
    assert R.load_run(path).status == "diverged" and R.load_run(path).final_metrics == {}
    theta, buffers = R.load_final(path)
    assert theta.tolist() == [1.0, 1.0] and buffers is None


def test_flushes_carry_the_checkpoint_and_final_over(tmp_path):
    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    run.checkpoint(np.arange(2.0), {"t": 1}, epoch=1, step=1)
    run.finish(np.full(2, 3.0), buffers={"b": np.ones(1)})
    run.flush()
    assert groups(path) == ["checkpoint", "epochs", "final", "steps"]
    assert R.load_checkpoint(path).theta.tolist() == [0.0, 1.0]
    theta, buffers = R.load_final(path)
    assert theta.tolist() == [3.0, 3.0] and buffers["b"].tolist() == [1.0]
    run.checkpoint(np.arange(2.0) + 10, {"t": 2}, epoch=2, step=2)
    assert R.load_final(path)[0].tolist() == [3.0, 3.0] and R.load_checkpoint(path).step == 2


def test_discard_final_drops_the_final_group_on_the_next_write(tmp_path):
    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    run.checkpoint(np.zeros(2), {"t": 1}, epoch=1, step=1)
    run.finish(np.ones(2), {"test_acc": 0.5})
    writer, ckpt = R.RunWriter.resume(path)
    writer.flush()
    assert "final" in groups(path)  # carried over unless discarded
    writer.discard_final()
    writer.flush()
    assert groups(path) == ["checkpoint", "epochs", "steps"] and R.load_checkpoint(path).step == 1
    with pytest.raises(R.ResultsError, match="has no final parameters"):
        R.load_final(path)


def test_a_new_final_replaces_the_old_one_even_after_discard(tmp_path):
    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    run.finish(np.ones(2))
    run.discard_final()
    run.finish(np.full(2, 2.0))
    assert R.load_final(path)[0].tolist() == [2.0, 2.0]


def test_a_file_removed_under_the_writer_is_written_again_without_carry_over(tmp_path):
    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    run.checkpoint(np.zeros(2), {"t": 1}, epoch=1, step=1)
    path.unlink()
    run.flush()
    assert groups(path) == ["epochs", "steps"] and R.load_run(path).checkpoint_info is None


def test_carry_over_copies_only_the_named_groups_under_their_names(tmp_path):
    import h5py

    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    run.checkpoint(np.zeros(2), {"t": 1}, epoch=1, step=1)
    run.finish(np.ones(2))
    with h5py.File("mem", "w", driver="core", backing_store=False) as f:
        R._carry_over(path, f, ["final"])
        assert sorted(f) == ["final"] and f["final/theta"][()].tolist() == [1.0, 1.0]
    with h5py.File("mem2", "w", driver="core", backing_store=False) as f:
        R._carry_over(path, f, [])
        R._carry_over(tmp_path / "absent.h5", f, ["final"])
        assert sorted(f) == []


# ---------------------------------------------------------------- create, resume, readers


def test_create_refuses_an_existing_file_unless_overwrite(tmp_path):
    path = tmp_path / "run.h5"
    R.RunWriter.create(path, CONFIG).finish(np.ones(1))
    with pytest.raises(FileExistsError) as err:
        R.RunWriter.create(path, CONFIG)
    assert str(err.value) == (f"results: {path} already exists; resume it (RunWriter.resume), choose another "
                              f"name, or pass overwrite=True")
    R.RunWriter.create(path, {"name": "new"}, overwrite=True)
    got = R.load_run(path)
    assert got.config == {"name": "new"} and got.status == "running" and "final" not in groups(path)


def test_a_bad_config_fails_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError) as err:
        R.RunWriter.create(tmp_path / "new" / "run.h5", {"f": object()})
    assert str(err.value).startswith("results: a config value of type object (<object object at")
    assert not (tmp_path / "new").exists()
    with pytest.raises(TypeError) as err:
        R.RunWriter.create(tmp_path / "run.h5", [1, 2])
    assert str(err.value) == "results: config must be a dict, got list"


def test_json_default_for_config_values():
    assert R._json_default({3, 1, 2}) == [1, 2, 3] and R._json_default(frozenset({"b", "a"})) == ["a", "b"]
    assert R._json_default(np.int32(4)) == 4 and type(R._json_default(np.float32(0.5))) is float
    assert R._json_default(np.arange(2)) == [0, 1] and R._json_default(Path("/x/y")) == "/x/y"
    with pytest.raises(TypeError, match=r"^results: a config value of type complex \(\(1\+2j\)\) cannot be"):
        R._json_default(1 + 2j)
    assert R._config_json({"b": {2, 1}, "a": 1}) == '{"a": 1, "b": [1, 2]}'


def test_a_set_in_the_config_reads_back_as_a_sorted_list(tmp_path):
    R.RunWriter.create(tmp_path / "run.h5", {"tags": {"b", "a"}})
    assert R.load_run(tmp_path / "run.h5").config == {"tags": ["a", "b"]}


def test_run_label_last_summary_and_repr(tmp_path):
    R.RunWriter.create(tmp_path / "a.h5", {"label": "L", "name": "N"})
    R.RunWriter.create(tmp_path / "b.h5", {"name": "N"})
    R.RunWriter.create(tmp_path / "c.h5", {"label": "", "name": ""})
    assert [R.load_run(tmp_path / f"{x}.h5").label for x in "abc"] == ["L", "N", "c"]
    path = tmp_path / "d.h5"
    with R.RunWriter.create(path, {}) as run:
        run.log_step(0, {"loss": 1.0})
        run.log_epoch(0, {"val_loss": 2.0, "acc": 0.1})
        run.log_epoch(1, {"acc": 0.2})
        run.finish(metrics={"acc": 0.9})
    got = R.load_run(path)
    assert got.last("val_loss") == 2.0 and got.last("epoch") == 1 and got.last("loss", "steps") == 1.0
    assert got.summary() == {"val_loss": 2.0, "acc": 0.9}
    assert repr(got) == f"Run('d', status='finished', 1 steps, 2 epochs, path={str(path)!r})"


def test_list_runs_excludes_dot_files_and_other_names(tmp_path):
    for name in ("b.h5", "a.h5", ".hidden.h5", ".a.h5.abcdefgh.tmp", "notes.txt", "c.h5.bak"):
        (tmp_path / name).write_bytes(b"")
    assert R.list_runs(tmp_path) == [tmp_path / "a.h5", tmp_path / "b.h5"]
    assert R.list_runs(str(tmp_path)) == [tmp_path / "a.h5", tmp_path / "b.h5"]


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        R.load_run(tmp_path / "absent.h5")
    assert str(err.value) == f"results: {tmp_path / 'absent.h5'} does not exist"
    (tmp_path / "dir.h5").mkdir()
    with pytest.raises(R.ResultsError) as err:
        R.load_checkpoint(tmp_path / "dir.h5")
    assert str(err.value) == f"results: {tmp_path / 'dir.h5'} is a folder, not a results file"
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(R.ResultsError) as err:
        R.load_final(str(tmp_path / "junk.h5"))
    assert str(err.value).startswith(f"results: {tmp_path / 'junk.h5'} is not a readable HDF5 file (")
    assert str(err.value).endswith("); it is damaged and was left as it is: move it aside to run again "
                                   "under this name")
    R.RunWriter.create(tmp_path / "run.h5", CONFIG)
    with pytest.raises(R.ResultsError) as err:
        R.load_checkpoint(tmp_path / "run.h5")
    assert str(err.value) == f"results: {tmp_path / 'run.h5'} has no checkpoint"


def test_a_damaged_digest_message(tmp_path):
    import h5py

    path = tmp_path / "run.h5"
    R.RunWriter.create(path, CONFIG)
    with h5py.File(path, "r+") as f:
        f.attrs["status"] = "edited"
        recorded = f.attrs["digest"]
        actual = R._digest(f, skip=("checkpoint", "final"))
    with pytest.raises(R.ResultsError) as err:
        R.load_run(path)
    assert str(err.value) == (f"results: {path}: / is damaged (SHA-256 digest {actual} != recorded {recorded}); "
                              f"the file was left as it is: move it aside to run again under this name")


def test_the_other_format_message(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.attrs["format"] = "someone.else/2"
    with pytest.raises(R.ResultsError) as err:
        R.load_run(tmp_path / "x.h5")
    assert str(err.value) == (f"results: {tmp_path / 'x.h5'} is not a tinygrad2 results file "
                              f"(format attribute 'someone.else/2', expected 'tinygrad2.results/1')")


# ---------------------------------------------------------------- the disk


def test_write_atomically_puts_the_bytes_with_no_temp_left(tmp_path):
    path = tmp_path / "f.bin"
    R.write_atomically(str(path), b"abc" * 1000)
    assert path.read_bytes() == b"abc" * 1000 and sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_write_bytes_loops_over_short_writes(tmp_path, monkeypatch):
    real = os.write
    sizes = []

    def short(fd, view):
        sizes.append(len(view))
        return real(fd, view[:3])

    monkeypatch.setattr(R.os, "write", short)
    R.write_atomically(tmp_path / "f.bin", b"0123456789")
    monkeypatch.undo()
    assert (tmp_path / "f.bin").read_bytes() == b"0123456789" and sizes == [10, 7, 4, 1]


def test_a_failed_replace_is_a_write_error_and_removes_the_temp(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(R.os, "replace", refuse)
    with pytest.raises(R.WriteError) as err:
        R.write_atomically(path, b"new")
    monkeypatch.undo()
    assert err.value.errno == errno.EACCES and err.value.reason == "Permission denied"
    assert str(err.value) == f"could not write {path}: Permission denied; the previous file (if any) is left as it was"
    assert isinstance(err.value.__cause__, PermissionError)
    assert path.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_a_write_error_without_strerror_uses_the_text(tmp_path, monkeypatch):
    def refuse(fd):
        raise OSError("no sync")

    monkeypatch.setattr(R.os, "fsync", refuse)
    with pytest.raises(R.WriteError) as err:
        R.write_atomically(tmp_path / "f.bin", b"x")
    monkeypatch.undo()
    assert err.value.reason == "no sync" and str(err.value).startswith(f"could not write {tmp_path / 'f.bin'}: no sync;")
    assert os.listdir(tmp_path) == []


def test_the_temp_file_is_a_dot_file_beside_the_target(tmp_path):
    fd, tmp = R._make_temp(tmp_path / "run.h5")
    os.close(fd)
    tmp = Path(tmp)
    assert tmp.parent == tmp_path and tmp.name.startswith(".run.h5.") and tmp.name.endswith(".tmp")
    assert R.TEMP_PATTERN.match(tmp.name) and not R.TEMP_PATTERN.match("run.h5.abcdefgh.tmp")


def test_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert R._umask() == 0o027 and R._umask() == 0o027
    finally:
        os.umask(old)


class Crash(BaseException):
    pass


def fake_exit(code):
    raise Crash(code)


@pytest.mark.parametrize("point, replaced", [("mid_write", False), ("before_replace", False),
                                             ("after_replace", True)])
def test_the_crash_points_of_the_final_write(tmp_path, monkeypatch, point, replaced):
    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    before = path.read_bytes()
    monkeypatch.setenv(R.CRASH_ENV, point)
    temp_sizes = []

    def exit_and_measure(code):
        temp_sizes.extend(p.stat().st_size for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
        fake_exit(code)

    monkeypatch.setattr(R.os, "_exit", exit_and_measure)
    run.flush()  # only the write that records the final parameters crashes
    run.checkpoint(np.zeros(1), {}, epoch=0, step=0)
    before = path.read_bytes()
    with pytest.raises(Crash) as err:
        run.finish(np.ones(1))
    assert err.value.args == (137,)
    assert (path.read_bytes() != before) is replaced
    monkeypatch.delenv(R.CRASH_ENV)
    run.finish(np.ones(1))
    whole = path.stat().st_size
    assert temp_sizes == ([whole // 2] if point == "mid_write" else [whole] if point == "before_replace" else [])


def test_without_the_crash_test_flag_the_variable_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv(R.CRASH_ENV, "before_replace")
    monkeypatch.setattr(R.os, "_exit", fake_exit)
    R.write_atomically(tmp_path / "f.bin", b"data")
    assert (tmp_path / "f.bin").read_bytes() == b"data"


def test_check_writable_leaves_nothing_behind(tmp_path):
    assert R.check_writable(tmp_path) is None
    assert R.check_writable(str(tmp_path)) is None
    assert os.listdir(tmp_path) == []


def test_check_writable_refuses_a_missing_folder_and_a_file(tmp_path):
    with pytest.raises(R.WriteError) as err:
        R.check_writable(tmp_path / "absent")
    assert err.value.errno == errno.ENOENT and err.value.reason == "No such file or directory"
    assert str(err.value) == f"cannot write into {tmp_path / 'absent'}: No such file or directory"
    assert isinstance(err.value.__cause__, FileNotFoundError)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(R.WriteError) as err:
        R.check_writable(tmp_path / "file")
    assert err.value.errno == errno.ENOTDIR


def test_check_writable_reports_a_failed_unlink(tmp_path, monkeypatch):
    def refuse(p):
        raise OSError("cannot remove")

    monkeypatch.setattr(R.os, "unlink", refuse)
    with pytest.raises(R.WriteError) as err:
        R.check_writable(tmp_path)
    monkeypatch.undo()
    assert err.value.errno is None and err.value.reason == "cannot remove"
    assert str(err.value) == f"cannot write into {tmp_path}: cannot remove"


def test_clean_temp_files_keeps_new_temps_links_and_other_names(tmp_path):
    old = tmp_path / ".run.h5.abcd_123.tmp"
    new = tmp_path / ".run.h5.newer123.tmp"
    other = tmp_path / ".run.h5.abcd_123.tmpx"
    for p in (old, new, other):
        p.write_bytes(b"x")
    os.utime(old, (1, 1))
    os.utime(other, (1, 1))
    os.utime(new, (R._PROCESS_START + 60, R._PROCESS_START + 60))  # written after this process started
    link = tmp_path / ".lnk.h5.abcdefgh.tmp"
    link.symlink_to(old)
    os.utime(link, (1, 1), follow_symlinks=False)
    removed = R.clean_temp_files(str(tmp_path))
    assert removed == [old] and all(isinstance(p, Path) for p in removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == [link.name, other.name, new.name]
    assert R.clean_temp_files(tmp_path / "absent") == []
    assert R.clean_temp_files(tmp_path / new.name) == []  # a file, not a folder


def test_a_young_temp_file_of_another_name_may_be_a_write_in_flight(tmp_path, monkeypatch):
    """A sweep worker started later must not remove the temp file another worker is about to rename."""
    monkeypatch.setattr(R, "_PROCESS_START", time.time())  # a worker process that has just started
    other = tmp_path / ".digits__SGD__seed=1.h5.abcd1234.tmp"
    own = tmp_path / ".digits__SGD__seed=2.h5.efgh5678.tmp"
    for p in (other, own):
        p.write_bytes(b"x")
        os.utime(p, (R._PROCESS_START - 1, R._PROCESS_START - 1))  # before this process, but a second ago
    assert R.clean_temp_files(tmp_path, own="digits__SGD__seed=2.h5") == [own]
    assert other.exists()
    os.utime(other, (time.time() - R.TEMP_GRACE_SECONDS - 1,) * 2)
    assert R.clean_temp_files(tmp_path, own="digits__SGD__seed=2.h5") == [other]


def test_clean_temp_files_skips_what_it_cannot_stat(tmp_path, monkeypatch):
    a = tmp_path / ".a.h5.aaaaaaaa.tmp"
    b = tmp_path / ".b.h5.bbbbbbbb.tmp"
    for p in (a, b):
        p.write_bytes(b"x")
        os.utime(p, (1, 1))
    real = Path.unlink

    def unlink(self, *args, **kw):
        if self.name == a.name:
            raise PermissionError("no")
        return real(self, *args, **kw)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert R.clean_temp_files(tmp_path) == [b]
    assert a.exists() and not b.exists()


def test_quiet_swallows_only_os_errors():
    with R._quiet():
        raise FileNotFoundError("x")
    with pytest.raises(ValueError):
        with R._quiet():
            raise ValueError("y")


def test_fsync_dir_of_a_missing_folder_is_silent(tmp_path):
    assert R._fsync_dir(tmp_path / "absent") is None
    assert R._fsync_dir(tmp_path) is None


def test_now_is_utc_iso_seconds():
    iso_utc(R._now())


def test_generator_state_round_trip():
    g = np.random.default_rng(1)
    state = R.generator_state(g)
    assert state["bit_generator"] == "PCG64"
    assert R.generator_from_state(state).random() == g.random()


def sorted_iterdir(monkeypatch):
    """Make Path.iterdir list a folder in name order, so that a test can put one entry first."""
    real = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(real(self))))


def test_clean_temp_files_looks_past_other_names_and_failures(tmp_path, monkeypatch):
    sorted_iterdir(monkeypatch)
    names = [".a.h5", ".b.h5.aaaaaaaa.tmp", ".c.h5.cccccccc.tmp", ".d.h5.dddddddd.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (1, 1))
    real = Path.unlink

    def unlink(self, *args, **kw):
        if self.name == names[1]:
            raise PermissionError("no")
        return real(self, *args, **kw)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert R.clean_temp_files(tmp_path) == [tmp_path / names[2], tmp_path / names[3]]
    assert sorted(p.name for p in tmp_path.iterdir()) == names[:2]


def test_a_temp_file_from_the_moment_the_process_started_is_kept(tmp_path, monkeypatch):
    p = tmp_path / ".run.h5.abcdefgh.tmp"
    p.write_bytes(b"x")
    monkeypatch.setattr(R, "_PROCESS_START", p.stat().st_mtime)
    assert R.clean_temp_files(tmp_path) == [] and p.exists()


def test_write_error_defaults():
    err = R.WriteError(errno.EROFS, "could not write x")
    assert err.reason == "" and err.errno == errno.EROFS and str(err) == "could not write x"


def test_a_checkpoint_missing_a_part_under_a_valid_digest_is_damaged(tmp_path):
    import h5py

    path = tmp_path / "run.h5"
    R.RunWriter.create(path, CONFIG).checkpoint(np.zeros(2), {"t": 1}, epoch=1, step=1)
    with h5py.File(path, "r+") as f:
        del f["checkpoint/optimizer"]
        f["checkpoint"].attrs["digest"] = R._digest(f["checkpoint"])
    with pytest.raises(R.ResultsError) as err:
        R.load_checkpoint(path)
    assert str(err.value).startswith(f"results: {path}: damaged checkpoint (KeyError: ")
    assert str(err.value).endswith("); it was left as it is")


def test_a_group_that_cannot_be_hashed_is_reported_as_damaged(tmp_path, monkeypatch):
    path = tmp_path / "run.h5"
    R.RunWriter.create(path, CONFIG)

    def unreadable(group, skip=()):
        raise OSError("can't read data (inflate() failed)")

    monkeypatch.setattr(R, "_digest", unreadable)
    with pytest.raises(R.ResultsError) as err:
        R.load_run(path)
    assert str(err.value) == (f"results: {path}: / cannot be read (OSError: can't read data (inflate() failed)); "
                              f"the file is damaged and was left as it is")
    assert isinstance(err.value.__cause__, OSError)


def test_the_digest_scheme_is_fixed():
    """Files written earlier must still verify: the SHA-256 scheme (attribute and member prefixes,
    name order, skip only at the top level) is pinned by a known answer."""
    import h5py

    with h5py.File("kat", "w", driver="core", backing_store=False) as f:
        f.attrs["a"] = "text"
        f.attrs["n"] = np.int64(3)
        f.attrs["digest"] = "ignored"
        f["d"] = np.arange(3.0)
        g = f.create_group("g")
        g.attrs["x"] = 1.5
        g["final"] = np.ones(2, np.float32)  # not skipped: skip applies at the top only
        f.create_group("final")["theta"] = np.zeros(1)
        assert R._digest(f, skip=("final",)) == "ba7872ed552e56aa3cf6f48f379ad534e9b897544f5df5e8ec3a98c86c1f22fb"
        assert R._digest(f["g"]) == "de5c916e4f406729611de11864faef5836ede383f0893e05cdc77fc95c0fe9ff"


def test_the_in_memory_image_leaves_nothing_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = R.RunWriter.create(tmp_path / "runs" / "run.h5", CONFIG)
    run.checkpoint(np.zeros(2), {"t": 1}, epoch=0, step=0)
    run.finish(np.ones(2))
    assert os.listdir(tmp_path) == ["runs"] and os.listdir(tmp_path / "runs") == ["run.h5"]


def test_final_metrics_that_are_arrays_or_paths_are_stored_as_json(tmp_path):
    path = tmp_path / "run.h5"
    R.RunWriter.create(path, CONFIG).finish(metrics={"confusion": np.eye(2, dtype=int), "where": tmp_path})
    assert R.load_run(path).final_metrics == {"confusion": [[1, 0], [0, 1]], "where": str(tmp_path)}


def test_series_datasets_are_resizable_with_bounded_chunks(tmp_path):
    import h5py

    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    for i in range(70000):
        run.log_step(i, {})
    for i in range(5):
        run.log_epoch(i, {"val_loss": 1.0})
    run.flush()
    with h5py.File(path, "r") as f:
        assert f["steps/step"].chunks == (1 << 16,) and f["steps/step"].maxshape == (None,)
        assert f["epochs/epoch"].chunks == (1024,) and f["epochs/val_loss"].chunks == (1024,)
    run.steps.truncate(2000)
    run.flush()
    with h5py.File(path, "r") as f:
        assert f["steps/step"].chunks == (2000,)


def test_a_root_missing_an_attribute_under_a_valid_digest_is_damaged(tmp_path):
    import h5py

    path = tmp_path / "run.h5"
    R.RunWriter.create(path, CONFIG)
    with h5py.File(path, "r+") as f:
        del f.attrs["message"]
        f.attrs["digest"] = R._digest(f, skip=("checkpoint", "final"))
    with pytest.raises(R.ResultsError) as err:
        R.load_run(path)
    assert str(err.value).startswith(f"results: {path}: damaged or incomplete (KeyError: ")
    assert str(err.value).endswith("); it was left as it is")
