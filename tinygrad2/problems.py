"""Closed-form test problems on the Objective interface.

An optimizer is tested on these exactly as it runs on a network, because
they are objectives too: :class:`Quadratic`, :class:`Rosenbrock` (SciPy's
``rosen``), :class:`LogisticRegression`, and :class:`Function` (any scalar
Tensor function of flat theta). Each has its Gauss-Newton product in closed
form where one exists.
"""
from __future__ import annotations

import numbers

from . import backend as B
from .guard import as_real, check_finite
from .layout import Layout
from .objective import BaseObjective, check_batch
from .primitives import sigmoid
from .tensor import Tensor


class _Consts:
    """Arrays cast once per dtype (so float32 theta does not meet float64 data)."""

    def __init__(self, **arrays):
        self.arrays, self.cache = arrays, {}

    def __call__(self, dtype):
        key = B.xp.dtype(dtype).str
        if key not in self.cache:
            self.cache[key] = {k: B.asarray(a, dtype) for k, a in self.arrays.items()}
        return self.cache[key]


class Quadratic(BaseObjective):
    """f(x) = ½ xᵀ A x - bᵀ x with A symmetric (n, n):  ∇f = A x - b,  H = A.

    The Gauss-Newton matrix of a quadratic is taken to be H itself (it is its
    own quadratic model): ``ggn_vp`` is A V in closed form, while ``hvp`` goes
    through the engine. ``minimizer`` solves A x = b."""

    def __init__(self, A, b=None, memory_budget=None):
        A = check_finite(as_real(A, "Quadratic", "A"), "Quadratic", "A")
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"Quadratic: A must be square (n, n), got shape {A.shape}")
        n = A.shape[0]
        b = B.xp.zeros((n,), A.dtype) if b is None else check_finite(as_real(b, "Quadratic", "b"), "Quadratic", "b")
        if b.shape != (n,):
            raise ValueError(f"Quadratic: b has shape {b.shape}, expected ({n},) to match A {A.shape}")
        scale = float(B.xp.abs(A).max()) if A.size else 0.0
        if float(B.xp.abs(A - A.T).max() if A.size else 0.0) > 1e-12 * max(scale, 1e-300) * n:
            raise ValueError("Quadratic: A must be symmetric (use (A + A.T) / 2)")
        super().__init__(Layout.single(n, "x"), memory_budget)
        self.A, self.b, self._c = A, b, _Consts(A=A, b=b)

    def _scalar(self, x):
        c = self._c(x.dtype)
        return (x * (Tensor(c["A"]) @ x)).sum() * 0.5 - (x * Tensor(c["b"])).sum()

    def ggn_vp(self, theta, V):
        """G V = A V, in closed form (rows: V A, A symmetric)."""
        x = self._theta(theta, "ggn_vp")
        V, single = self._directions(V, x, "ggn_vp")
        self.counts["nggnvp"] += V.shape[0]
        GV = V @ self._c(x.dtype)["A"]
        return GV[0] if single else GV

    @property
    def minimizer(self):
        return B.xp.linalg.solve(self.A, self.b)


class Rosenbrock(BaseObjective):
    """The chained Rosenbrock function (SciPy's ``rosen``):

        f(x) = Σ_{i=1}^{n-1} 100 (x_{i+1} - x_i²)² + (1 - x_i)²,

    minimum 0 at x = (1, ..., 1); the classic start is (-1.2, 1, -1.2, ...).

    As a sum of squares of residuals r = (10 (x_{i+1} - x_i²), 1 - x_i), its
    Gauss-Newton matrix is G = 2 J_rᵀ J_r (equal to H where r = 0)."""

    def __init__(self, n=2, memory_budget=None):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
            raise ValueError(f"Rosenbrock: n must be an int >= 2, got {n!r}")
        super().__init__(Layout.single(int(n), "x"), memory_budget)

    def _scalar(self, x):
        head, tail = x[:-1], x[1:]
        a = tail - head * head
        return (a * a * 100.0 + (1.0 - head) * (1.0 - head)).sum()

    @property
    def minimizer(self):
        return B.xp.ones((self.n,), B.default_dtype)

    @property
    def x0(self):
        x = B.xp.ones((self.n,), B.default_dtype)
        x[::2] = -1.2
        return x

    def ggn_vp(self, theta, V):
        """G V = 2 J_rᵀ J_r V with J_r a v = 10 (v_{i+1} - 2 x_i v_i), J_r b v = -v_i."""
        x = self._theta(theta, "ggn_vp")
        V, single = self._directions(V, x, "ggn_vp")
        self.counts["nggnvp"] += V.shape[0]
        ra = 10 * (V[:, 1:] - 2 * x[:-1] * V[:, :-1])  # J_a V
        rb = -V[:, :-1]                                 # J_b V
        GV = B.xp.zeros_like(V)
        GV[:, :-1] += -20 * x[:-1] * ra - rb            # J_aᵀ, J_bᵀ: entries i
        GV[:, 1:] += 10 * ra                            # J_aᵀ: entries i + 1
        GV *= 2
        return GV[0] if single else GV


