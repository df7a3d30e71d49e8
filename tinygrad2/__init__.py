"""tinygrad2: a readable autodiff engine for second-order optimization research."""
from . import backend
from .backend import to_host
from .tensor import Tensor, no_grad
from .primitives import REGISTRY as primitives
from .functional import grad, value_and_grad, jvp, vjp, hvp, hvp_reverse_over_reverse, hessian

__all__ = [
    "backend", "to_host", "Tensor", "no_grad", "primitives",
    "grad", "value_and_grad", "jvp", "vjp", "hvp", "hvp_reverse_over_reverse", "hessian",
]
