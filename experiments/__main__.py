"""Command line: python -m experiments {list, run, sweep, report, plot, verify}.

    python -m experiments list
    python -m experiments run digits [--optimizers sgd adam ...] [--epochs N] [--seed S] [--blas-threads N]
                                     [--out DIR] [--resume [--extend] | --overwrite] [--data-dir DIR]
                                     [--no-verify] [--device cpu|gpu] [--quick | --full] [--debug]
    python -m experiments sweep digits [--seeds 0-9 | 0,3,5] [--optimizers ...] [--set KEY=V1,V2 ...]
                                       [--epochs N] [--out DIR] [--workers N | --scheduler tcp://HOST:PORT]
                                       [--data-dir DIR] [--no-verify] [--metric test_acc] [--quick | --full]
    python -m experiments report runs/digits__*.h5 [--metric test_acc]
    python -m experiments plot runs/digits__*.h5 [--out DIR | --png FILE]
    python -m experiments verify

A mistake (a missing or damaged file, a bad value, a folder that cannot be
written) is one line on stderr and exit status 2, never a traceback
(--debug shows it); Ctrl-C prints the command that resumes and exits 130.
The help text of every command is plain text (what a terminal shows).
"""
from __future__ import annotations

import argparse
import functools
import math
import shlex
import sys
import textwrap
import time
from pathlib import Path

from . import catalog
from .papers.common import plural, scale_label, scale_name

PROG = "python -m experiments"


class CliError(Exception):
    """A request the command line refuses (the message is the one line printed)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message}\n")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written (line breaks kept); every option that takes a value and has a
    default says it, "(default: ...)", unless its help already does."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.option_strings and action.nargs != 0 and default is not None and default is not argparse.SUPPRESS
                and "default" not in text):
            text += " (default: %(default)s)"
        return text


def _para(text, width=79) -> str:
    """A description as the terminal shows it: wrapped here, since the formatter keeps line breaks as written."""
    return textwrap.fill(" ".join(text.split()), width, break_on_hyphens=False)


TOP_DESCRIPTION = "Run the experiments of tinygrad2 (second-order optimizers), print their tables and plot them."
TOP_EPILOG = """\
examples:
  python -m experiments list
  python -m experiments run digits --optimizers sgd adam hf-newton --epochs 2 --out runs
  python -m experiments run mlp-mnist-newton --quick
  python -m experiments sweep digits --optimizers sgd adam --seeds 0-9 --set lr=0.1,0.03 --workers 2
  python -m experiments report runs/digits__*.h5
  python -m experiments plot runs/digits__*.h5 --out figures

