"""Every mistake a user can make on the command line ends the same way: a
non-zero exit, exactly one line on stderr that names the mistake (the flag,
the file, the value), no traceback, and every file the command could touch
byte-identical afterwards. One row per mistake."""
from __future__ import annotations

import errno
import hashlib
import shutil
import sys
import types
from pathlib import Path

import h5py
import numpy as np
import pytest

from experiments import results as R
from experiments.__main__ import main

pytestmark = pytest.mark.cpu_only  # host-bound: CLI runs, plots

RUN = ["run", "digits", "--quick", "--epochs", "2", "--optimizers", "SGD", "--out", "{out}"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (digits, SGD, quick, 2 epochs) and damaged copies of it."""
    base = tmp_path_factory.mktemp("base")
    assert main([a.format(out=base / "runs") for a in RUN]) == 0
    good = base / "runs" / "digits__SGD.h5"
    raw = good.read_bytes()
    bad = base / "bad"
    bad.mkdir()
    (bad / "garbage.h5").write_bytes(b"not an HDF5 file" * 100)
    (bad / "truncated.h5").write_bytes(raw[: len(raw) // 2])
    (bad / "empty.h5").write_bytes(b"")
    (bad / "folder.h5").mkdir()
    with h5py.File(bad / "other.h5", "w") as f:
        f["x"] = np.ones(3)
    run = R.load_run(good)
    (bad / "damaged.h5").write_bytes(_flip(raw, run.steps["loss"].tobytes()))      # the series
    theta = R.load_checkpoint(good).theta
    (bad / "damaged_checkpoint.h5").write_bytes(_flip(raw, np.asarray(theta)[100:104].tobytes()))
    (bad / "a_file").write_text("a file, not a folder")
    return base


def _flip(raw: bytes, needle: bytes) -> bytes:
    """Flip the first byte of every copy of ``needle`` (the final parameters repeat the checkpoint's)."""
    assert raw.find(needle) > 0
    out, at = bytearray(raw), raw.find(needle)
    while at >= 0:
        out[at] ^= 0xFF
        at = raw.find(needle, at + 1)
    return bytes(out)


# ---- setups: (tmp, monkeypatch) -> None


def replace_run(name):
    def setup(tmp, mp):
        target = tmp / "runs" / "digits__SGD.h5"
        target.unlink()
        src = tmp / "bad" / name
        shutil.copytree(src, target) if src.is_dir() else shutil.copy(src, target)
    return setup


def no_cupy(tmp, mp):
    mp.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError


def cupy_without_gpu(tmp, mp):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device)))
    mp.setitem(sys.modules, "cupy", fake)


def refuse_temps(number, reason, only=None):
    """Temp files cannot be made (in folder ``only``, else anywhere): what a read-only folder does."""
    def setup(tmp, mp):
        real = R._make_temp
        folder = None if only is None else tmp / only

        def make_temp(path):
            if folder is None or Path(path).parent == folder:
                raise OSError(number, reason, str(path))
            return real(path)
        if folder is not None:
            folder.chmod(0o555)  # what a non-root user meets; root needs the stub above
        mp.setattr(R, "_make_temp", make_temp)
    return setup


