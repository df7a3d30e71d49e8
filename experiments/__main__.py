"""Command line: ``python -m experiments {list, run, report, plot, verify}``.

    python -m experiments list
    python -m experiments run digits [--optimizers SGD Adam ...] [--epochs N] [--seed S]
                                     [--out DIR] [--resume] [--data-dir DIR] [--device cpu|gpu] [--quick] [--full]
    python -m experiments report runs/digits__*.h5
    python -m experiments plot runs/digits__*.h5 [--png curves.png]
    python -m experiments verify
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import catalog


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the experiments that `run` knows")

    run = sub.add_parser("run", help="run an experiment: one results file per method, a table and a PNG")
    run.add_argument("name")
    run.add_argument("--optimizers", nargs="+", metavar="METHOD", help="run only these methods")
    run.add_argument("--epochs", type=int)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", default="runs", help="results folder (default: runs/)")
    run.add_argument("--resume", action="store_true", help="continue killed runs from their checkpoints")
    run.add_argument("--data-dir", help="where the data sets are (else $TINYGRAD2_DATA, else a user cache)")
    run.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    run.add_argument("--quick", action="store_true", help="a few batches per method: a smoke test")
    run.add_argument("--full", action="store_true", help="the paper's full scale instead of the CPU-sized default")

    report = sub.add_parser("report", help="print the table of results files")
    report.add_argument("files", nargs="+")
    plot = sub.add_parser("plot", help="learning curves of results files as one PNG")
    plot.add_argument("files", nargs="+")
    plot.add_argument("--png", default=None, help="output file (default: beside the first results file)")
    sub.add_parser("verify", help="the curvature exactness report (python -m tinygrad2.verify)")

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


def _run(args) -> int:
    if args.device == "gpu":
        from tinygrad2 import backend
        backend.use("cupy")
    try:
        experiment = catalog.get(args.name)
    except KeyError as err:
        print(err.args[0], file=sys.stderr)
        return 2
    specs = experiment.specs(epochs=args.epochs, seed=args.seed, quick=args.quick, methods=args.optimizers,
                             full=args.full)
    if args.optimizers:
        unknown = set(args.optimizers) - {s.method for s in specs}
        if unknown:
            known = [s.method for s in experiment.specs(quick=True)]
            print(f"run {args.name}: unknown method(s) {sorted(unknown)}; choose from {known}", file=sys.stderr)
            return 2
    from .data import DataError
    from .runner import load_splits, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths, cache, start = [], {}, time.perf_counter()
    print(f"{experiment.name}: {experiment.description}")
    for spec in specs:
        key = repr(sorted(spec.data.items())) + str(spec.seed)
        try:
            if key not in cache:
                cache[key] = load_splits(spec.data, args.data_dir, spec.seed)
        except DataError as err:
            print(f"run {args.name}: {err}", file=sys.stderr)
            return 2
        path = out / spec.filename
        t0 = time.perf_counter()
        run = train(spec, path, resume=args.resume, splits=cache[key])
        print(f"  {spec.method:<16} {run.status:<9} {time.perf_counter() - t0:6.1f} s  -> {path}")
        paths.append(path)
    print(f"\n{table(paths, experiment)}")
    if experiment.notes:
        print(f"\n{experiment.notes}")
    _plot(paths, out / f"{experiment.name}.png")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


def table(paths, experiment=None) -> str:
    """One row per results file: the experiment's columns, and the paper's
    numbers beside ours where the experiment has them."""
    from .results import load_run

    runs = [load_run(p) for p in paths]
    if experiment is None and runs:
        name = runs[0].config.get("experiment")
        experiment = catalog.EXPERIMENTS.get(name)
    columns = experiment.columns if experiment else ("method", "lr", "train_loss", "test_acc", "seconds_per_epoch")
    reported = experiment.reported if experiment else {}
    header = list(columns) + [f"paper {c}" for c in columns[2:] if any(c in r for r in reported.values())]
    rows = []
    for run in runs:
        summary, method = run.summary(), run.config.get("method", run.path.stem)
        row = []
        for c in columns:
            if c == "method":
                row.append(method + ("" if run.status == "finished" else f" ({run.status})"))
            elif c == "lr":
                row.append(catalog.learning_rate(run.config.get("optimizer", {})))
            else:
                row.append(catalog.format_value(summary.get(c), c))
        paper = reported.get(method, {})
        row += [catalog.format_value(paper.get(c), c) for c in columns[2:] if any(c in r for r in reported.values())]
        rows.append(row)
    widths = [max(len(str(x)) for x in [h] + [r[i] for r in rows]) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def _plot(paths, png) -> int:
    from .plots import plot_runs
    from .results import load_run

    if not paths:
        return 1
    png = Path(png) if png else paths[0].with_suffix(".png")
    plot_runs([load_run(p) for p in paths], png)
    print(f"learning curves: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
