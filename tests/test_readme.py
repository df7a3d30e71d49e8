"""The README's Python examples run as written, and its two set-up commands
are the ones CI runs."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.cpu_only  # host-bound: the README's examples are written for the NumPy backend (host arrays)
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})


def test_the_two_setup_commands_and_ci():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert commands[:2] == [
        "pip install -e . && python -m experiments run digits",
        'pip install -e ".[test]" && python -m pytest -q',
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[test]" && python -m pytest -q' in ci
