"""Command line: ``python -m experiments {list, run, report, plot, verify}``.

    python -m experiments list
    python -m experiments run digits [--optimizers SGD Adam ...] [--epochs N] [--seed S]
                                     [--out DIR] [--resume [--extend] | --overwrite] [--data-dir DIR]
                                     [--no-verify] [--device cpu|gpu] [--quick | --full] [--debug]
    python -m experiments report runs/digits__*.h5
    python -m experiments plot runs/digits__*.h5 [--png curves.png]
    python -m experiments verify

A mistake (a missing or damaged file, a bad value, a folder that cannot be
written) is one line on stderr and exit status 2, never a traceback
(``--debug`` shows it); Ctrl-C prints the command that resumes and exits 130.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

from . import catalog

PROG = "python -m experiments"


class CliError(Exception):
    """A request the command line refuses (the message is the one line printed)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message}\n")


def _count(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(f"interrupted{_resume_hint(argv)}", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        print(_one_line(err), file=sys.stderr)
        return 2


def _one_line(err) -> str:
    from .data import DataError
    from .results import ResultsError
    from .runner import RunError

    text = " ".join(str(err).split())
    from .results import WriteError

    known = (CliError, ResultsError, RunError, DataError, WriteError, FileNotFoundError)
    if isinstance(err, known):
        return text
    return f"{PROG}: {type(err).__name__}: {text} (--debug shows the traceback)"


def _main(argv) -> int:
    parser = _Parser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub.add_parser("list", help="the experiments that `run` knows", parents=[common])

    run = sub.add_parser("run", help="run an experiment: one results file per method, a table and a PNG",
                         parents=[common])
    run.add_argument("name")
    run.add_argument("--optimizers", nargs="+", metavar="METHOD", help="run only these methods")
    run.add_argument("--epochs", type=_count(1))
    run.add_argument("--seed", type=_count(0), default=0)
    run.add_argument("--out", default="runs", help="results folder (default: runs/)")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue killed runs from their checkpoints (the recorded settings must match)")
    again.add_argument("--overwrite", action="store_true", help="start again over existing results files")
    run.add_argument("--extend", action="store_true",
                     help="with --resume: continue finished runs to a larger --epochs (other settings equal)")
    run.add_argument("--data-dir", help="where the data sets are (else $TINYGRAD2_DATA, else a user cache)")
    run.add_argument("--no-verify", action="store_true",
                     help="skip the MD5 checks of the data files (generated or re-encoded copies)")
    run.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    scale = run.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="a few batches per method: a smoke test")
    scale.add_argument("--full", action="store_true", help="the paper's full scale instead of the CPU-sized default")

    report = sub.add_parser("report", help="print the table of results files", parents=[common])
    report.add_argument("files", nargs="+")
    plot = sub.add_parser("plot", help="learning curves of results files as one PNG", parents=[common])
    plot.add_argument("files", nargs="+")
    plot.add_argument("--png", default=None, help="output file (default: beside the first results file)")
    sub.add_parser("verify", help="the curvature exactness report (python -m tinygrad2.verify)", parents=[common])

    args = parser.parse_args(argv)
    if args.command == "list":
        for exp in catalog.EXPERIMENTS.values():
            print(f"{exp.name:<26} {exp.description}")
        return 0
    if args.command == "verify":
        from tinygrad2.verify import main as verify_main
        return verify_main([])
    if args.command == "report":
        print(table([Path(f) for f in args.files]))
        return 0
    if args.command == "plot":
        return _plot([Path(f) for f in args.files], args.png)
    return _run(args)


def _resume_hint(argv) -> str:
    """"; resume with: <the command>" for an interrupted ``run``, else ""."""
    if not argv or "run" not in argv:
        return ""
    words = [w for w in argv if w not in ("--resume", "--overwrite", "--debug")]
    return f"; resume with: {shlex.join(['python', '-m', 'experiments', *words, '--resume'])}"


def _check_gpu():
    """Refuse --device gpu unless CuPy imports and sees a CUDA device (before any data is loaded)."""
    try:
        import cupy
    except Exception as err:
        raise CliError(f"run: --device gpu needs CuPy, which cannot be imported ({type(err).__name__}: {err}); "
                       f"install tinygrad2[gpu] or use --device cpu") from err
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:
        raise CliError(f"run: --device gpu: no usable CUDA GPU ({type(err).__name__}: {err}); "
                       f"use --device cpu") from err
    if count < 1:
        raise CliError("run: --device gpu: CuPy sees no CUDA GPU; use --device cpu")


def _out_folder(out: Path) -> Path:
    from .results import WriteError, check_writable

    if out.exists() and not out.is_dir():
        raise CliError(f"run: --out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"run: --out {out}: cannot create the folder ({err.strerror or err})") from err
    try:
        check_writable(out)
    except WriteError as err:
        raise CliError(f"run: --out {out} is not writable ({err.reason})") from err
    return out


def _run(args) -> int:
    try:
        experiment = catalog.get(args.name)
    except KeyError as err:
        raise CliError(f"run: {err.args[0]}") from err
    specs = experiment.specs(epochs=args.epochs, seed=args.seed, quick=args.quick, methods=args.optimizers,
                             full=args.full)
    if args.no_verify:
        for spec in specs:
            spec.data = dict(spec.data, verify=False)
    if args.optimizers:
        unknown = set(args.optimizers) - {catalog.base_method(s.method) for s in specs}
        if unknown:
            known = list(dict.fromkeys(catalog.base_method(s.method) for s in experiment.specs(quick=True)))
            raise CliError(f"run {args.name}: unknown method(s) {sorted(unknown)}; choose from {known}")
    if args.extend and not args.resume:
        raise CliError("run: --extend continues finished results files: it needs --resume")
    from .runner import check_request, load_splits, train

    if args.device == "gpu":
        _check_gpu()
    out = _out_folder(Path(args.out))
    for spec in specs:  # refuse before anything runs or is written
        check_request(spec, out / spec.filename, resume=args.resume, extend=args.extend, overwrite=args.overwrite)
    if args.device == "gpu":
        from tinygrad2 import backend
        backend.use("cupy")
    paths, cache, start = [], {}, time.perf_counter()
    print(f"{experiment.name}: {experiment.description}")

    def splits_of(spec):
        key = repr(sorted(spec.data.items())) + str(spec.seed)
        if key not in cache:
            cache[key] = load_splits(spec.data, args.data_dir, spec.seed)
        return cache[key]

    for spec in specs:
        splits = splits_of(spec)
        path = out / spec.filename
        t0 = time.perf_counter()
        hook = experiment.epoch_hook(spec) if experiment.epoch_hook else None
        run = train(spec, path, resume=args.resume, extend=args.extend, overwrite=args.overwrite, splits=splits,
                    on_epoch=hook)
        print(f"  {spec.method:<22} {run.status:<9} {time.perf_counter() - t0:6.1f} s  -> {path}")
        paths.append(path)
    print(f"\n{table(paths, experiment)}")
    if experiment.notes:
        print(f"\n{experiment.notes}")
    if experiment.analysis:
        print(f"\n{experiment.analysis(specs, paths, splits_of, out)}")
    # one curve per method: the first repetition of a repeated method
    first = [p for p, s in zip(paths, specs) if "#" not in s.method or s.method.endswith("#1")]
    _plot(first or paths, out / f"{experiment.name}.png")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


def table(paths, experiment=None) -> str:
    """One row per group of runs: the same experiment and the same settings but
    the seed (repetitions ``"SGD#1"``, ``"SGD#2"``, ... of a method are one
    method) make one row of mean ± std (sample std); the seeds and epochs are
    shown. The columns are the experiment's when all runs belong to one (else
    the default ones and the experiment's name), and a paper's numbers stand
    beside a row only when every run of the row belongs to that paper."""
    from .results import load_run

    runs = [load_run(p) for p in paths]
    names = list(dict.fromkeys(r.config.get("experiment") for r in runs))
    if experiment is None and len(names) == 1:
        experiment = catalog.EXPERIMENTS.get(names[0])
    mixed = len(names) > 1
    columns = (("experiment",) if mixed else ()) + (
        experiment.columns if experiment and not mixed else ("method", "lr", "train_loss", "test_acc",
                                                               "seconds_per_epoch"))
    values = [c for c in columns if c not in ("experiment", "method", "lr", "hyper")]
    groups = {}
    for run in runs:
        groups.setdefault(_group_key(run), []).append(run)
    papers = {key: _paper_of(members) for key, members in groups.items()}
    paper = [c for c in values if any(c in p.reported.get(_method(m[0]), {})
                                      for p, m in zip(papers.values(), groups.values()) if p)]
    header = list(columns) + ["seed", "epochs"] + [f"paper {c}" for c in paper]
    rows = []
    for key, members in groups.items():
        first, n = members[0], len(members)
        method = _method(first)
        done = sum(r.status == "finished" for r in members)
        label = method + (f" (x{n})" if n > 1 else "")
        if done < n:
            label += f" ({first.status})" if n == 1 else f" ({done}/{n} finished)"
        row = []
        for c in columns:
            if c == "experiment":
                row.append(first.config.get("experiment") or "-")
            elif c == "method":
                row.append(label)
            elif c == "lr":
                row.append(catalog.learning_rate(first.config.get("optimizer", {})))
            elif c == "hyper":
                row.append(catalog.hyperparameters(first.config.get("optimizer", {})))
            else:
                row.append(catalog.format_value(_aggregate([r.summary().get(c) for r in members]), c))
        seeds = sorted({r.config.get("seed") for r in members}, key=lambda x: (x is None, x))
        row += [",".join("-" if x is None else str(x) for x in seeds), str(first.config.get("epochs", "-"))]
        reported = papers[key].reported if papers[key] else {}
        row += [catalog.format_value(reported.get(method, {}).get(c), c) for c in paper]
        rows.append(row)
    widths = [max(len(str(x)) for x in [h] + [r[i] for r in rows]) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def _method(run) -> str:
    return catalog.base_method(run.config.get("method", run.path.stem))


def _group_key(run) -> str:
    """Everything recorded but the seed (and the repetition number of the method)."""
    import json

    config = {k: v for k, v in run.config.items() if k != "seed"}
    config["method"] = _method(run)
    data = config.get("data")
    if isinstance(data, dict):
        config["data"] = {k: v for k, v in data.items() if k != "verify"}
    return json.dumps(config, sort_keys=True, default=str)


def _paper_of(members):
    """The experiment (with the paper's numbers) that every run of a group belongs to, else None."""
    names = {r.config.get("experiment") for r in members}
    return catalog.EXPERIMENTS.get(names.pop()) if len(names) == 1 else None


def _aggregate(values):
    """One value as is; several as (mean, sample std) of the finite ones."""
    if len(values) == 1:
        return values[0]
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return (mean, std)


def _plot(paths, png) -> int:
    from .plots import plot_runs
    from .results import load_run

    if not paths:
        return 1
    png = Path(png) if png else paths[0].with_suffix(".png")
    if png.is_dir():
        raise CliError(f"plot: --png {png} is a folder; give a PNG file name such as {png / 'curves.png'}")
    blocking = next((p for p in [png.parent, *png.parent.parents] if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise CliError(f"plot: --png {png}: {blocking} is a file, not a folder")
    runs = [load_run(p) for p in paths]
    plot_runs(runs, png, labels=[r.config.get("method", r.path.stem) for r in runs])
    print(f"learning curves: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
