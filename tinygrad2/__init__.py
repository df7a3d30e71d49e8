"""tinygrad2: a readable autodiff engine for second-order optimization research."""
from . import backend
from .backend import to_host
from .tensor import Tensor, no_grad, no_tangent
from . import check, primitives
from .primitives import REGISTRY as PRIMITIVES
from .functional import grad, value_and_grad, jvp, vjp, hvp, hvp_reverse_over_reverse, hessian
from . import capture, losses, memory
from .layout import Param, Layout
from .directions import rademacher
from .memory import CurvatureMemoryError
from .guard import NonFiniteError
from .layout import UnknownParameterError
from .objective import Objective, BaseObjective, ObjectiveInterface
from .dataset_objective import DatasetObjective
from .problems import Quadratic, Rosenbrock, LogisticRegression, Function

__all__ = [
    "backend", "check", "to_host", "Tensor", "no_grad", "no_tangent", "primitives", "PRIMITIVES",
    "grad", "value_and_grad", "jvp", "vjp", "hvp", "hvp_reverse_over_reverse", "hessian",
    "capture", "losses", "memory", "Param", "Layout", "Objective", "BaseObjective", "ObjectiveInterface", "DatasetObjective", "Quadratic", "Rosenbrock", "LogisticRegression",
    "Function", "CurvatureMemoryError", "NonFiniteError", "UnknownParameterError", "rademacher",
]
from .spectrum import (  # noqa: E402
    linear_operator, top_eigenvalues, trace_hutchinson, trace_hutchpp,
    lanczos, gauss_quadrature, slq_quadrature, slq_density,
)
__all__ += [
    "linear_operator", "top_eigenvalues", "trace_hutchinson", "trace_hutchpp",
    "lanczos", "gauss_quadrature", "slq_quadrature", "slq_density",
]