A mistake is one line on stderr and exit status 2 (--debug shows the traceback);
Ctrl-C prints the command that resumes the run and exits 130."""
RUN_EPILOG = """\
Without a terminal on stdout (a log file, nohup) a progress line is printed every
$TINYGRAD2_PROGRESS_SECONDS seconds (default 10); on a terminal, tqdm bars on stderr.
--blas-threads is recorded in each results file; --resume does not compare it
(the thread count changes the speed, not the computation)."""


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
    from .sweep import SweepError

    text = " ".join(str(err).split())
    from .results import WriteError

    known = (CliError, ResultsError, RunError, DataError, WriteError, FileNotFoundError, SweepError)
    if isinstance(err, known):
        return text
    return f"{PROG}: {type(err).__name__}: {text} (--debug shows the traceback)"


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (every subcommand and option, with its help)."""
    from .runner import DEFAULT_BLAS_THREADS

    parser = _Parser(prog=PROG, description=_para(TOP_DESCRIPTION), epilog=TOP_EPILOG, formatter_class=_Help)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    command = functools.partial(sub.add_parser, parents=[common], formatter_class=_Help)

    command("list", help="the experiments that run knows, with their methods",
            description=_para("The experiments that run knows, with their methods."))

    run = command("run", help="run an experiment: one results file per method, a table and a PNG",
                  description=_para("Run an experiment: one results file per method, the table (with the "
                                    "paper's numbers beside ours where there are some), its notes and a "
                                    "learning-curve PNG."),
                  epilog=RUN_EPILOG)
    run.add_argument("name", help="the experiment (python -m experiments list shows them)")
    run.add_argument("--optimizers", nargs="+", metavar="METHOD",
                     help="run only these methods, in any letter case (default: all of the experiment's methods)")
    run.add_argument("--epochs", type=_count(1),
                     help="epochs of every method (default: the experiment's own at the chosen scale; the notes "
                          "after the table say them)")
    run.add_argument("--seed", type=_count(0), default=0, help="the seed of initialization and batch order")
    run.add_argument("--out", default="runs", help="results folder (default: runs/)")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue killed runs from their checkpoints (the recorded settings must match)")
    again.add_argument("--overwrite", action="store_true", help="start again over existing results files")
    run.add_argument("--extend", action="store_true",
                     help="with --resume: continue finished runs to a larger --epochs (other settings equal)")
    run.add_argument("--data-dir", help="where the data sets are (default: $TINYGRAD2_DATA, else a user cache)")
    run.add_argument("--no-verify", action="store_true",
                     help="skip the MD5 checks of the data files (generated or re-encoded copies)")
    run.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where the arrays live")
    run.add_argument("--blas-threads", type=_count(1), default=DEFAULT_BLAS_THREADS, metavar="N",
                     help="BLAS threads (OpenBLAS, MKL) of the runs and the analysis; recorded, not compared by "
                          "--resume")
    scale = run.add_mutually_exclusive_group()
    run.add_argument("--probes", metavar="NAMES",
                     help="curvature probes, comma-separated (lambda_max, lambda_min, ggn_lambda_max, trace, "
                          "density, sharpness_ratio, grad_noise, diag_error, newton_cosine, grad_spectral_norm, "
                          "dead_units, offdiag_mass), measured on a fixed probe batch and recorded in each "
                          "results file's probes group")
    run.add_argument("--probe-every", type=_count(1), default=None, metavar="STEPS",
                     help="steps between probes (default 50; step 0 and the last step are always probed)")
    run.add_argument("--probe-batch", type=_count(1), default=None, metavar="N",
                     help="examples in the probe batch, drawn once from the training set (default 256)")
    scale.add_argument("--quick", action="store_true", help="a few batches per method: a smoke test")
    scale.add_argument("--full", action="store_true", help="the paper's full scale instead of the CPU-sized default")

    _sweep_parser(command)
    report = command("report", help="print the table of results files",
                     description=_para("Print the table of results files: runs that differ only in the seed "
                                       "make one row of mean ± std; where a row has several seeds, the "
                                       "statistics over seeds follow (95% t-intervals, paired Wilcoxon tests)."))
    report.add_argument("files", nargs="+", help="results files (.h5)")
    report.add_argument("--metric", default="test_acc", help="the final metric of the statistics")
    plot = command("plot", help="learning curves of results files as one PNG",
                   description=_para("Learning curves of results files as one PNG."))
    plot.add_argument("files", nargs="+", help="results files (.h5)")
    where = plot.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR",
                       help="the folder of the PNG, named after the experiment, as run names it "
                            "(default: beside the first results file)")
    where.add_argument("--png", metavar="FILE", help="the PNG's file name (default: beside the first results file)")
    command("verify", help="the curvature exactness report (python -m tinygrad2.verify)",
            description=_para("The curvature exactness report (python -m tinygrad2.verify)."))
    return parser


def _sweep_parser(command):
    from .sweep import EPILOG, parse_seeds, parse_setting

    sweep = command("sweep", help="a grid of methods x settings x seeds, on local workers or a Dask cluster",
                    description=_para("Run the grid of methods x settings x seeds of an experiment, each point "
                                      "an ordinary run with its own results file, in parallel on local worker "
                                      "processes or a Dask cluster; print the table and the statistics over "
                                      "seeds."), epilog=EPILOG)
    sweep.add_argument("name", help="the experiment (python -m experiments list shows them)")
    sweep.add_argument("--seeds", type=parse_seeds, metavar="SEEDS",
                       help="seeds such as 0-9 or 0,3,5 (default: the experiment's repetitions, else 0-4)")
    sweep.add_argument("--optimizers", nargs="+", metavar="METHOD",
                       help="only these methods, in any letter case (default: all of the experiment's methods)")
    sweep.add_argument("--set", type=parse_setting, action="append", metavar="KEY=V1,V2",
                       dest="settings", help="values of a setting to sweep (repeatable; the grid is their product)")
    sweep.add_argument("--epochs", type=_count(1), help="epochs of every run (default: the experiment's own)")
    sweep.add_argument("--out", help="results folder (default: runs/sweeps/NAME)")
    where = sweep.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_count(1), metavar="N",
                       help="local worker processes, one BLAS thread each (default: the number of cores)")
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="run on this Dask scheduler's workers (needs the extra: pip install -e \".[cluster]\")")
    sweep.add_argument("--data-dir", help="where the data sets are (default: $TINYGRAD2_DATA, else a user cache; "
                                          "on a cluster, the same path on every worker)")
    sweep.add_argument("--no-verify", action="store_true", help="skip the MD5 checks of the data files")
    sweep.add_argument("--metric", default="test_acc", help="the final metric of the statistics")
    scale = sweep.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="a few batches per run: a smoke test")
    scale.add_argument("--full", action="store_true", help="the paper's full scale instead of the CPU-sized default")


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        print(list_text())
        return 0
    if args.command == "verify":
        from tinygrad2.verify import main as verify_main
        return verify_main([])
    if args.command == "report":
        print(table([Path(f) for f in args.files]))
        _print_statistics([Path(f) for f in args.files], args.metric)
        return 0
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "plot":
        return _plot([Path(f) for f in args.files], args.png, out=args.out)
    return _run(args)


