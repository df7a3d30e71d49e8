"""Cross-check: tinygrad2's loss, gradient, HVP and dense Hessian of every
net against two PyTorch routes, refereed by finite differences.

    python -m benchmarks.crosscheck_torch            # every net (about 2-4 minutes on 2 cores)
    python -m benchmarks.crosscheck_torch --quick    # smoke test: MLPs, tiny SmallCNN, VGG11 BN / WN (no dense H)
    options: --cases NAME ..., --threads N (BLAS and torch threads, default 1), --seed S

Needs PyTorch (the ``compare`` extra: ``pip install -e ".[compare]"``);
without it the script says so in one line and exits 2.

For each net (MLP tanh / ReLU, SmallCNN, ResNet18 with both stems at width
1/64 and, HVPs only, the CIFAR stem at width 1/16, VGG11 with BatchNorm in
train and in eval mode, VGG11 with weight norm; all small enough for the
dense Hessian but that one, n <= 2,968) a PyTorch
twin built from torch.nn modules (benchmarks/torch_twins.py) gets the SAME
parameters, copied from tinygrad2's flat θ (PyTorch's initialization, each
entry perturbed so BN's γ, β and weight norm's g leave their defaults), and
the same float64 batch with integer labels; the loss is the mean softmax
cross-entropy. Quantities and routes:

* tinygrad2: ``model.objective("cross_entropy", X, y)``: ``loss_and_grad``,
  ``hvp`` (forward-over-reverse), ``hessian``;
* autograd: ``torch.autograd.grad`` with ``create_graph=True``, then the
  gradient of <g, v> (double backward), one backward pass per direction
  (per row for the dense Hessian);
* torch.func: ``grad_and_value``, ``jvp(grad(f))`` per direction and
  ``torch.func.hessian`` (forward-over-reverse through vmap), all over
  ``torch.func.functional_call`` of the twin's parameters and buffers.

BatchNorm in train mode is differentiated through its batch statistics (the
running statistics are updated on copies); the row "running stats" compares
ONE train-mode forward pass of each (tinygrad2's ``update_running_stats``,
PyTorch's momentum update) from the same non-trivial starting statistics.

Referee: central finite differences, the fourth-order stencil of
``tinygrad2.check`` (step 1e-3 / max|v|), of the loss along the directions
(for the gradient, compared as g·v) and of the PyTorch autograd gradient
(first order only, so it shares nothing with the second-order routes) along
the directions (HVP) and along unit rows (Hessian: every row when n <= 300,
else the 8 rows where the AD routes differ most plus 8 random ones). ReLU and
max-pooling have kinks, where derivatives jump: each direction's step is cut
to 5% of the distance to the nearest kink along it (``tinygrad2.check.
safe_steps``: one forward-mode pass asks every ReLU and maximum how far its
argument is from the kink, to first order), so no pre-activation changes sign
and no max-pool window changes its winner inside the stencil; the points are
random, so no unit sits exactly on a kink.

Verdicts: two AD results agree when their relative error (Frobenius, over all
directions) is at most 1e-9; a result is confirmed by FD within 1e-6. Where
any two routes disagree, or a route fails, the row names the routes FD
confirms and those it refutes; the PyTorch cases are listed after the table.
Exit 0 only if tinygrad2 agrees with FD everywhere, with at least one
PyTorch route wherever FD confirms one (loss: where they agree with each
other), and in the running statistics; else exit 1.
"""
from __future__ import annotations

import sys
import textwrap
import time
from dataclasses import dataclass, field

import numpy as np

from . import harness as H

NAME = "benchmarks.crosscheck_torch"
AGREE = 1e-9      # two AD routes agree (float64)
FD_TOL = 1e-6     # an AD result confirmed by finite differences
FD_STEP = 1e-3
DENSE_ALL_ROWS = 300   # FD of every Hessian row up to this n; beyond: 8 worst + 8 random rows
ROUTES = ("tinygrad2", "autograd", "torch.func")