def full_disk(tmp, mp):
    def write_bytes(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    mp.setattr(R, "_write_bytes", write_bytes)


def run_args(*extra, out="{out}"):
    return [a if a != "{out}" else out for a in RUN] + list(extra)


SWEEP = ["sweep", "digits", "--quick", "--epochs", "2", "--optimizers", "SGD", "--seeds", "0", "--out", "{out}"]


def sweep_args(*extra, out="{out}"):
    return [a if a != "{out}" else out for a in SWEEP] + list(extra)


def no_dask(tmp, mp):
    mp.setitem(sys.modules, "distributed", None)  # `import distributed` raises ImportError


def run_file_as_point(tmp, mp):
    """The finished run's file under the name of the sweep's point (seed 0): the same settings but --epochs."""
    shutil.copy(tmp / "runs" / "digits__SGD.h5", tmp / "runs" / "digits__SGD__seed=0.h5")


CASES = [
    # id, argv, what the one line must say, setup
    ("report-missing", ["report", "{tmp}/absent.h5"], "absent.h5 does not exist", None),
    ("report-garbage", ["report", "{bad}/garbage.h5"], "garbage.h5 is not a readable HDF5 file", None),
    ("report-truncated", ["report", "{bad}/truncated.h5"], "truncated.h5", None),
    ("report-empty", ["report", "{bad}/empty.h5"], "empty.h5 is not a readable HDF5 file", None),
    ("report-damaged", ["report", "{bad}/damaged.h5"], "damaged.h5: / is damaged", None),
    ("report-folder", ["report", "{bad}/folder.h5"], "folder.h5 is a folder", None),
    ("report-other-hdf5", ["report", "{bad}/other.h5"], "other.h5 is not a tinygrad2 results file", None),
    ("report-one-good-one-missing", ["report", "{out}/digits__SGD.h5", "{tmp}/gone.h5"], "gone.h5 does not exist",
     None),
    ("report-no-files", ["report"], "the following arguments are required: files", None),
    ("plot-missing", ["plot", "{tmp}/absent.h5", "--png", "{tmp}/c.png"], "absent.h5 does not exist", None),
    ("plot-garbage", ["plot", "{bad}/garbage.h5", "--png", "{tmp}/c.png"], "garbage.h5 is not a readable", None),
    ("plot-truncated", ["plot", "{bad}/truncated.h5", "--png", "{tmp}/c.png"], "truncated.h5", None),
    ("plot-damaged", ["plot", "{bad}/damaged.h5", "--png", "{tmp}/c.png"], "damaged.h5: / is damaged", None),
    ("plot-png-is-a-folder", ["plot", "{out}/digits__SGD.h5", "--png", "{out}"], "--png {out} is a folder", None),
    ("plot-png-under-a-file", ["plot", "{out}/digits__SGD.h5", "--png", "{bad}/a_file/c.png"],
     "a_file is a file, not a folder", None),
    ("plot-png-read-only", ["plot", "{out}/digits__SGD.h5", "--png", "{tmp}/ro/c.png"], "Read-only file system",
     refuse_temps(errno.EROFS, "Read-only file system")),
    ("run-epochs-0", run_args("--epochs", "0"), "argument --epochs: must be at least 1, got 0", None),
    ("run-epochs-negative", run_args("--epochs", "-1"), "argument --epochs: must be at least 1, got -1", None),
    ("run-epochs-text", run_args("--epochs", "ten"), "argument --epochs: expected a whole number, got 'ten'", None),
    ("run-seed-negative", run_args("--seed", "-3"), "argument --seed: must be at least 0, got -3", None),
    ("run-quick-and-full", run_args("--full"), "argument --full: not allowed with argument --quick", None),
    ("run-resume-and-overwrite", run_args("--resume", "--overwrite"),
     "argument --overwrite: not allowed with argument --resume", None),
    ("run-extend-without-resume", run_args("--extend", "--epochs", "3"), "--extend", None),
    ("run-unknown-experiment", ["run", "nope", "--out", "{out}"], "unknown experiment 'nope'", None),
    ("run-unknown-method", ["run", "digits", "--optimizers", "Bogus", "--out", "{out}"], "['Bogus']", None),
    ("run-device-tpu", run_args("--device", "tpu"), "argument --device: invalid choice: 'tpu'", None),
    ("run-gpu-without-cupy", run_args("--device", "gpu", "--overwrite"), "--device gpu needs CuPy", no_cupy),
    ("run-gpu-without-a-gpu", run_args("--device", "gpu", "--overwrite"),
     "--device gpu: no usable CUDA GPU (RuntimeError: cudaErrorNoDevice", cupy_without_gpu),
    ("run-out-is-a-file", run_args(out="{bad}/a_file"), "--out {bad}/a_file is a file, not a folder", None),
    ("run-out-under-a-file", run_args(out="{bad}/a_file/runs"), "--out {bad}/a_file/runs: cannot create", None),
    ("run-out-unwritable", run_args("--overwrite"), "--out {out} is not writable (Permission denied)",
     refuse_temps(errno.EACCES, "Permission denied", only="runs")),
    ("run-out-read-only-fs", run_args("--overwrite"), "--out {out} is not writable (Read-only file system)",
     refuse_temps(errno.EROFS, "Read-only file system")),
    ("run-again-without-resume", run_args(),
     "{out}/digits__SGD.h5 already exists (status finished); pass --resume to continue it or --overwrite", None),
    ("run-resume-garbage", run_args("--resume"), "digits__SGD.h5 is not a readable HDF5 file",
     replace_run("garbage.h5")),
    ("run-resume-truncated", run_args("--resume"), "digits__SGD.h5", replace_run("truncated.h5")),
    ("run-resume-empty", run_args("--resume"), "digits__SGD.h5 is not a readable HDF5 file", replace_run("empty.h5")),
    ("run-resume-damaged-checkpoint", run_args("--resume"), "digits__SGD.h5: checkpoint is damaged",
     replace_run("damaged_checkpoint.h5")),
    ("run-resume-other-hdf5", run_args("--resume"), "digits__SGD.h5 is not a tinygrad2 results file",
     replace_run("other.h5")),
    ("run-resume-folder", run_args("--resume"), "digits__SGD.h5 is a folder", replace_run("folder.h5")),
    ("run-resume-other-seed", run_args("--resume", "--seed", "5"),
     "resume: digits__SGD.h5 was recorded with seed 0; this request has seed 5 (pass the recorded settings, "
     "or --overwrite to start again)", None),
    ("run-resume-more-epochs", run_args("--resume", "--epochs", "3"),
     "was recorded with epochs 2; this request has epochs 3 (pass the recorded settings, --extend", None),
    ("run-resume-fewer-epochs", run_args("--resume", "--epochs", "1"),
     "was recorded with epochs 2; this request has epochs 1", None),
    ("run-extend-shorter", run_args("--resume", "--extend", "--epochs", "1"),
     "already holds 2 epochs; --epochs 1 would shorten it", None),
    ("run-full-disk", run_args("--overwrite"), "could not write {out}/digits__SGD.h5: No space left on device",
     full_disk),
    ("unknown-command", ["fly"], "argument command: invalid choice: 'fly'", None),
    ("sweep-seeds-text", sweep_args("--seeds", "ten"),
     "argument --seeds: expected seeds such as 0-9 or 0,3,5 (whole numbers >= 0), got 'ten'", None),
    ("sweep-seeds-backwards", sweep_args("--seeds", "5-2"), "the range '5-2' runs backwards (write 2-5)", None),
    ("sweep-seeds-negative", sweep_args("--seeds", "-3"), "argument --seeds: expected seeds such as 0-9", None),
    ("sweep-set-no-value", sweep_args("--set", "lr"), "argument --set: expected KEY=V1,V2,... (e.g. lr=0.1,0.05), "
                                                      "got 'lr'", None),
    ("sweep-set-empty-value", sweep_args("--set", "lr=0.1,"), "argument --set: expected KEY=V1,V2", None),
    ("sweep-set-unknown-key", sweep_args("--set", "foo=1"),
     "sweep digits: --set foo: not a setting of SGD; allowed: batch_size, limit_batches, lr, momentum, nesterov", None),
    ("sweep-set-seed", sweep_args("--set", "seed=1,2"), "--set seed: not a setting of SGD (use --seeds)", None),
    ("sweep-set-bad-value", sweep_args("--set", "lr=fast"),
     "--set lr=fast: SGD refuses it (SGD: lr must be a real number, got 'fast' (str))", None),
    ("sweep-set-batch-size-0", sweep_args("--set", "batch_size=0"),
     "--set batch_size=0: must be a whole number >= 1", None),
    ("sweep-set-twice", sweep_args("--set", "lr=0.1", "--set", "lr=0.2"), "--set lr is given twice", None),
    ("sweep-workers-0", sweep_args("--workers", "0"), "argument --workers: must be at least 1, got 0", None),
    ("sweep-workers-text", sweep_args("--workers", "many"),
     "argument --workers: expected a whole number, got 'many'", None),
    ("sweep-workers-and-scheduler", sweep_args("--workers", "2", "--scheduler", "tcp://127.0.0.1:1"),
     "argument --scheduler: not allowed with argument --workers", None),
    ("sweep-scheduler-without-dask", sweep_args("--scheduler", "tcp://127.0.0.1:1"),
     "sweep: --scheduler needs dask.distributed, which cannot be imported", no_dask),
    ("sweep-scheduler-not-an-address", sweep_args("--scheduler", "localhost"),
     "--scheduler localhost: expected an address such as tcp://HOST:8786", None),
    ("sweep-unknown-experiment", ["sweep", "nope", "--out", "{out}"], "sweep: unknown experiment 'nope'", None),
    ("sweep-unknown-method", ["sweep", "digits", "--optimizers", "Bogus", "--out", "{out}"],
     "sweep digits: unknown method(s) ['Bogus']", None),
    ("sweep-quick-and-full", sweep_args("--full"), "argument --full: not allowed with argument --quick", None),
    ("sweep-out-is-a-file", sweep_args(out="{bad}/a_file"), "sweep: --out {bad}/a_file is a file, not a folder",
     None),
    ("sweep-point-with-other-settings", sweep_args("--epochs", "3"),
     "sweep: digits__SGD__seed=0.h5 was recorded with epochs 2; this request has epochs 3 (a sweep never "
     "overwrites a file: use another --out, or move the file away)", run_file_as_point),
]


def hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv, expected, setup", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_mistake_is_one_line_and_touches_nothing(finished, tmp_path, monkeypatch, capsys, argv, expected, setup):
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    names = {"tmp": str(tmp_path), "out": str(tmp_path / "runs"), "bad": str(tmp_path / "bad")}
    if setup is not None:
        setup(tmp_path, monkeypatch)
    before = hashes(tmp_path)
    capsys.readouterr()
    try:
        code = main([a.format(**names) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    finally:
        (tmp_path / "runs").chmod(0o755)
    err = capsys.readouterr().err
    assert code not in (0, None)
    assert len(err.splitlines()) == 1, err
    assert expected.format(**names) in err
    assert "Traceback" not in err
    assert hashes(tmp_path) == before


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["report", str(tmp_path / "absent.h5"), "--debug"])
    with pytest.raises(FileNotFoundError):
        main(["--debug", "report", str(tmp_path / "absent.h5")])
