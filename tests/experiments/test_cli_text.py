"""The command line as a researcher meets it: every option has help text and
shows its default; `list` names every experiment's methods; method names in
any letter case; `plot --out DIR`; no raw markup in the help; the printed
header and footnotes follow the flags; progress lines in a log (stdout not a
terminal); the BLAS threads are a recorded setting that resume does not
compare."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from threadpoolctl import threadpool_info

from experiments import catalog
from experiments.__main__ import build_parser, canonical_methods, main, methods_of, run_summary
from experiments.papers import PAPERS
from experiments.papers.common import scale_name
from experiments.results import load_run
from experiments.runner import DEFAULT_BLAS_THREADS, PROGRESS_ENV, RunSpec, check_request, train

pytestmark = pytest.mark.cpu_only  # host-bound: CLI runs and subprocesses

ROOT = Path(__file__).resolve().parents[2]
PAPER_NAMES = [paper.EXPERIMENT.name for paper in PAPERS]
MARKUP = re.compile(r"``|:(class|func|mod|meth|attr|data|ref):`|^\s*={3,}|^\s*-{3,}\s+-{3,}", re.MULTILINE)


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def _entries(text) -> dict:
    """{invocation: help text} of the argument lines of a --help ("  --seed SEED   the seed ... (default: 0)")."""
    entries, current = {}, None
    for line in text.splitlines():
        start = re.match(r"^  (\S.*?)(?:\s{2,}(\S.*))?$", line)
        if start and not line.startswith("   "):
            current = start.group(1)
            entries[current] = start.group(2) or ""
        elif current is not None and re.match(r"^\s{6,}\S", line):
            entries[current] = (entries[current] + " " + line.strip()).strip()
        elif not line.strip() or not line.startswith(" "):
            current = None
    return entries


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("command", list(_subcommands()))
def test_every_option_has_help_and_shows_its_default(command, capsys):
    entries = _entries(_help([command], capsys))
    for action in _subcommands()[command]._actions:
        if action.help == argparse.SUPPRESS:
            continue  # hidden (--debug repeated after the subcommand)
        names = action.option_strings or [action.dest]
        found = [text for inv, text in entries.items() if set(names) & set(inv.replace(",", " ").split())]
        assert len(found) == 1, (command, names, entries)
        assert found[0], f"{command} {names[0]} has no help text"
        takes_value = action.option_strings and action.nargs != 0
        if takes_value and action.default not in (None, argparse.SUPPRESS):
            assert f"(default: {action.default}" in found[0], (command, names[0], found[0])
    if command == "run":  # the four that were bare
        text = {inv.split()[0]: t for inv, t in entries.items()}
        assert text["name"] and "(default:" in text["--epochs"]
        assert "(default: 0)" in text["--seed"] and "(default: cpu)" in text["--device"]
        assert f"(default: {DEFAULT_BLAS_THREADS})" in text["--blas-threads"]


def test_the_help_is_plain_text(capsys):
    done = subprocess.run([sys.executable, "-m", "experiments", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0 and "usage: python -m experiments" in done.stdout
    for command in _subcommands():
        assert command in done.stdout
    for text in [done.stdout] + [_help([c], capsys) for c in _subcommands()]:
        assert not MARKUP.search(text), MARKUP.search(text)
        assert "`" not in text


def test_list_shows_every_experiments_methods(capsys):
    assert main(["list"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for exp in catalog.EXPERIMENTS.values():
        methods = methods_of(exp)
        assert f"{exp.name} " in out and f"{len(methods)} methods: {', '.join(methods)}" in out
    assert "15 methods: SGD, SGD-momentum, Adam, Newton," in out
    assert "5 methods: SGD, SGD-momentum, Adam, AdaHessian, Hybrid" in out  # repetitions are one method


def test_method_names_in_any_letter_case(capsys, tmp_path):
    digits = catalog.get("digits")
    assert canonical_methods(digits, ["sgd", "hf-newton", "ADAM", "Sgd"]) == ["SGD", "HF-Newton", "Adam"]
    assert canonical_methods(catalog.get("sgdph-cifar10"), ["bn/sgd-ph-exact"]) == ["BN/SGD-PH-exact"]
    assert canonical_methods(digits, None) is None
    assert main(["run", "digits", "--optimizers", "sgd", "bogus", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "unknown method(s) ['bogus']" in err and "'HF-Newton'" in err
    assert list(tmp_path.iterdir()) == []


def test_a_run_prints_what_it_ran_then_plot_out(tmp_path, capsys, monkeypatch):
    """--optimizers in lower case, --quick, --epochs 2: the header, the footnotes and the progress lines say so;
    plot --out puts the PNG in a folder, --png still names a file."""
    monkeypatch.setenv(PROGRESS_ENV, "3600")  # one line per method: the one after its first step
    out = tmp_path / "runs"
    argv = ["run", "digits", "--quick", "--optimizers", "sgd", "adam", "hf-newton", "--epochs", "2", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    header = text.split("\n| method")[0]
    assert "this run: 3 methods (SGD, Adam, HF-Newton), seed 0, 2 epochs, scale: --quick" in header
    assert not re.search(r"\b12\b", header)
    notes = text.split("\n\n")[2]
    assert "SGD, Adam: 2 epochs x 2 batches of 64 = 4 steps." in notes
    assert "HF-Newton: 2 epochs x 2 batches of 256 = 4 steps." in notes
    assert "--quick" in notes and "10 epochs" not in notes and "Dense Newton" not in notes
    progress = [line for line in text.splitlines() if line.startswith("  progress ")]
    assert [line.split(":")[0] for line in progress] == ["  progress SGD", "  progress Adam", "  progress HF-Newton"]
    files = sorted(out.glob("digits__*.h5"))
    assert [f.name for f in files] == ["digits__Adam.h5", "digits__HF-Newton.h5", "digits__SGD.h5"]
    assert load_run(files[0]).config["blas_threads"] == DEFAULT_BLAS_THREADS

    assert main(["plot", *map(str, files), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "digits.png").stat().st_size > 10_000
    assert main(["plot", *map(str, files), "--png", str(tmp_path / "named.png")]) == 0
    assert (tmp_path / "named.png").exists()
    capsys.readouterr()
    assert main(["plot", str(files[0]), "--out", str(files[1])]) == 2
    assert capsys.readouterr().err.strip() == f"plot: --out {files[1]} is a file, not a folder"
    with pytest.raises(SystemExit):
        main(["plot", str(files[0]), "--out", str(tmp_path), "--png", "x.png"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_digits_footnotes_follow_the_flags():
    digits = catalog.get("digits")
    default = digits.notes(digits.specs(), "cpu")
    assert "Newton, DampedNewton: 1 epoch x 2 batches of 256 = 2 steps." in default
    assert ("SGD, SGD-momentum, Adam, BB, AdaHessian, SGD-PH, Hybrid, K-FAC, Shampoo, Sophia-G: 10 epochs of batch 64"
            in default)
    longer = digits.notes(digits.specs(epochs=3), "cpu")
    assert "Newton, DampedNewton: 3 epochs x 2 batches of 256 = 6 steps." in longer and "10 epochs" not in longer


@pytest.mark.parametrize("name", PAPER_NAMES)
def test_paper_headers_and_footnotes_follow_the_flags(name):
    exp = catalog.get(name)
    assert not re.search(r"\d+ (optimizers|methods)", exp.description)
    for quick, full in ((False, False), (True, False), (False, True)):
        scale = scale_name(quick, full)
        notes = exp.notes(exp.specs(quick=quick, full=full), scale)
        first = notes.split(" --full:")[0]
        assert first.startswith({"cpu": "CPU default: ", "quick": "--quick", "full": "--full"}[scale]), first
        assert ("CPU default" in notes) == (scale == "cpu")
    default_epochs = exp.specs()[0].epochs
    methods = methods_of(exp)[:2]
    specs = exp.specs(epochs=2, quick=True, methods=methods)
    first = exp.notes(specs, "quick").split(" --full:")[0]
    assert "2 epochs" in first and f"{default_epochs} epochs" not in first
    summary = run_summary(specs, "quick", threads=1)
    assert summary.startswith(f"2 methods ({', '.join(methods)}), ") and "2 epochs" in summary
    assert "scale: --quick" in summary and "1 BLAS thread" in summary


def test_quick_footnotes_describe_the_quick_model():
    newton = catalog.get("mlp-mnist-newton")
    quick = newton.notes(newton.specs(quick=True), "quick")
    assert "MLP 49-4-10 (n = 250), 2 batches of 64 per epoch" in quick and "49-16-10" not in quick
    resnet = catalog.get("resnet18-mnist-hybrid")
    quick = resnet.notes(resnet.specs(quick=True), "quick")
    assert "width 0.0625 (channels 4-8-16-32, 44,710 parameters" in quick and "2 repetitions" in quick
    sgdph = catalog.get("sgdph-cifar10")
    assert "VGG11 at width 0.0625 (channels 4..32)" in sgdph.notes(sgdph.specs(quick=True), "quick")
    cnn = catalog.get("cnn-cifar10-quasi-newton")
    assert "(64 train, 16 validation" in cnn.notes(cnn.specs(quick=True), "quick")


def test_progress_lines_when_stdout_is_a_pipe(tmp_path):
    cmd = [sys.executable, "-m", "experiments", "run", "digits", "--optimizers", "SGD", "--epochs", "2", "--out",
           str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{PROGRESS_ENV: "0.01"})
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    pattern = re.compile(r"^  progress SGD: epoch [12]/2, batch \d+/20, step \d+, loss \d\.\d+, "
                         r"\d+\.\d s elapsed, ETA \d+\.\d s$")
    lines = [line for line in done.stdout.splitlines() if line.startswith("  progress ")]
    assert len(lines) >= 2 and all(pattern.match(line) for line in lines), lines
    assert "\r" not in done.stdout  # no tqdm in a log


def _spec(threads):
    return RunSpec(experiment="test", method="SGD", model={"name": "MLP", "kwargs": {"sizes": [64, 8, 10]}},
                   optimizer={"name": "SGD", "kwargs": {"lr": 0.1}},
                   data={"name": "digits", "reshape": [-1], "limit_batches": 2}, epochs=1, batch_size=32,
                   blas_threads=threads)


def test_blas_threads_are_applied_recorded_and_not_compared_by_resume(tmp_path):
    seen = {}

    def hook(epoch, theta, model, objective):
        seen[epoch] = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    path = tmp_path / "run.h5"
    train(_spec(1), path, progress=False, on_epoch=hook)
    assert seen == {0: {1}, 1: {1}}
    assert load_run(path).config["blas_threads"] == 1
    assert check_request(_spec(2), path, resume=True).status == "finished"  # no "recorded with blas_threads"
    assert RunSpec.blas_threads == DEFAULT_BLAS_THREADS


def test_threadpoolctl_is_a_runtime_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("threadpoolctl") for d in project["dependencies"])