class LogisticRegression(BaseObjective):
    """Binary logistic regression, labels y ∈ {0, 1}, X (B, d), weights w (d,):

        f(w) = (1/B) Σ_i [log(1 + e^{z_i}) - y_i z_i] + ½ λ ||w||²,   z = X w,
             = (1/B) Σ_i softplus((1 - 2 y_i) z_i) + ½ λ ||w||²,
        ∇f = Xᵀ (p - y) / B + λ w,       p = σ(X w),
        H  = Xᵀ diag(p (1 - p)) X / B + λ I  = G  (linear model, convex loss).

    No intercept: append a column of ones to X for one."""

    def __init__(self, X, y, l2=0.0, memory_budget=None, counts=None):
        X, y = check_batch(X, y, "LogisticRegression")
        if X.ndim != 2:
            raise ValueError(f"LogisticRegression: X must be (B, d), got shape {X.shape}")
        if y.shape != (X.shape[0],):
            raise ValueError(f"LogisticRegression: y has shape {y.shape}, expected ({X.shape[0]},) to match X {X.shape}")
        if y.size and not bool(B.xp.all((y == 0) | (y == 1))):
            raise ValueError("LogisticRegression: labels y must be 0 or 1")
        super().__init__(Layout([("w", (X.shape[1],), "weight")]), memory_budget, counts)
        self.X, self.y, self.l2 = X, y, float(l2)
        self.batch_size = int(X.shape[0])
        self._c = _Consts(X=X, sign=1.0 - 2.0 * y)

    def _scalar(self, w):
        c = self._c(w.dtype)
        z = Tensor(c["X"]) @ w
        loss = (z * Tensor(c["sign"])).softplus().mean()
        return loss + (w * w).sum() * (0.5 * self.l2) if self.l2 else loss

    def ggn_vp(self, theta, V):
        """G V = Xᵀ diag(p (1 - p)) X V / B + λ V, in closed form."""
        w = self._theta(theta, "ggn_vp")
        V, single = self._directions(V, w, "ggn_vp")
        self.counts["nggnvp"] += V.shape[0]
        X = self._c(w.dtype)["X"]
        p = sigmoid.forward(X @ w)
        GV = ((V @ X.T) * (p * (1 - p) / X.shape[0])) @ X + self.l2 * V
        return GV[0] if single else GV

    def with_batch(self, X, y) -> "LogisticRegression":
        """Same λ and budget on another batch; shares the evaluation counter."""
        return LogisticRegression(X, y, self.l2, self.memory_budget, self.counts)


class Function(BaseObjective):
    """Any scalar function ``f(theta: Tensor) -> scalar Tensor`` of flat
    theta (n,), on the shared interface. It has no model/loss split, so
    ``ggn_vp`` raises NotImplementedError."""

    def __init__(self, f, n, name=None, memory_budget=None):
        if not callable(f):
            raise TypeError(f"Function: f must be callable (theta Tensor) -> scalar Tensor, got {type(f).__name__}")
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"Function: n must be an int >= 1 (the length of theta), got {n!r}")
        super().__init__(Layout.single(int(n), "x"), memory_budget)
        self.f, self._name = f, name or getattr(f, "__name__", "Function")

    name = property(lambda self: f"Function({self._name})")

    def _scalar(self, x):
        return self.f(x)
