"""Statistics over seeds: what ``sweep`` prints at its end and ``report`` after its table.

Runs that differ only in their seed (and in the repetition number of their
method, ``"SGD#2"``) form one *group* (:func:`group_key`, the grouping of
``report``'s table). Per group and metric (default ``test_acc``):

* mean ± sample standard deviation (ddof = 1) and the 95% Student-t interval
  ``mean ± t(0.975, n - 1) · std / sqrt(n)`` (:func:`describe`); one run has
  no std and no interval ("-");
* where two groups of one experiment ran on common seeds, a **paired**
  comparison over those seeds (the same initialization and batch order):
  the mean of the differences (later group minus earlier), its 95%
  t-interval, and the two-sided Wilcoxon signed-rank p-value of
  :func:`scipy.stats.wilcoxon` with its defaults (zero differences dropped,
  exact distribution for small samples without ties) (:func:`paired`).
  Fewer than 2 pairs: no interval and no test (p is NaN). All differences 0:
  p = 1 (no evidence of a difference; SciPy's own answer, without its
  division warning). With n non-zero pairs the exact two-sided p cannot fall
  below 2 / 2^n (0.25 at n = 3, 0.0625 at n = 5, 0.0039 at n = 9): the
  summary says so, so that a small p is not expected where none can occur.

Only runs whose status is ``finished`` or ``diverged`` (whose metric is that
of their last good state) count; others are named as unfinished. All pairs are
compared when an experiment has at most :data:`ALL_PAIRS_UP_TO` groups, else
every group against the first.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import numpy as np  # host-side only: the metric values of finished runs

CONFIDENCE = 0.95
ALL_PAIRS_UP_TO = 6          # groups of one experiment: all pairs up to this many, else each against the first
COUNTED = ("finished", "diverged")
DEFAULT_METRIC = "test_acc"


@dataclass(frozen=True)
class Summary:
    """n values: their mean, sample std (ddof 1) and the t-interval of the mean (NaN where undefined)."""

    n: int
    mean: float
    std: float
    low: float
    high: float


def describe(values, confidence=CONFIDENCE) -> Summary:
    """Mean, sample std and the ``confidence`` Student-t interval of the mean of ``values``."""
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    from scipy import stats

    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Paired:
    """``b - a`` over the common seeds: the differences' summary, the Wilcoxon p-value and a note."""

    seeds: tuple
    difference: Summary
    p: float
    note: str = ""


def paired(a: dict, b: dict, confidence=CONFIDENCE) -> Paired:
    """Paired comparison of ``b`` against ``a`` ({seed: value}) over their common seeds (see the module)."""
    seeds = tuple(sorted(set(a) & set(b)))
    d = [float(b[s]) - float(a[s]) for s in seeds]
    summary = describe(d, confidence)
    zeros = sum(x == 0 for x in d)
    if len(d) < 2:
        return Paired(seeds, summary, math.nan, f"{len(d)} pair{'' if len(d) == 1 else 's'}: no interval, no test")
    if zeros == len(d):
        return Paired(seeds, summary, 1.0, "all differences are 0")
    from scipy import stats

    p = float(stats.wilcoxon(d).pvalue)
    note = f"{zeros} zero difference{'' if zeros == 1 else 's'} left out of the test" if zeros else ""
    return Paired(seeds, summary, p, note)


def smallest_p(n: int) -> float:
    """The smallest exact two-sided Wilcoxon signed-rank p-value with n non-zero pairs: 2 / 2^n."""
    return min(1.0, 2.0 / 2 ** n)


# ---------------------------------------------------------------- groups of runs


def method_of(run) -> str:
    """The method a run belongs to ("SGD#2" -> "SGD")."""
    return str(run.config.get("method", run.path.stem)).split("#", 1)[0]


def group_key(run) -> str:
    """Everything recorded but the seed (and the repetition number of the method): runs with equal keys are
    repetitions of one another (``report``'s rows and the statistics' groups)."""
    from .runner import comparable_settings

    config = {k: v for k, v in comparable_settings(run.config).items() if k != "seed"}
    config["method"] = method_of(run)
    return json.dumps(config, sort_keys=True, default=str)


def group_runs(runs) -> dict:
    """{group key: [runs]} in the order of first appearance."""
    groups = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(run)
    return groups


def metric_value(run, metric):
    """The run's final ``metric`` (its summary), or None when it has no finite one."""
    value = run.summary().get(metric)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _labels(groups) -> dict:
    """{key: label}: the method, the settings in which it differs from other groups of the same experiment
    and method (``lr=0.05``), and the experiment's name when the runs come from several."""
    decoded = {k: json.loads(k) for k in groups}
    experiments = {c.get("experiment") for c in decoded.values()}
    labels = {}
    for key, config in decoded.items():
        siblings = [c for c in decoded.values()
                    if c.get("experiment") == config.get("experiment") and c["method"] == config["method"]]
        varying = [k for k in config if k != "method" and len({json.dumps(c.get(k)) for c in siblings}) > 1]
        label = config["method"] + "".join(f" {k.rsplit('.', 1)[-1]}={_plain(config.get(k))}" for k in varying)
        labels[key] = (f"{config.get('experiment')}: " if len(experiments) > 1 else "") + label
    return labels


