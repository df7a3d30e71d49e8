"""Integrity checks that only show on inputs the other tests never make:
MD5 of files larger than one read block (experiments.data.md5sum), and
results files edited in place, behind the digests' back, while staying valid
HDF5 (experiments.results: the root, ``checkpoint`` and ``final`` digests)."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from experiments import data as D
from experiments import results as R
from optimizers.state import states_equal

MIB = 1 << 20


# ================================================================ md5sum past the first block


def several_mib(tmp_path, name, size=3 * MIB + 12345, flip_at=None):
    """A file of ``size`` pseudo-random bytes; with ``flip_at`` one byte there inverted."""
    raw = bytearray(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    if flip_at is not None:
        raw[flip_at] ^= 0xFF
    path = tmp_path / name
    path.write_bytes(bytes(raw))
    return path


def test_md5sum_hashes_the_whole_file_not_its_first_block(tmp_path):
    original = several_mib(tmp_path, "a.bin")
    # one byte changed in the second, the last full and the final partial block
    for at in (MIB + 17, 3 * MIB - 1, 3 * MIB + 12344):
        changed = several_mib(tmp_path, f"b{at}.bin", flip_at=at)
        assert D.md5sum(changed) == hashlib.md5(changed.read_bytes()).hexdigest()
        assert D.md5sum(changed) != D.md5sum(original)
    assert D.md5sum(original) == hashlib.md5(original.read_bytes()).hexdigest()


@pytest.mark.parametrize("chunk_size", [1, 4096, MIB - 1, MIB, MIB + 1, 8 * MIB])
def test_md5sum_does_not_depend_on_the_chunk_size(tmp_path, chunk_size):
    size = 2 * MIB + 3 if chunk_size > 1 else 5000  # one byte per read: keep it small
    path = several_mib(tmp_path, "c.bin", size=size)
    assert D.md5sum(path, chunk_size=chunk_size) == hashlib.md5(path.read_bytes()).hexdigest()


def test_verify_md5_rejects_a_file_damaged_after_the_first_mib(tmp_path):
    good = several_mib(tmp_path, "good.bin")
    expected = hashlib.md5(good.read_bytes()).hexdigest()
    D.verify_md5(good, expected, dataset="mnist", root=tmp_path)
    bad = several_mib(tmp_path, "bad.bin", flip_at=2 * MIB + 5)
    with pytest.raises(D.ChecksumError, match="checksum mismatch"):
        D.verify_md5(bad, expected, dataset="mnist", root=tmp_path)


# ================================================================ results edited in place

CONFIG = {"optimizer": {"name": "SGD", "lr": 0.1}, "epochs": 2, "label": "integrity"}


def finished_run(path):
    """A run with series, a checkpoint and final parameters + buffers; returns what was written."""
    theta = np.linspace(-2.0, 3.0, 257)
    final = theta * 0.5
    buffers = {"bn.running_mean": np.arange(4.0), "bn.running_var": np.full(4, 2.0)}
    opt_state = {"m": np.arange(257.0) / 7, "t": 3, "lr": 0.1}
    run = R.RunWriter.create(path, CONFIG)
    for i in range(4):
        run.log_step(i, {"loss": 1.0 / (i + 1), "grad_norm": 2.0 - i * 0.1})
    run.log_epoch(1, {"val_loss": 0.75, "val_acc": 0.5})
    run.checkpoint(theta, opt_state, epoch=1, step=4, wall_time=1.25, buffers=buffers, extra={"batch": 2})
    run.finish(final, {"test_acc": 0.5}, buffers=buffers)
    return {"theta": theta, "final": final, "buffers": buffers, "opt_state": opt_state}


def edited_run(tmp_path, name, change):
    """A finished run whose ``f[name]`` was then changed in place by
    ``change`` (h5py, read-write); the file stays valid HDF5. Returns its path."""
    path = tmp_path / "run.h5"
    finished_run(path)
    with h5py.File(path, "r+") as f:
        change(f[name])
    with h5py.File(path, "r") as f:
        assert "final" in f and "checkpoint" in f
    return path


def add(k, value):
    def change(dataset):
        dataset[k] = dataset[k] + value
    return change


def test_the_untouched_run_reads_back(tmp_path):
    path = tmp_path / "run.h5"
    written = finished_run(path)
    theta, buffers = R.load_final(path)
    assert theta.tobytes() == written["final"].tobytes() and states_equal(buffers, written["buffers"])
    ckpt = R.load_checkpoint(path)
    assert ckpt.theta.tobytes() == written["theta"].tobytes() and states_equal(ckpt.opt_state, written["opt_state"])
    assert R.load_run(path).steps["loss"].tolist() == [1.0, 0.5, 1 / 3, 0.25]


def assert_damaged(load, path, what):
    """``load(path)`` raises the digest error for ``what``, naming the file."""
    with pytest.raises(R.ResultsError, match=rf"{what} is damaged \(SHA-256 digest") as err:
        load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name, change", [
    ("final/theta", add(100, 1e-9)),
    ("final/theta", add(0, 1.0)),
    ("final/buffers/bn.running_var", add(3, 0.5)),
], ids=["theta-tiny", "theta-first", "buffer"])
def test_load_final_detects_final_edited_in_place(tmp_path, name, change):
    path = edited_run(tmp_path, name, change)
    assert_damaged(R.load_final, path, "final")
    # the root digest does not cover final: the series and the checkpoint still read
    assert R.load_run(path).status == "finished" and R.load_checkpoint(path).step == 4


def test_load_final_detects_an_attribute_added_to_final(tmp_path):
    path = tmp_path / "run.h5"
    finished_run(path)
    with h5py.File(path, "r+") as f:
        f["final"].attrs["note"] = "edited"
    with pytest.raises(R.ResultsError, match="final is damaged"):
        R.load_final(path)


@pytest.mark.parametrize("name, change", [
    ("checkpoint/theta", add(128, -1e-12)),
    ("checkpoint/optimizer", lambda group: group.attrs.__setitem__("note", 1)),
    ("checkpoint", lambda group: group.attrs.__setitem__("step", np.int64(5))),
], ids=["theta", "optimizer-group", "step-attribute"])
def test_load_checkpoint_and_resume_detect_the_checkpoint_edited_in_place(tmp_path, name, change):
    path = edited_run(tmp_path, name, change)
    before = Path(path).read_bytes()
    with pytest.raises(R.ResultsError, match="checkpoint is damaged"):
        R.load_checkpoint(path)
    with pytest.raises(R.ResultsError, match="checkpoint is damaged"):
        R.RunWriter.resume(path)
    assert Path(path).read_bytes() == before  # left as it is
    assert R.load_final(path)[0].shape == (257,)


def set_config(f):
    f.attrs["config"] = '{"epochs": 3}'


@pytest.mark.parametrize("name, change", [
    ("steps/loss", add(2, 1e-6)),
    ("epochs/val_acc", add(0, 0.25)),
    ("/", set_config),
], ids=["step-series", "epoch-series", "config"])
def test_load_run_detects_the_series_or_config_edited_in_place(tmp_path, name, change):
    path = edited_run(tmp_path, name, change)
    assert_damaged(R.load_run, path, "/")
    with pytest.raises(R.ResultsError, match="is damaged"):
        R.RunWriter.resume(path)


def test_a_nan_written_over_a_nan_is_no_change(tmp_path):
    """The digest hashes bytes: NaN over the same NaN leaves the file valid (no false alarm)."""
    path = tmp_path / "run.h5"
    run = R.RunWriter.create(path, CONFIG)
    run.log_step(0, {"loss": 1.0})
    run.log_step(1, {"loss": 0.5, "cg_iters": 3})
    run.flush()
    with h5py.File(path, "r+") as f:
        column = f["steps/cg_iters"]
        assert math.isnan(column[0])
        column[0] = column[0]
    assert R.load_run(path).steps["cg_iters"].tolist()[1] == 3