def _cases():
    """{name: (builder, input shape, classes, mode, dense Hessian?)}; builders make the nets model."""
    import nets

    return {
        "mlp-tanh": (lambda: nets.MLP((12, 7, 5, 3), "tanh"), (6, 3, 4), 3, "train", True),
        "mlp-relu": (lambda: nets.MLP((12, 7, 5, 3), "relu"), (6, 3, 4), 3, "train", True),
        "smallcnn": (lambda: nets.SmallCNN(widths=(3, 4), hidden=8, in_channels=3, num_classes=5, image_size=20),
                     (3, 3, 20, 20), 5, "train", True),
        "resnet18-cifar": (lambda: nets.ResNet18(3, 5, stem="cifar", width=1 / 64), (4, 3, 8, 8), 5, "train", True),
        "resnet18-imagenet": (lambda: nets.ResNet18(1, 5, stem="imagenet", width=1 / 64), (4, 1, 32, 32), 5,
                              "train", True),
        "resnet18-cifar-w1/16": (lambda: nets.ResNet18(3, 5, stem="cifar", width=0.0625), (4, 3, 8, 8), 5,
                                 "train", False),
        "vgg11-bn-train": (lambda: nets.VGG(11, "bn", num_classes=4, width=1 / 64), (3, 3, 32, 32), 4, "train", True),
        "vgg11-bn-eval": (lambda: nets.VGG(11, "bn", num_classes=4, width=1 / 64), (3, 3, 32, 32), 4, "eval", True),
        "vgg11-wn": (lambda: nets.VGG(11, "wn", num_classes=4, width=1 / 64), (3, 3, 32, 32), 4, "train", True),
    }


QUICK = {
    "mlp-tanh": None, "mlp-relu": None,
    "smallcnn": (lambda: __import__("nets").SmallCNN(widths=(2, 3), hidden=6, in_channels=1, num_classes=4,
                                                     image_size=16), (3, 1, 16, 16), 4, "train", True),
    "vgg11-bn-train": (lambda: __import__("nets").VGG(11, "bn", num_classes=4, width=1 / 64), (3, 3, 32, 32), 4,
                       "train", False),
    "vgg11-wn": (lambda: __import__("nets").VGG(11, "wn", num_classes=4, width=1 / 64), (3, 3, 32, 32), 4,
                 "train", False),
}


# ================================================================ one case


def rel(a, b):
    """||a - b|| / max(||a||, ||b||) (Frobenius), 0 for two zeros."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.linalg.norm(a)), float(np.linalg.norm(b)))
    return float(np.linalg.norm(a - b)) / scale if scale > 0 else 0.0


@dataclass
class Row:
    case: str
    quantity: str
    values: dict                                   # route -> array, or an error string
    fd: np.ndarray | None = None                   # the FD reference (None: no FD for this quantity)
    pick: object = None                            # rows/entries of each value compared with fd
    note: str = ""
    pair: dict = field(default_factory=dict)       # (a, b) -> rel error
    vs_fd: dict = field(default_factory=dict)      # route -> rel error against FD

    def compare(self):
        ok = {r: v for r, v in self.values.items() if not isinstance(v, str)}
        for a, b in (("tinygrad2", "autograd"), ("tinygrad2", "torch.func"), ("autograd", "torch.func")):
            if a in ok and b in ok:
                self.pair[(a, b)] = rel(ok[a], ok[b])
        if self.fd is not None:
            for r, v in ok.items():
                self.vs_fd[r] = rel(v if self.pick is None else self.pick(v), self.fd)
        return self

    @property
    def disagreement(self):
        return any(e > AGREE for e in self.pair.values()) or any(isinstance(v, str) for v in self.values.values())

    def torch_cases(self):
        """[(route, what)] for PyTorch routes that fail or that FD refutes."""
        out = []
        for r in ROUTES[1:]:
            v = self.values.get(r)
            if isinstance(v, str):
                out.append((r, f"fails: {v}"))
            elif r in self.vs_fd and self.vs_fd[r] > FD_TOL:
                out.append((r, f"wrong: {self.vs_fd[r]:.1e} from FD (tinygrad2 {self.vs_fd['tinygrad2']:.1e})"))
        return out

    def verdict(self):
        if self.fd is None:
            return "-" if not self.disagreement else "routes disagree; no FD for this quantity"
        if not self.disagreement and all(e <= FD_TOL for e in self.vs_fd.values()):
            return "all agree"
        parts = []
        for r in ROUTES:
            v = self.values.get(r)
            if isinstance(v, str):
                parts.append(f"{r} fails")
            elif r in self.vs_fd:
                parts.append(f"{r} {'ok' if self.vs_fd[r] <= FD_TOL else 'WRONG'}")
        return "FD: " + ", ".join(parts)

    def passed(self):
        """tinygrad2 agrees with FD and with at least one FD-confirmed
        PyTorch route (no FD: with a route, where the routes agree)."""
        tg = self.values.get("tinygrad2")
        if isinstance(tg, str):
            return False
        if self.fd is not None:
            if self.vs_fd["tinygrad2"] > FD_TOL:
                return False
            confirmed = [r for r in ROUTES[1:] if r in self.vs_fd and self.vs_fd[r] <= FD_TOL]
            return not confirmed or any(self.pair.get(("tinygrad2", r), 1.0) <= AGREE for r in confirmed)
        errs = [self.pair[("tinygrad2", r)] for r in ROUTES[1:] if ("tinygrad2", r) in self.pair]
        return bool(errs) and min(errs) <= AGREE


def _try(fn):
    """fn()'s value as a NumPy array, or a short error string when PyTorch raises."""
    try:
        out = fn()
        return out.detach().numpy() if hasattr(out, "detach") else out
    except Exception as err:  # a PyTorch route that is not implemented or fails
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return textwrap.shorten(f"{type(err).__name__}: {text}", 110, placeholder=" ...")


