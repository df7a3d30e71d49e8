"""The exactness report (`python -m tinygrad2.verify`) runs whole and passes."""
from __future__ import annotations

from tinygrad2 import verify


def test_exactness_report_runs_and_every_exact_check_passes(capsys):
    assert verify.main([]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert "19/19 exact checks passed" in out


def test_a_failing_row_fails_the_report(monkeypatch, capsys):
    monkeypatch.setattr(verify, "report", lambda: [("a check that is off", 1.0, 1e-12)])
    assert verify.main([]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_help_prints_help_and_runs_nothing(monkeypatch, capsys):
    import pytest

    monkeypatch.setattr(verify, "report", lambda: pytest.fail("--help ran the report"))
    with pytest.raises(SystemExit) as stop:
        verify.main(["--help"])
    assert stop.value.code == 0 and "exactness report" in capsys.readouterr().out
