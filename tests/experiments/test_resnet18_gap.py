"""experiments.resnet18_gap changes exactly one setting per variant."""
from __future__ import annotations

import dataclasses

import pytest

from experiments.resnet18_gap import VARIANTS, variant_spec
from experiments.runner import settings_diff

pytestmark = pytest.mark.cpu_only  # specs only, nothing on a device

EXPECTED = {  # variant -> the one setting it changes (split: passed as data, not in the spec)
    "ours": set(),
    "raw-inputs": {"data.normalize"},
    "cifar-stem": {"model.kwargs.stem"},
    "other-split": set(),
    "lr/10": {"optimizer.kwargs.lr"},
    "lr/2": {"optimizer.kwargs.lr"},
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_changes_one_setting_of_the_paper_scale_sgd_run(name):
    ours, variant = variant_spec("ours", 3), variant_spec(name, 3)
    assert ours.model["kwargs"]["width"] == 1.0 and ours.optimizer == {"name": "SGD", "kwargs": {"lr": 0.01}}
    assert variant.seed == 3 and variant.epochs == 15 and variant.batch_size == 100
    changed = {key for key, _, _ in settings_diff(dataclasses.asdict(ours), dataclasses.asdict(variant))}
    assert changed - {"method"} == EXPECTED[name]
    assert VARIANTS[name][1] == (1 if name == "other-split" else 0)
