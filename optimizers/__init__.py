"""First- and second-order optimizers, all on one interface (see base.py)."""
from .base import OptimizeResult, Optimizer
from .state import load_state, save_state, states_equal

__all__ = ["OptimizeResult", "Optimizer", "load_state", "save_state", "states_equal"]
