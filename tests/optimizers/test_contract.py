"""The contract every optimizer keeps, checked over one table of all of them.

Each row of ``ROWS`` (in ``tests/_helpers.py``, shared with
``test_interface_only.py``) is one optimizer with hyper-parameters that suit both
problems: a convex quadratic (``tinygrad2.Quadratic``, eigenvalues in
[100, 1000]) and the 2-D Rosenbrock function from its classic start. Every
row is run with the run loop's protocol (epochs of ``STEPS_PER_EPOCH`` steps,
``end_epoch`` with the validation loss after each), so per-epoch methods (BB's
step size, the Hybrid's switch) act as they do in training. For every row:

* it decreases both problems;
* ``state["step"]`` counts the ``step`` calls, from 0 after ``init``;
* ``info`` has ``loss`` and ``grad_norm`` and only keys of the glossary in
  ``optimizers/base.py`` (``INFO_KEYS``, read from that docstring), and the
  rows together use every glossary key;
* the state survives the HDF5 round trip, with an identical next step;
* another optimizer's state, a state for another theta size, a state without
  the stamp, or a non-dict is refused by ``step`` (and ``end_epoch``) with an
  error that names the optimizer, not a KeyError from deep inside.

Only what ``tinygrad2`` exports at top level is used. float64, NumPy backend.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import optimizers
from optimizers import SGD, Adam, DampedNewton, GaussNewton, HessianFree, Optimizer, states_equal
from optimizers.base import INFO_KEYS, STATE_KEYS
from tinygrad2 import backend

from _helpers import PROBLEMS, ROWS, STEPS, hdf5_round_trip, problem, train

pytestmark = pytest.mark.usefixtures("float64")

GAP_FACTOR = 0.9  # every row must shrink f - f* by at least 10% over the run


@pytest.fixture(params=[(row, p) for row in ROWS for p in PROBLEMS], ids=lambda rp: f"{rp[0]}-{rp[1]}")
def run(request):
    row, name = request.param
    opt = ROWS[row]()
    objective, theta0, f_star = problem(name)
    thetas, states, infos = train(opt, objective, theta0)
    return {"row": row, "opt": opt, "objective": objective, "f_star": f_star,
            "thetas": thetas, "states": states, "infos": infos}


# ---------------------------------------------------------------- the table itself


def test_every_optimizer_has_a_row():
    exported = {obj for obj in vars(optimizers).values()
                if isinstance(obj, type) and issubclass(obj, Optimizer) and obj is not Optimizer}
    assert {type(make()) for make in ROWS.values()} == exported


def test_the_glossary_lists_loss_grad_norm_and_every_key_the_rows_use():
    assert {"loss", "grad_norm", "lr", "step_norm", "damping", "rho", "curvature"} <= set(INFO_KEYS)
    assert all(meaning for meaning in INFO_KEYS.values())
    used = set()
    for make in ROWS.values():
        for name in PROBLEMS:
            objective, theta0, _ = problem(name)
            for info in train(make(), objective, theta0)[2]:
                used |= set(info)
    assert used == set(INFO_KEYS), f"used but not in the glossary: {sorted(used - set(INFO_KEYS))}; " \
                                   f"in the glossary but used by no row: {sorted(set(INFO_KEYS) - used)}"


# ---------------------------------------------------------------- per row and problem


def test_decreases_the_loss(run):
    objective, f_star, thetas = run["objective"], run["f_star"], run["thetas"]
    start, end = objective.loss(thetas[0]), objective.loss(thetas[-1])
    assert math.isfinite(end) and np.isfinite(thetas[-1]).all()
    assert end - f_star < GAP_FACTOR * (start - f_star), (run["row"], start, end)


def test_state_counts_steps_and_carries_its_stamp(run):
    states = run["states"]
    assert [s["step"] for s in states] == list(range(STEPS + 1))
    for s in states:
        assert set(STATE_KEYS) <= set(s)
        assert s["optimizer"] == type(run["opt"]).__name__ and s["theta_size"] == run["thetas"][0].size


def test_info_has_loss_and_grad_norm_and_only_glossary_keys(run):
    for k, info in enumerate(run["infos"]):
        assert math.isfinite(info["loss"]) and info["grad_norm"] >= 0
        unknown = set(info) - set(INFO_KEYS)
        assert not unknown, f"{run['row']} step {k + 1}: info keys missing from the glossary: {sorted(unknown)}"
    assert run["infos"][0]["loss"] == run["objective"].loss(run["thetas"][0])


def test_state_round_trips_through_hdf5_with_an_identical_next_step(run, tmp_path):
    opt, objective, theta, state = run["opt"], run["objective"], run["thetas"][-1], run["states"][-1]
    loaded = hdf5_round_trip(state, tmp_path / "state.h5")
    theta_a, state_a, info_a = opt.step(objective, theta, state)
    theta_b, state_b, info_b = opt.step(objective, theta.copy(), loaded)
    assert theta_a.tobytes() == theta_b.tobytes()
    assert states_equal(state_a, state_b) and info_a["loss"] == info_b["loss"]


def test_a_foreign_state_is_refused_with_an_error_naming_the_optimizer(run):
    opt, objective, theta, state = run["opt"], run["objective"], run["thetas"][-1], run["states"][-1]
    me = type(opt).__name__
    other = Adam() if isinstance(opt, SGD) else SGD(lr=0.1)
    with pytest.raises((ValueError, TypeError), match=rf"{me}\.step: .*{type(other).__name__}\.init"):
        opt.step(objective, theta, other.init(theta))
    with pytest.raises((ValueError, TypeError), match=rf"{me}\.end_epoch: .*{type(other).__name__}\.init"):
        opt.end_epoch(theta, other.init(theta), {"val_loss": 1.0})
    bigger = backend.xp.zeros(theta.size + 3)
    with pytest.raises((ValueError, TypeError), match=rf"{me}\.step: .*size {theta.size + 3}"):
        opt.step(objective, theta, opt.init(bigger))
    with pytest.raises((ValueError, TypeError), match=rf"{me}\.step: .*{me}\.init"):
        opt.step(objective, theta, {k: v for k, v in state.items() if k not in STATE_KEYS})
    with pytest.raises(TypeError, match=rf"{me}\.step: state must be the dict"):
        opt.step(objective, theta, [state])


# ---------------------------------------------------------------- shared hyper-parameters


@pytest.mark.parametrize("cls", [DampedNewton, HessianFree, GaussNewton])
def test_adapt_is_the_string_lm_or_fixed_and_defaults_to_lm(cls):
    assert cls().adapt == "lm" and cls(adapt="fixed").adapt == "fixed"
    for flag, use in ((True, "'lm'"), (False, "'fixed'")):
        with pytest.raises(TypeError, match=f"adapt={use}"):
            cls(adapt=flag)
    with pytest.raises(ValueError, match="adapt"):
        cls(adapt="trust")
