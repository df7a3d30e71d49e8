"""The Levenberg-Marquardt damping rule (optimizers.newton.lm_update) band by
band, and through DampedNewton and HessianFree steps whose ρ is known in
closed form.

The rule (Martens 2010, Section 4.2, as the docstring of ``lm_update`` says):
ρ < ¼ -> λ·boost, ρ > ¾ -> λ·drop, ¼ <= ρ <= ¾ -> λ unchanged (both
boundaries belong to the middle band), NaN and -inf (the loss rose) -> boost;
the result is clipped to [min_damping, max_damping].
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import tinygrad2 as tg
from optimizers import DampedNewton, HessianFree
from optimizers.newton import LM_BOOST, LM_DROP, LM_HIGH_RHO, LM_LOW_RHO, lm_update, reduction_ratio

pytestmark = pytest.mark.usefixtures("float64")

LAM = 0.3


def test_the_constants_are_martens_values():
    assert (LM_LOW_RHO, LM_HIGH_RHO) == (0.25, 0.75)
    assert LM_BOOST == 1.5 and LM_DROP == pytest.approx(2 / 3, rel=1e-15)


@pytest.mark.parametrize("rho", [0.25, 0.26, 0.4, 0.5, 0.6, 0.74, 0.75])
def test_middle_band_leaves_the_damping_unchanged(rho):
    assert lm_update(LAM, rho) == LAM
    assert lm_update(LAM, rho, boost=4.0, drop=0.1) == LAM


@pytest.mark.parametrize("rho", [-math.inf, -1e300, -3.0, -1e-12, 0.0, 0.1, 0.2499, math.nan])
def test_below_a_quarter_the_damping_grows_by_three_halves(rho):
    assert lm_update(LAM, rho) == pytest.approx(LAM * 1.5, rel=1e-15)
    assert lm_update(LAM, rho, boost=4.0, drop=0.1) == pytest.approx(LAM * 4.0, rel=1e-15)


@pytest.mark.parametrize("rho", [0.7501, 0.8, 1.0, 1.7, 1e300, math.inf])
def test_above_three_quarters_the_damping_shrinks_by_two_thirds(rho):
    assert lm_update(LAM, rho) == pytest.approx(LAM * 2 / 3, rel=1e-15)
    assert lm_update(LAM, rho, boost=4.0, drop=0.1) == pytest.approx(LAM * 0.1, rel=1e-15)


def test_boundaries_sit_in_the_middle_band_and_their_neighbours_do_not():
    below, above = math.nextafter(0.25, -1.0), math.nextafter(0.75, 2.0)
    assert lm_update(2.0, below) == 3.0 and lm_update(2.0, 0.25) == 2.0
    assert lm_update(2.0, 0.75) == 2.0 and lm_update(2.0, above) == pytest.approx(4 / 3, rel=1e-15)


def test_result_is_clipped_to_min_and_max_damping():
    # growth stops at max_damping, shrinking stops at min_damping
    assert lm_update(10.0, 0.0, max_damping=12.0) == 12.0
    assert lm_update(10.0, 0.0, max_damping=20.0) == 15.0
    assert lm_update(3.0, 1.0, min_damping=2.5) == 2.5
    assert lm_update(3.0, 1.0, min_damping=1.0) == 2.0
    # the clip applies in the middle band too: a λ outside the range is pulled in
    assert lm_update(0.1, 0.5, min_damping=0.2, max_damping=1.0) == 0.2
    assert lm_update(5.0, 0.5, min_damping=0.2, max_damping=1.0) == 1.0
    # a λ of 0 stays 0 unless min_damping lifts it
    assert lm_update(0.0, 0.0) == 0.0 and lm_update(0.0, 1.0, min_damping=1e-6) == 1e-6
    # the defaults do not clip: no ceiling, floor 0
    assert lm_update(1e300, -math.inf) == pytest.approx(1.5e300, rel=1e-15)
    assert lm_update(1e-300, 1.0) == pytest.approx(1e-300 * 2 / 3, rel=1e-15)


def test_reduction_ratio_signs_and_special_values():
    assert reduction_ratio(-1.0, -2.0) == 0.5
    assert reduction_ratio(-3.0, -2.0) == 1.5
    assert reduction_ratio(0.0, -2.0) == 0.0
    assert reduction_ratio(1e-300, -2.0) == -math.inf  # the loss rose, however little
    assert reduction_ratio(math.nan, -2.0) == -math.inf and reduction_ratio(math.inf, -2.0) == -math.inf
    assert math.isnan(reduction_ratio(-1.0, 0.0)) and math.isnan(reduction_ratio(-1.0, 1.0))


# ================================================================ through the optimizers


class MisScaledGGN(tg.Quadratic):
    """f(x) = ½ a ||x||² - bᵀx, whose Gauss-Newton matrix is replaced by s·a·I:
    a model curvature off by the factor s. The (damped) step is
    d = -g / m with m = s·a + λ, and with c = ||g||²/m²

        predicted = q(d) = gᵀd + ½ s a ||d||² = c (s a / 2 - m)
        actual    = f(x + d) - f(x) = c (a / 2 - m),

    so ρ = (m - a/2) / (m - s a/2), free of g."""

    def __init__(self, n, a, s, seed=0):
        super().__init__(a * np.eye(n), np.random.default_rng(seed).normal(size=n))
        self.a, self.s = a, s

    def ggn_vp(self, theta, V):
        return self.s * self.a * np.asarray(V)

    def rho(self, lam):
        m = self.s * self.a + lam
        return (m - self.a / 2) / (m - self.s * self.a / 2)


def scale_for(rho, lam, a=1.0):
    """The s for which MisScaledGGN(a, s) gives ρ at damping λ (solving ρ(m - s a/2) = m - a/2, m = s a + λ)."""
    return (a / 2 + rho * lam - lam) / (a * (1 - rho / 2))


OPTIMIZERS = {
    "damped_newton": lambda lam: DampedNewton(damping=lam, curvature="ggn", reject_increase=False),
    "hessian_free": lambda lam: HessianFree(damping=lam, curvature="ggn", backtracking=False, martens_eps=None,
                                            cg_tol=1e-14, reject_increase=False),
}


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("rho, factor", [
    (0.05, 1.5), (0.2, 1.5),                 # poor agreement: grow
    (0.26, 1.0), (0.5, 1.0), (0.74, 1.0),    # the middle band: unchanged
    (0.8, 2 / 3), (0.95, 2 / 3),             # good agreement: shrink
])
def test_optimizer_step_with_known_rho_updates_the_damping(name, rho, factor):
    lam = 0.1
    obj = MisScaledGGN(n=5, a=2.0, s=scale_for(rho, lam, a=2.0))
    assert obj.rho(lam) == pytest.approx(rho, rel=1e-12)
    opt = OPTIMIZERS[name](lam)
    x0 = np.random.default_rng(7).normal(size=5)
    x1, state, info = opt.step(obj, x0, opt.init(x0))
    assert info["rho"] == pytest.approx(rho, rel=1e-9)
    assert info["damping"] == lam and state["damping"] == pytest.approx(lam * factor, rel=1e-12)
    g = obj.grad(x0)
    np.testing.assert_allclose(x1 - x0, -g / (obj.s * obj.a + lam), rtol=1e-10)  # the step assumed above


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_clips_the_damping_and_boosts_after_a_rise(name):
    lam = 0.1
    # ρ = 0.95: shrink, but not below min_damping
    obj = MisScaledGGN(n=4, a=1.0, s=scale_for(0.95, lam))
    opt = OPTIMIZERS[name](lam)
    opt.min_damping = 0.09
    x0 = np.ones(4)
    _, state, info = opt.step(obj, x0, opt.init(x0))
    assert info["rho"] == pytest.approx(0.95, rel=1e-9) and state["damping"] == 0.09
    # s = 0.2 at λ = 0.1: m = 0.3 < a/2, the step overshoots and the loss rises: ρ = -inf, grow
    obj = MisScaledGGN(n=4, a=1.0, s=0.2)
    opt = OPTIMIZERS[name](lam)
    opt.max_damping = 0.12
    _, state, info = opt.step(obj, x0, opt.init(x0))
    assert info["rho"] == -math.inf and info["actual"] > 0 and state["damping"] == 0.12


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fixed_adaptation_ignores_rho(name):
    lam = 0.1
    obj = MisScaledGGN(n=3, a=1.0, s=scale_for(0.05, lam))
    opt = OPTIMIZERS[name](lam)
    opt.adapt = "fixed"
    x0 = np.ones(3)
    _, state, info = opt.step(obj, x0, opt.init(x0))
    assert info["rho"] == pytest.approx(0.05, rel=1e-9) and state["damping"] == lam