def perturbed_theta(model, seed):
    """PyTorch's init, each entry times U(0.5, 1.5) plus N(0, 0.05²)."""
    rng = np.random.default_rng(seed)
    theta = np.asarray(model.init_theta(seed, dtype=np.float64))
    return theta * rng.uniform(0.5, 1.5, theta.shape) + 0.05 * rng.standard_normal(theta.shape)


def random_running_stats(model, seed):
    rng = np.random.default_rng(seed)
    model.load_buffers({name: rng.uniform(0.5, 2.0, np.shape(a)) if name.endswith("running_var")
                        else 0.3 * rng.standard_normal(np.shape(a)) for name, a in model.named_buffers().items()})


def run_case(name, spec, args, torch):
    """The rows of one net, and its sizes and seconds per route."""
    from tinygrad2 import backend
    from tinygrad2.check import central_difference, safe_steps
    from torch.func import grad, grad_and_value, hessian, jvp

    import nets
    from . import torch_twins as T

    build, shape, classes, mode, dense = spec
    seed = args.seed
    rng = np.random.default_rng(seed + 10)
    times = {}
    with backend.precision("float64"):
        model = build()
        theta = perturbed_theta(model, seed)
        X = rng.standard_normal(shape)
        y = rng.integers(0, classes, shape[0])
        if model.named_buffers():
            random_running_stats(model, seed + 2)
        model.train(mode == "train")
        n = theta.shape[0]
        K = 2 if args.quick else 4
        V = rng.standard_normal((K, n))
        obj = model.objective("cross_entropy", X, y)

        t0 = time.perf_counter()
        loss, g = obj.loss_and_grad(theta)
        tg = {"loss": np.float64(loss), "gradient": np.asarray(g), "HVP": np.asarray(obj.hvp(theta, V))}
        if dense:
            tg["Hessian"] = np.asarray(obj.hessian(theta))
        times["tinygrad2"] = time.perf_counter() - t0

        net = T.twin(model)
        pmap = T.parameter_map(model, net)
        buffers = T.buffers_of(model, net)
        net.train(mode == "train")
        Xt, yt, flat = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(theta)
        f = T.flat_function(net, pmap, buffers, Xt, yt)
        Vt = torch.from_numpy(V)

        def first_order(t):
            t = t.clone().requires_grad_(True)
            return torch.autograd.grad(f(t), t)[0]

        # ---- autograd: double backward
        t0 = time.perf_counter()
        ag = {}
        t = flat.clone().requires_grad_(True)
        value = f(t)
        gt = torch.autograd.grad(value, t, create_graph=True)[0]
        ag["loss"], ag["gradient"] = value.detach().numpy(), gt.detach().numpy()
        ag["HVP"] = _try(lambda: torch.stack([torch.autograd.grad(gt @ v, t, retain_graph=True)[0] for v in Vt]))
        if dense:
            ag["Hessian"] = _try(lambda: torch.stack([torch.autograd.grad(gt[i], t, retain_graph=True)[0]
                                                      for i in range(n)]))
        times["autograd"] = time.perf_counter() - t0

        # ---- torch.func: grad_and_value, jvp of grad, hessian
        t0 = time.perf_counter()
        fn = {}
        both = _try(lambda: grad_and_value(f)(flat))
        if isinstance(both, str):
            fn["loss"] = fn["gradient"] = both
        else:
            fn["gradient"], fn["loss"] = both[0].detach().numpy(), both[1].detach().numpy()
        fn["HVP"] = _try(lambda: torch.stack([jvp(grad(f), (flat,), (v,))[1] for v in Vt]))
        if dense:
            fn["Hessian"] = _try(lambda: hessian(f)(flat))
        times["torch.func"] = time.perf_counter() - t0

        # ---- finite differences, kink-safe steps from tinygrad2's forward mode
        t0 = time.perf_counter()

        def scalar(th):
            return nets.losses.cross_entropy(model.apply(th, X), y)

        def loss_at(x):
            return np.asarray(f(torch.from_numpy(np.asarray(x))).detach().numpy())

        def grad_at(x):
            return first_order(torch.from_numpy(np.asarray(x))).numpy()

        def steps(D):
            return np.concatenate([np.asarray(safe_steps(scalar, theta, D[i:i + 256], FD_STEP))
                                   for i in range(0, len(D), 256)])

        sV = steps(V)
        fd_dir = np.asarray(central_difference(loss_at, theta, V, sV))
        fd_hvp = np.asarray(central_difference(grad_at, theta, V, sV))
        rows = []
        values = {"tinygrad2": tg, "autograd": ag, "torch.func": fn}
        per = {q: {r: values[r][q] for r in ROUTES} for q in tg}
        rows.append(Row(name, "loss", per["loss"]).compare())
        rows.append(Row(name, "gradient", per["gradient"], fd_dir, pick=lambda v: V @ v,
                        note=f"FD of the loss along {K} random directions, compared as g·v").compare())
        rows.append(Row(name, "HVP", per["HVP"], fd_hvp, note=f"{K} random directions").compare())
        if dense:
            good = {r: v for r, v in per["Hessian"].items() if not isinstance(v, str)}
            if n <= DENSE_ALL_ROWS:
                idx = np.arange(n)
            else:
                spread = np.zeros(n)
                for a in good:
                    for b in good:
                        spread = np.maximum(spread, np.linalg.norm(good[a] - good[b], axis=1))
                worst = np.argsort(-spread, kind="stable")[:8]
                others = np.setdiff1d(np.arange(n), worst)
                idx = np.sort(np.concatenate([worst, rng.choice(others, 8, replace=False)]))
            E = np.eye(n)[idx]
            fd_h = np.asarray(central_difference(grad_at, theta, E, steps(E)))
            which = "all rows" if len(idx) == n else "the 8 most disputed + 8 random rows"
            rows.append(Row(name, "Hessian", per["Hessian"], fd_h, pick=lambda v: v[idx],
                            note=f"FD on {which}").compare())
        times["FD"] = time.perf_counter() - t0

        if mode == "train" and model.named_buffers():
            rows.append(running_stats_row(name, model, theta, X, net, pmap, buffers, torch, T))
    return rows, n, times