def methods_of(experiment) -> list:
    """The methods of an experiment, by base name (repetitions "SGD#1", "SGD#2" are one), in its order."""
    return list(dict.fromkeys(catalog.base_method(s.method) for s in experiment.specs(quick=True)))


def list_text(width=100) -> str:
    """Every experiment: its name and description, and its methods."""
    blocks = []
    for exp in catalog.EXPERIMENTS.values():
        methods = methods_of(exp)
        blocks.append("\n".join([
            *textwrap.wrap(exp.description, width, initial_indent=f"{exp.name:<26} ", subsequent_indent=" " * 27,
                           break_on_hyphens=False),
            *textwrap.wrap(f"{plural(len(methods), 'method')}: {', '.join(methods)}", width,
                           initial_indent=" " * 27, subsequent_indent=" " * 29, break_on_hyphens=False)]))
    return "\n".join(blocks)


def canonical_methods(experiment, names, command="run") -> list | None:
    """The experiment's methods named in ``names``, in any letter case, as the experiment spells them (None: all).
    An unknown name is a :class:`CliError` that lists the choices."""
    if not names:
        return None
    known = methods_of(experiment)
    by_folded = {m.casefold(): m for m in known}
    unknown = sorted({n for n in names if n.casefold() not in by_folded})
    if unknown:
        raise CliError(f"{command} {experiment.name}: unknown method(s) {unknown}; choose from {known} "
                       f"(any letter case)")
    return list(dict.fromkeys(by_folded[n.casefold()] for n in names))


def run_summary(specs, scale, threads=None) -> str:
    """What this run is, from its specs (so it follows the flags): methods, repetitions, seeds, epochs, scale."""
    methods = list(dict.fromkeys(catalog.base_method(s.method) for s in specs))
    seeds = sorted({s.seed for s in specs})
    epochs = sorted({s.epochs for s in specs})
    parts = [f"{plural(len(methods), 'method')} ({', '.join(methods)})"]
    if len(seeds) > 1:
        parts.append(f"{plural(len(seeds), 'repetition')} of each (seeds {seeds[0]}..{seeds[-1]})")
    else:
        parts.append(f"seed {seeds[0]}")
    parts.append(plural(epochs[0], "epoch") if len(epochs) == 1 else
                 f"{epochs[0]} to {epochs[-1]} epochs by method (the notes after the table say which)")
    parts.append(f"scale: {scale_label(scale)}")
    if threads is not None:
        parts.append(plural(threads, "BLAS thread"))
    return ", ".join(parts)


def _resume_hint(argv) -> str:
    """"; resume with: <the command>" for an interrupted ``run``, else ""."""
    if argv and "sweep" in argv and ("run" not in argv or argv.index("sweep") < argv.index("run")):
        words = [w for w in argv if w != "--debug"]
        return f"; resume with the same command: {shlex.join(['python', '-m', 'experiments', *words])}"
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