def _plain(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _num(x, signed=False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    text = f"{x:+.4f}" if signed else f"{x:.4f}"
    return text if abs(x) < 1e5 else f"{x:.3g}"


def _p(p) -> str:
    if not math.isfinite(p):
        return "-"
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.1e}"


def _seeds(seeds) -> str:
    """0,1,2,3,7 -> "0-3,7" (runs of three or more whole numbers as ranges; a missing seed as "-")."""
    parts, run = [], []
    for s in [*seeds, _END]:
        if run and isinstance(s, int) and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) >= 3 else ",".join(map(str, run)))
        run = [s] if isinstance(s, int) else []
        if s is not _END and not isinstance(s, int):
            parts.append("-" if s is None else str(s))
    return ",".join(parts)


_END = object()


def _columns(rows) -> list[str]:
    """Rows of cells as left-aligned columns, each line indented by two spaces."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def statistics(runs, metric=DEFAULT_METRIC, confidence=CONFIDENCE, always=False) -> str:
    """The statistics block of ``runs`` (loaded :class:`~experiments.results.Run`s): per group the
    summary over seeds, then the paired comparisons. Empty when no group has two counted runs, unless
    ``always``."""
    groups = group_runs(runs)
    values = {k: {} for k in groups}
    unfinished, twice = [], []
    for key, members in groups.items():
        for run in members:
            value = metric_value(run, metric) if run.status in COUNTED else None
            if run.status not in COUNTED:
                unfinished.append(f"{run.path.name} ({run.status})")
            elif value is not None and run.config.get("seed") in values[key]:
                twice.append(run.path.name)
            elif value is not None:
                values[key][run.config.get("seed")] = value
    if not always and max((len(v) for v in values.values()), default=0) < 2:
        return ""
    if not any(values.values()):
        return f"statistics: no finite {metric} in these runs"
    labels = _labels(groups)
    level = f"{confidence:.0%}"
    lines = [f"statistics of {metric} over seeds (mean ± sample std, ddof 1; {level} t-interval of the mean):"]
    rows = []
    for key, by_seed in values.items():
        s = describe(list(by_seed.values()), confidence)
        diverged = sum(r.status == "diverged" for r in groups[key])
        seeds = _seeds(sorted(by_seed, key=lambda x: (x is None, x)))
        rows.append([labels[key], f"n={s.n}", f"{_num(s.mean)} ± {_num(s.std)}", f"[{_num(s.low)}, {_num(s.high)}]",
                     f"seeds {seeds}" + (f" ({diverged} diverged)" if diverged else "")])
    lines += _columns(rows)
    pairs = _pairs(groups, values)
    if pairs:
        lines.append(f"paired by seed (same initialization and batch order): mean difference of {metric}, "
                     f"{level} t-interval, Wilcoxon p:")
        rows, smallest = [], []
        for a, b in pairs:
            c = paired(values[a], values[b], confidence)
            d = c.difference
            rows.append([f"{labels[b]} − {labels[a]}", f"n={d.n}", _num(d.mean, signed=True),
                         f"[{_num(d.low, signed=True)}, {_num(d.high, signed=True)}]", f"p={_p(c.p)}", c.note])
            nonzero = d.n - int(c.note.split()[0]) if c.note and c.note[0].isdigit() else d.n
            if nonzero >= 2 and not c.note.startswith("all"):
                smallest.append(nonzero)  # the exact test ranks only the non-zero differences
        lines += _columns(rows)
        if smallest:
            n = min(smallest)
            lines.append(f"  (with n non-zero pairs the exact p cannot fall below 2/2^n: {smallest_p(n):.3g} at n={n})")
    if unfinished:
        lines.append(f"not counted (unfinished): {', '.join(unfinished)}")
    if twice:
        lines.append(f"not counted (a seed its group already has): {', '.join(twice)}")
    return "\n".join(lines)


def _pairs(groups, values) -> list[tuple[str, str]]:
    """(earlier, later) group keys of one experiment with at least one common seed: all pairs up to
    :data:`ALL_PAIRS_UP_TO` groups per experiment, else each group against the experiment's first."""
    by_experiment = {}
    for key, members in groups.items():
        if values[key]:
            by_experiment.setdefault(members[0].config.get("experiment"), []).append(key)
    out = []
    for keys in by_experiment.values():
        candidates = (itertools.combinations(keys, 2) if len(keys) <= ALL_PAIRS_UP_TO else
                      ((keys[0], k) for k in keys[1:]))
        out += [(a, b) for a, b in candidates if set(values[a]) & set(values[b])]
    return out
