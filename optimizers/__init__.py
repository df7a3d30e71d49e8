"""First- and second-order optimizers, all on one interface (see base.py)."""
from .base import OptimizeResult, Optimizer
from .state import load_state, save_state, states_equal

__all__ = ["OptimizeResult", "Optimizer", "load_state", "save_state", "states_equal"]
from .sgd import SGD  # noqa: E402
from .adam import Adam, AdamW  # noqa: E402
from .bb import BB  # noqa: E402
from .lbfgs import LBFGS  # noqa: E402
__all__ += ["SGD", "Adam", "AdamW", "BB", "LBFGS"]
from .cg import CGResult  # noqa: E402  (the function stays optimizers.cg.cg)
from .newton import DampedNewton, Newton  # noqa: E402
from .hessian_free import HessianFree  # noqa: E402
from .gauss_newton import GaussNewton  # noqa: E402
__all__ += ["CGResult", "Newton", "DampedNewton", "HessianFree", "GaussNewton"]
from .adahessian import AdaHessian  # noqa: E402
from .sgdph import SGDPH  # noqa: E402
from .hybrid import Hybrid  # noqa: E402
__all__ += ["AdaHessian", "SGDPH", "Hybrid"]
from .kfac import KFAC  # noqa: E402
from .shampoo import Shampoo  # noqa: E402
from .sophia import Sophia  # noqa: E402
__all__ += ["KFAC", "Shampoo", "Sophia"]