def _out_folder(out: Path, command="run") -> Path:
    from .results import WriteError, check_writable

    if out.exists() and not out.is_dir():
        raise CliError(f"{command}: --out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"{command}: --out {out}: cannot create the folder ({err.strerror or err})") from err
    try:
        check_writable(out)
    except WriteError as err:
        raise CliError(f"{command}: --out {out} is not writable ({err.reason})") from err
    return out


def _probe_request(args):
    """RunSpec.probes from --probes, --probe-every, --probe-batch (None without --probes)."""
    from .probes import check_names
    from .runner import PROBE_BATCH, PROBE_EVERY

    if not args.probes:
        if args.probe_every is not None or args.probe_batch is not None:
            raise CliError("run: --probe-every and --probe-batch need --probes NAMES")
        return None
    try:
        names = check_names(args.probes, "run: --probes")
    except ValueError as err:
        raise CliError(str(err)) from None
    return {"names": names, "every": args.probe_every or PROBE_EVERY, "batch": args.probe_batch or PROBE_BATCH}


def _run(args) -> int:
    try:
        experiment = catalog.get(args.name)
    except KeyError as err:
        raise CliError(f"run: {err.args[0]}") from err
    methods = canonical_methods(experiment, args.optimizers)
    specs = experiment.specs(epochs=args.epochs, seed=args.seed, quick=args.quick, methods=methods, full=args.full)
    probes = _probe_request(args)
    for spec in specs:
        spec.blas_threads = args.blas_threads
        if probes is not None:  # else the experiment's own probes (curvature-study has some)
            spec.probes = probes
        if args.no_verify:
            spec.data = dict(spec.data, verify=False)
    if args.extend and not args.resume:
        raise CliError("run: --extend continues finished results files: it needs --resume")
    from .runner import blas_threads, check_request, load_splits, train

    if args.device == "gpu":
        _check_gpu()
    out = _out_folder(Path(args.out))
    for spec in specs:  # refuse before anything runs or is written
        check_request(spec, out / spec.filename, resume=args.resume, extend=args.extend, overwrite=args.overwrite)
    if args.device == "gpu":
        from tinygrad2 import backend
        backend.use("cupy")
    say = functools.partial(print, flush=True)  # a log file sees each line when it is printed
    scale = scale_name(args.quick, args.full)
    paths, cache, start = [], {}, time.perf_counter()
    say(f"{experiment.name}: {experiment.description}")
    say(f"this run: {run_summary(specs, scale, args.blas_threads)}")

    def splits_of(spec):
        key = repr(sorted(spec.data.items())) + str(spec.seed)
        if key not in cache:
            cache[key] = load_splits(spec.data, args.data_dir, spec.seed)
        return cache[key]

    with blas_threads(args.blas_threads):  # the analysis too
        for spec in specs:
            splits = splits_of(spec)
            path = out / spec.filename
            t0 = time.perf_counter()
            hook = experiment.epoch_hook(spec) if experiment.epoch_hook else None
            run = train(spec, path, resume=args.resume, extend=args.extend, overwrite=args.overwrite,
                        splits=splits, on_epoch=hook, log=say)
            say(f"  {spec.method:<22} {run.status:<9} {time.perf_counter() - t0:6.1f} s  -> {path}")
            paths.append(path)
        say(f"\n{table(paths, experiment)}")
        notes = experiment.notes(specs, scale) if callable(experiment.notes) else experiment.notes
        if notes:
            say(f"\n{notes}")
        analysis = experiment.analysis(specs, paths, splits_of, out) if experiment.analysis else ""
        if analysis:
            say(f"\n{analysis}")
    # every results file of this experiment in the folder (first repetitions), not only this run's
    from .plots import plot_folder

    say(f"learning curves: {plot_folder(out, experiment.name)}")
    from .probe_plots import plot_probe_folder

    probe_png = plot_probe_folder(out, experiment.name)  # None when no run has probes
    if probe_png:
        say(f"probe curves: {probe_png}")
    say(f"total {time.perf_counter() - start:.1f} s")
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
    """Everything recorded but the seed (and the repetition number of the method): stats.group_key."""
    from .stats import group_key

    return group_key(run)


def _print_statistics(paths, metric, always=False):
    """The statistics over seeds of these files (experiments.stats), when a group has several seeds."""
    from .results import load_run
    from .stats import statistics

    text = statistics([load_run(p) for p in paths], metric, always=always)
    if text:
        print(f"\n{text}", flush=True)


def _sweep(args) -> int:
    """The sweep command (experiments.sweep.command): exit 1 when a run failed."""
    from . import sweep

    try:
        experiment = catalog.get(args.name)
    except KeyError as err:
        raise CliError(f"sweep: {err.args[0]}") from err
    methods = canonical_methods(experiment, args.optimizers, "sweep")
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / experiment.name
    return sweep.command(args, experiment, methods, out, table=table, out_folder=_out_folder,
                         statistics=_print_statistics)


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


def _plot(paths, png=None, out=None) -> int:
    """One PNG of the runs' learning curves: ``png`` (a file name), else ``out``/<experiment>.png (a folder,
    created if needed), else beside the first results file."""
    from .plots import plot_runs
    from .results import load_run

    if not paths:
        return 1
    runs = [load_run(p) for p in paths]
    if png:
        png = Path(png)
        if png.is_dir():
            raise CliError(f"plot: --png {png} is a folder; give a PNG file name such as {png / 'curves.png'}, "
                           f"or use --out {png}")
        blocking = next((p for p in [png.parent, *png.parent.parents] if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise CliError(f"plot: --png {png}: {blocking} is a file, not a folder")
    elif out:
        names = {r.config.get("experiment") for r in runs}
        name = names.pop() if len(names) == 1 and None not in names else "curves"
        png = _out_folder(Path(out), "plot") / f"{name}.png"
    else:
        png = paths[0].with_suffix(".png")
    plot_runs(runs, png, labels=[r.config.get("method", r.path.stem) for r in runs])
    print(f"learning curves: {png}", flush=True)
    from .probe_plots import plot_probes, probe_png

    probes = plot_probes(runs, probe_png(png), labels=[r.config.get("method", r.path.stem) for r in runs])
    if probes:  # None when no run has probes
        print(f"probe curves: {probes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
