"""Command line: ``python -m experiments {list, run, report, plot, verify}``.

    python -m experiments list
    python -m experiments run digits [--optimizers SGD Adam ...] [--epochs N] [--seed S]
                                     [--out DIR] [--resume] [--data-dir DIR] [--no-verify] [--device cpu|gpu]
                                     [--quick] [--full]
    python -m experiments report runs/digits__*.h5
    python -m experiments plot runs/digits__*.h5 [--png curves.png]
    python -m experiments verify
"""
from __future__ import annotations

import argparse
import math
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
    run.add_argument("--no-verify", action="store_true",
                     help="skip the MD5 checks of the data files (generated or re-encoded copies)")
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
    if args.no_verify:
        for spec in specs:
            spec.data = dict(spec.data, verify=False)
    if args.optimizers:
        unknown = set(args.optimizers) - {catalog.base_method(s.method) for s in specs}
        if unknown:
            known = list(dict.fromkeys(catalog.base_method(s.method) for s in experiment.specs(quick=True)))
            print(f"run {args.name}: unknown method(s) {sorted(unknown)}; choose from {known}", file=sys.stderr)
            return 2
    from .data import DataError
    from .runner import load_splits, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths, cache, start = [], {}, time.perf_counter()
    print(f"{experiment.name}: {experiment.description}")

    def splits_of(spec):
        key = repr(sorted(spec.data.items())) + str(spec.seed)
        if key not in cache:
            cache[key] = load_splits(spec.data, args.data_dir, spec.seed)
        return cache[key]

    for spec in specs:
        try:
            splits = splits_of(spec)
        except DataError as err:
            print(f"run {args.name}: {err}", file=sys.stderr)
            return 2
        path = out / spec.filename
        t0 = time.perf_counter()
        hook = experiment.epoch_hook(spec) if experiment.epoch_hook else None
        run = train(spec, path, resume=args.resume, splits=splits, on_epoch=hook)
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
    """One row per method: the experiment's columns, and the paper's numbers
    beside ours where the experiment has them. Repetitions of a method
    (``"SGD#1"``, ``"SGD#2"``, ...) make one row of mean ± std (sample std)."""
    from .results import load_run

    runs = [load_run(p) for p in paths]
    if experiment is None and runs:
        name = runs[0].config.get("experiment")
        experiment = catalog.EXPERIMENTS.get(name)
    columns = experiment.columns if experiment else ("method", "lr", "train_loss", "test_acc", "seconds_per_epoch")
    reported = experiment.reported if experiment else {}
    values = [c for c in columns if c not in ("method", "lr", "hyper")]
    paper = [c for c in values if any(c in r for r in reported.values())]
    header = list(columns) + [f"paper {c}" for c in paper]
    groups = {}
    for run in runs:
        groups.setdefault(catalog.base_method(run.config.get("method", run.path.stem)), []).append(run)
    rows = []
    for method, members in groups.items():
        first, n = members[0], len(members)
        done = sum(r.status == "finished" for r in members)
        label = method + (f" (x{n})" if n > 1 else "")
        if done < n:
            label += f" ({first.status})" if n == 1 else f" ({done}/{n} finished)"
        row = []
        for c in columns:
            if c == "method":
                row.append(label)
            elif c == "lr":
                row.append(catalog.learning_rate(first.config.get("optimizer", {})))
            elif c == "hyper":
                row.append(catalog.hyperparameters(first.config.get("optimizer", {})))
            else:
                row.append(catalog.format_value(_aggregate([r.summary().get(c) for r in members]), c))
        row += [catalog.format_value(reported.get(method, {}).get(c), c) for c in paper]
        rows.append(row)
    widths = [max(len(str(x)) for x in [h] + [r[i] for r in rows]) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


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
    runs = [load_run(p) for p in paths]
    plot_runs(runs, png, labels=[r.config.get("method", r.path.stem) for r in runs])
    print(f"learning curves: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
