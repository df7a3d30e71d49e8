"""tinygrad2: a readable autodiff engine for second-order optimization research."""
from . import backend
from .backend import to_host
from .tensor import Tensor, no_grad, no_tangent
from . import check, primitives
from .primitives import REGISTRY as PRIMITIVES
from .functional import grad, value_and_grad, jvp, vjp, hvp, hvp_reverse_over_reverse, hessian
from .objective import (
    Param, Layout, Objective, BaseObjective, Quadratic, Rosenbrock, LogisticRegression, Function,
    CurvatureMemoryError, rademacher,
)

__all__ = [
    "backend", "check", "to_host", "Tensor", "no_grad", "no_tangent", "primitives", "PRIMITIVES",
    "grad", "value_and_grad", "jvp", "vjp", "hvp", "hvp_reverse_over_reverse", "hessian",
    "Param", "Layout", "Objective", "BaseObjective", "Quadratic", "Rosenbrock", "LogisticRegression",
    "Function", "CurvatureMemoryError", "rademacher",
]
from .spectrum import (  # noqa: E402
    linear_operator, top_eigenvalues, trace_hutchinson, trace_hutchpp,
    lanczos, gauss_quadrature, slq_quadrature, slq_density,
)
__all__ += [
    "linear_operator", "top_eigenvalues", "trace_hutchinson", "trace_hutchpp",
    "lanczos", "gauss_quadrature", "slq_quadrature", "slq_density",
]
