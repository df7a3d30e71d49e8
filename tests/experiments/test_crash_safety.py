"""A real CLI run killed (SIGKILL) at any instant resumes to exactly the
results of an uninterrupted run: at seeded random instants (every step
checkpoints here, so kills land mid-epoch, mid-write and between writes) and
at points injected inside the final write (TINYGRAD2_TEST_CRASH_AT: half the
bytes written, before the os.replace, after it). No temp file is left."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.results import CRASH_ENV, load_final, load_run

pytestmark = pytest.mark.cpu_only  # host-bound: subprocesses killed and resumed

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["run", "digits", "--optimizers", "SGD-momentum", "--epochs", "3", "--seed", "0"]
NAME = "digits__SGD-momentum.h5"
TIMING = ("step_time", "wall_time", "epoch_time", "seconds_per_epoch")


def cli(out, *extra, env=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TINYGRAD2_CHECKPOINT_SECONDS="0", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "experiments", *ARGS, "--out", str(out), *extra], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = subprocess.run([sys.executable, "-m", "experiments", *ARGS, "--out", str(out)], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out / NAME


def assert_same(path, reference):
    a, b = load_run(path), load_run(reference)
    assert a.status == b.status == "finished" and a.config == b.config
    assert load_final(path)[0].tobytes() == load_final(reference)[0].tobytes()
    for series in ("steps", "epochs"):
        x, y = getattr(a, series), getattr(b, series)
        assert set(x) == set(y)
        for key in set(x) - set(TIMING):
            assert x[key].tobytes() == y[key].tobytes(), (series, key)
    assert {k: v for k, v in a.final_metrics.items() if k not in TIMING} == \
        {k: v for k, v in b.final_metrics.items() if k not in TIMING}
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_sigkill_at_random_instants_then_resume_is_bit_identical(tmp_path, reference):
    rng = random.Random(20240611)
    path = tmp_path / NAME
    killed = 0
    for attempt in range(3):
        proc = cli(tmp_path, *(["--resume"] if attempt else []))
        deadline = time.time() + 60
        while not path.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        killed += proc.returncode == -signal.SIGKILL
    assert killed >= 2
    done = cli(tmp_path, "--resume")
    assert done.wait(timeout=120) == 0, done.stderr.read()
    assert_same(path, reference)


@pytest.mark.parametrize("point", ["mid_write", "before_replace", "after_replace"])
def test_a_kill_inside_the_final_write_resumes_bit_identical(tmp_path, reference, point):
    path = tmp_path / NAME
    proc = cli(tmp_path, env={CRASH_ENV: point})
    assert proc.wait(timeout=120) == 137, proc.stderr.read()
    left = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == (0 if point == "after_replace" else 1)
    assert load_run(path).status == ("finished" if point == "after_replace" else "running")
    time.sleep(0.02)  # the temp file is older than the process that resumes
    done = cli(tmp_path, "--resume")
    assert done.wait(timeout=120) == 0, done.stderr.read()
    assert_same(path, reference)
