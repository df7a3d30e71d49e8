"""Optimizers call only what ObjectiveInterface names: every contract row runs
on objectives seen through a proxy that has nothing else (no ``X``, no ``y``,
no private helpers), and the optimizers' source never reads ``objective.X``."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tinygrad2 import ObjectiveInterface

from _helpers import PROBLEMS, ROWS, problem, train

pytestmark = pytest.mark.usefixtures("float64")

INTERFACE = {
    name for name in dir(ObjectiveInterface) if not name.startswith("_")
} | set(ObjectiveInterface.__annotations__)


class InterfaceOnly:
    """An objective with every attribute outside the interface hidden."""

    def __init__(self, objective):
        self._objective = objective

    def __getattr__(self, name):
        if name not in INTERFACE:
            raise AttributeError(f"an optimizer read objective.{name}, which ObjectiveInterface does not name")
        return getattr(self._objective, name)


def test_the_interface_names_what_the_docs_list():
    assert {"loss", "grad", "loss_and_grad", "hvp", "ggn_vp", "hessian", "ggn", "hessian_diag",
            "block_row_sums", "block_diag", "with_batch", "layout", "counts", "batch_size", "capture"} == INTERFACE


@pytest.mark.parametrize("problem_name", PROBLEMS)
@pytest.mark.parametrize("row", sorted(ROWS))
def test_every_optimizer_runs_on_the_interface_alone(row, problem_name):
    objective, theta0, _ = problem(problem_name)
    thetas, _, infos = train(ROWS[row](), InterfaceOnly(objective), theta0)
    assert len(infos) == len(thetas) - 1 > 0


def test_hessian_free_with_martens_preconditioner_runs_on_the_interface_alone():
    # the preconditioner path reads the batch size (and an optional per-example hook)
    from optimizers import HessianFree

    objective, theta0, _ = problem("quadratic")
    thetas, _, infos = train(HessianFree(damping=1.0, preconditioner="martens"), InterfaceOnly(objective), theta0)
    assert len(infos) == len(thetas) - 1 > 0


def test_the_source_scan_sees_getattr_reads():
    line = 'X = getattr(objective, "X", None)'
    assert re.search(r"objective\.(X|y|_\w+)\b|getattr\(\s*objective\s*,\s*[\"'](X|y|_\w+)[\"']", line)


def test_proxy_refuses_what_the_interface_lacks():
    objective, _, _ = problem("quadratic")
    with pytest.raises(AttributeError, match="objective.A, which ObjectiveInterface does not name"):
        InterfaceOnly(objective).A


def test_no_optimizer_reads_the_objectives_data():
    root = Path(__file__).resolve().parents[2] / "optimizers"
    hits = [f"{p.name}:{i}" for p in sorted(root.glob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"objective\.(X|y|_\w+)\b|getattr\(\s*objective\s*,\s*[\"'](X|y|_\w+)[\"']", line)]
    assert not hits, f"optimizers read objective data or internals: {hits}"