def running_stats_row(name, model, theta, X, net, pmap, buffers, torch, T):
    """One train-mode forward pass each, from the same running statistics."""
    before = {k: np.asarray(v).copy() for k, v in model.named_buffers().items()}
    model.update_running_stats(theta, X)
    mine = {k: np.asarray(v) for k, v in model.named_buffers().items()}
    model.load_buffers(before)
    T.load(net, torch.from_numpy(theta), pmap, buffers).train()
    with torch.no_grad():
        net(torch.from_numpy(X))
    theirs = dict(net.named_buffers())
    keys = sorted(mine)
    a = np.concatenate([mine[k].ravel() for k in keys])
    b = np.concatenate([theirs[k].numpy().ravel() for k in keys])
    moved = rel(a, np.concatenate([before[k].ravel() for k in keys]))
    row = Row(name, "running stats", {"tinygrad2": a, "autograd": b},
              note=f"one momentum step (buffers moved by {moved:.1e})")
    row.compare()
    return row


# ================================================================ report


def fmt(x):
    return "-" if x is None else f"{x:.1e}"


def table(rows):
    lines = ["| net | quantity | tg2 vs autograd | tg2 vs torch.func | autograd vs torch.func | tg2 vs FD "
             "| autograd vs FD | torch.func vs FD | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        def cell(a, b):
            if isinstance(r.values.get(a), str) or isinstance(r.values.get(b), str):
                return "fails"
            return fmt(r.pair.get((a, b)))

        def fdcell(route):
            if isinstance(r.values.get(route), str):
                return "fails"
            return fmt(r.vs_fd.get(route))
        lines.append(f"| {r.case} | {r.quantity} | {cell('tinygrad2', 'autograd')} | "
                     f"{cell('tinygrad2', 'torch.func')} | {cell('autograd', 'torch.func')} | "
                     f"{fdcell('tinygrad2')} | {fdcell('autograd')} | {fdcell('torch.func')} | "
                     f"{r.verdict()}{'' if r.passed() else ' (tinygrad2 FAILS)'} |")
    return "\n".join(lines)


def main(argv=None):
    parser = H.make_parser(__doc__, threads=1, seed=True,
                           quick_help="a smoke test: small nets, 2 directions, dense Hessians only up to n = 300")
    parser.add_argument("--cases", nargs="+", default=None, help="nets to check (default: all)")
    args = parser.parse_args(argv)
    torch = H.import_torch()
    if torch is None:
        print(f'{NAME}: PyTorch is not installed; install the compare extra: pip install -e ".[compare]"')
        return 2
    cases = _cases()
    if args.quick:
        cases = {k: (v or cases[k]) for k, v in QUICK.items()}
    if args.cases:
        unknown = sorted(set(args.cases) - set(_cases()))
        if unknown:
            parser.error(f"unknown case(s) {unknown}; choose from {sorted(_cases())}")
        cases = {k: v for k, v in (cases | {c: _cases()[c] for c in args.cases if c not in cases}).items()
                 if k in args.cases}
    H.setup(NAME, args)
    if args.threads and args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s); float64 throughout; "
          f"agree: rel <= {AGREE:g}; FD-confirmed: rel <= {FD_TOL:g}")
    rows, start = [], time.perf_counter()
    for name, spec in cases.items():
        t0 = time.perf_counter()
        case_rows, n, times = run_case(name, spec, args, torch)
        rows += case_rows
        spent = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
        notes = "".join(f"; {r.quantity}: {r.note}" for r in case_rows if r.quantity in ("Hessian", "running stats"))
        print(f"{name}: n = {n:,}; {spent}; {time.perf_counter() - t0:.1f} s{notes}", flush=True)
    print()
    print(table(rows))
    print("(relative errors, Frobenius over all directions; running stats: tinygrad2's buffers after one "
          "train-mode forward pass against PyTorch eager's, in the autograd column)")
    print()
    found = [(r, route, what) for r in rows for route, what in r.torch_cases()]
    if found:
        print("PyTorch cases (a route that fails, or that finite differences refute):")
        for r, route, what in found:
            print(f"  {r.case} {r.quantity}: {route} {what}")
    else:
        print("PyTorch cases: none (every PyTorch route agrees with finite differences)")
    checked = [r for r in rows if r.fd is not None and not isinstance(r.values["tinygrad2"], str)]
    worst = max(checked, key=lambda r: r.vs_fd["tinygrad2"])
    failed = [r for r in rows if not r.passed()]
    print(f"worst tinygrad2 error against FD: {worst.vs_fd['tinygrad2']:.1e} ({worst.case} {worst.quantity}); "
          f"total {time.perf_counter() - start:.1f} s")
    if failed:
        print("FAIL: tinygrad2 disagrees in " + "; ".join(f"{r.case} {r.quantity}" for r in failed))
        return 1
    print("PASS: tinygrad2 agrees with finite differences everywhere, and with every FD-confirmed PyTorch route")
    return 0


if __name__ == "__main__":
    sys.exit(main())
