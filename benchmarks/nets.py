"""Benchmark: nets models on the engine, beside PyTorch eager when importable.

    python -m benchmarks.nets              # full run
    python -m benchmarks.nets --quick      # tiny run (a smoke test)
    python -m benchmarks.nets --profile    # + where the time goes, per primitive
    options: --threads N (alias --blas-threads; default 1, 0 = library default), --rounds R, --resnet-rounds R,
             --no-resnet, --seed S, --data-dir DIR, --no-verify

Cases (float32):

* SmallCNN (conv 3->6 k5, ReLU, maxpool 2, conv 6->16 k5, ReLU, maxpool 2,
  linear 400->120, ReLU, linear 120->10; 52,202 parameters), batch 128 of
  CIFAR-10 (the first 128 training records, pixels / 255, read by
  ``experiments.data``: ``--data-dir`` > ``$TINYGRAD2_DATA`` > the user cache
  folder), mean softmax cross-entropy:

  - grad: ``objective.loss_and_grad(theta)`` (one forward, one backward);
  - HVP: ``objective.hvp(theta, v)``, one direction, forward-over-reverse;
  - the same two on the other patch routes of ``Conv2d``: ``"slices"``
    (shifted strided views and one concatenate) and ``"im2col"`` (the engine's
    im2col primitive), against the default ``"blocked"`` route (the conv
    primitives, patches copied in cache-sized blocks of output rows);
  - torch eager (if ``import torch`` works): grad by ``torch.autograd.grad``,
    HVP by ``torch.func.jvp(torch.func.grad(f))``, the same weights and data.

  Targets (issue 14): tinygrad2 grad <= 1.3x torch eager grad; tinygrad2
  HVP <= 2.0x its own grad.

* ResNet18 (ImageNet stem, 1 input channel, 10 classes, width 1; 11,175,370
  parameters), batch 100 of 1x28x28 (MNIST's first 100 training images): one
  training step = loss + gradient in training
  mode, running statistics updated (``with model.updating_running_stats()``).
  Target (issue 14): <= 1.5x torch eager, beside it when importable.

Timing with ``benchmarks.harness.run_rounds``: after a warm-up, every
contender runs once per round, in a freshly shuffled order, for 30 rounds
(ResNet18: 7; --quick: 3 and 1, and the ResNet18 batch is 10); medians.
Ratio columns are medians over rounds of the paired ratio within a round (a
slow drift of a shared machine's load cancels out of them); their spread
(min - max) is printed below the table. BLAS (and torch) run single-threaded
by default.

Before timing, float64 validation on a batch of 8: tinygrad2's SmallCNN loss,
gradient and HVP against torch's (when importable) and against the slices
and im2col routes, and ResNet18 (width 1/4) outputs and gradient against a torch
ResNet-18 with torchvision's layout loaded name by name from theta.
"""
from __future__ import annotations

import sys
import time

import numpy as np

import nets
import tinygrad2.primitives as P

from . import harness as H

NAME = "benchmarks.nets"
GRAD_OVER_TORCH_TARGET = 1.3
HVP_OVER_GRAD_TARGET = 2.0
RESNET_OVER_TORCH_TARGET = 1.5
ROUTES = ("slices", "im2col")  # the Conv2d patch routes timed beside the default ("blocked")
VALIDATION_TOL = 1e-10


# ================================================================ torch twins (optional)


def torch_smallcnn(torch):
    nn = torch.nn

    class SmallCNN(nn.Module):  # names match nets.SmallCNN's layout
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
            self.classifier = nn.Sequential(nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 10))

        def forward(self, x):
            return self.classifier(self.features(x).flatten(1))

    return SmallCNN()


def torch_resnet18(torch, in_channels, num_classes, width=1.0):
    """ResNet-18 with torchvision's module names (torchvision is not needed)."""
    nn = torch.nn
    c = [max(1, int(round(b * width))) for b in (64, 128, 256, 512)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, c[0], 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(c[0])
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = c[0]
            for i, (cout, s) in enumerate(zip(c, (1, 2, 2, 2))):
                setattr(self, f"layer{i + 1}", nn.Sequential(Block(cin, cout, s), Block(cout, cout, 1)))
                cin = cout
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet()


def load_into_torch(torch, tmodel, model, theta):
    """Copy theta into a torch module, parameter by parameter, by name."""
    layout, theta = model.layout(), np.asarray(theta)
    state = {p.name: torch.from_numpy(theta[p.slice].reshape(p.shape).copy()) for p in layout}
    for name, array in model.named_buffers().items():
        state[name] = torch.from_numpy(np.asarray(array).copy())
    missing, unexpected = tmodel.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"torch twin: names differ: missing {missing}, unexpected {unexpected}")
    return tmodel


def torch_grad_hvp(torch, tmodel, X, y):
    """(grad(), hvp(v)) closures over a torch module's parameters."""
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    names = [n for n, _ in tmodel.named_parameters()]
    params = tuple(p.detach() for _, p in tmodel.named_parameters())

    def loss_of(*ps):
        out = torch.func.functional_call(tmodel, dict(zip(names, ps)), (Xt,))
        return torch.nn.functional.cross_entropy(out, yt)

    def grad():
        leaves = [p.detach().requires_grad_(True) for p in params]
        loss = loss_of(*leaves)
        return loss.item(), torch.autograd.grad(loss, leaves)

    grad_fn = torch.func.grad(loss_of, argnums=tuple(range(len(params))))

    def hvp(V):
        return torch.func.jvp(grad_fn, params, V)[1]

    def flat(tensors):
        return np.concatenate([t.detach().numpy().ravel() for t in tensors])

    def split(v):
        out, start = [], 0
        for p in params:
            out.append(torch.from_numpy(np.ascontiguousarray(v[start:start + p.numel()]).reshape(p.shape)))
            start += p.numel()
        return tuple(out)

    return grad, hvp, flat, split


# ================================================================ validation


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def validate(torch, rng, cifar, mnist):
    """float64, on the first 8 examples of ``cifar`` and ``mnist`` (each
    (X, y)): SmallCNN against torch and the other patch routes; ResNet18 (width 1/4)
    against a torch twin. Aborts on disagreement."""
    checks = {}
    X, y = cifar[0][:8].astype(np.float64), cifar[1][:8]
    model = nets.SmallCNN()
    theta = model.init_theta(1, dtype=np.float64)
    v = rng.standard_normal(theta.shape)
    obj = model.objective("cross_entropy", X, y)
    loss, g = obj.loss_and_grad(theta)
    hv = obj.hvp(theta, v)
    for route in ROUTES:
        other = smallcnn(route).objective("cross_entropy", X, y)
        checks[f"SmallCNN grad, blocked vs {route} route"] = rel(other.grad(theta), g)
        checks[f"SmallCNN HVP,  blocked vs {route} route"] = rel(other.hvp(theta, v), hv)
    if torch is not None:
        torch.set_default_dtype(torch.float64)
        try:
            tmodel = load_into_torch(torch, torch_smallcnn(torch), model, theta)
            t_grad, t_hvp, flat, split = torch_grad_hvp(torch, tmodel, X, y)
            t_loss, t_g = t_grad()
            checks["SmallCNN loss vs torch"] = abs(loss - t_loss) / abs(t_loss)
            checks["SmallCNN grad vs torch"] = rel(g, flat(t_g))
            checks["SmallCNN HVP  vs torch"] = rel(hv, flat(t_hvp(split(v))))
            Xr, yr = mnist[0][:8].reshape(8, 1, 28, 28).astype(np.float64), mnist[1][:8]
            res = nets.ResNet18(1, 10, width=0.25)
            th = res.init_theta(2, dtype=np.float64)
            tres = load_into_torch(torch, torch_resnet18(torch, 1, 10, 0.25), res, th)
            robj = res.objective("cross_entropy", Xr, yr)
            checks["ResNet18/4 outputs (train mode) vs torch"] = rel(
                robj.outputs(th), tres(torch.from_numpy(Xr)).detach().numpy())
            r_grad, *_ = torch_grad_hvp(torch, tres, Xr, yr)
            checks["ResNet18/4 grad vs torch"] = rel(robj.grad(th), np.concatenate(
                [t.numpy().ravel() for t in r_grad()[1]]))
        finally:
            torch.set_default_dtype(torch.float32)
    print(f"validation (float64, batch 8; max |diff| / max |ref|, tolerance {VALIDATION_TOL:g}):")
    bad = []
    for name, err in checks.items():
        ok = err <= VALIDATION_TOL
        bad += [] if ok else [name]
        print(f"  {name:<44s} {err:9.2e}  {'ok' if ok else 'FAIL'}")
    if torch is None:
        print("  (torch not importable: torch comparisons skipped)")
    if bad:
        print("ABORT: " + ", ".join(bad))
        sys.exit(1)


# ================================================================ timing


def smallcnn(route="blocked"):
    """nets.SmallCNN with both convolutions on a Conv2d patch route."""
    model = nets.SmallCNN()
    for m in model.features:
        if isinstance(m, nets.Conv2d):
            m.patches = route
    return model


def smallcnn_cells(torch, X, y, rng):
    model = smallcnn()
    theta = model.init_theta(0)
    v = rng.standard_normal(theta.shape).astype(np.float32)
    obj = model.objective("cross_entropy", X, y)
    cells = {
        "tg2 grad": lambda: obj.loss_and_grad(theta),
        "tg2 HVP": lambda: obj.hvp(theta, v),
    }
    for route in ROUTES:
        other = smallcnn(route).objective("cross_entropy", X, y)
        cells[f"tg2 grad ({route})"] = lambda other=other: other.loss_and_grad(theta)
        cells[f"tg2 HVP ({route})"] = lambda other=other: other.hvp(theta, v)
    if torch is not None:
        tmodel = load_into_torch(torch, torch_smallcnn(torch), model, theta)
        t_grad, t_hvp, _, split = torch_grad_hvp(torch, tmodel, X, y)
        tv = split(v)
        cells["torch grad"] = t_grad
        cells["torch HVP"] = lambda: t_hvp(tv)
    return cells, (obj, theta, v)


def resnet_cells(torch, X, y):
    model = nets.ResNet18(1, 10, stem="imagenet", width=1.0)
    theta = model.init_theta(0)
    obj = model.objective("cross_entropy", X, y)

    def step():
        with model.updating_running_stats():
            return obj.loss_and_grad(theta)

    cells = {"tg2 ResNet18 step": step}
    if torch is not None:
        tmodel = load_into_torch(torch, torch_resnet18(torch, 1, 10), model, theta).train()
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        params = list(tmodel.parameters())

        def torch_step():
            loss = torch.nn.functional.cross_entropy(tmodel(Xt), yt)
            return loss.item(), torch.autograd.grad(loss, params)

        cells["torch ResNet18 step"] = torch_step
    return cells, (obj, theta)


def ms(seconds):
    return f"{seconds * 1e3:,.1f} ms"


def print_table(timings, torch, batch, rbatch):
    """The results table; returns the paired ratios it shows, {label: Ratio}."""
    med = timings.medians
    print("\n| case | contender | median | ratio | target |")
    print("|---|---|---:|---:|---|")
    shown = {}

    def pr(a, b):
        shown[f"{a} / {b}"] = r = timings.ratio(a, b)
        return r.median

    cnn, res = f"SmallCNN b{batch}", f"ResNet18 b{rbatch} 1x28x28 step"
    rows = []
    g_ratio = pr("tg2 grad", "torch grad") if torch is not None else None
    rows.append((f"{cnn} grad", "tinygrad2", med["tg2 grad"],
                 f"{g_ratio:.2f}x torch" if g_ratio else "",
                 (f"<= {GRAD_OVER_TORCH_TARGET}x torch: {'PASS' if g_ratio <= GRAD_OVER_TORCH_TARGET else 'FAIL'}")
                 if g_ratio else "torch not importable"))
    h_ratio = pr("tg2 HVP", "tg2 grad")
    rows.append((f"{cnn} HVP", "tinygrad2", med["tg2 HVP"], f"{h_ratio:.2f}x own grad",
                 f"<= {HVP_OVER_GRAD_TARGET}x grad: {'PASS' if h_ratio <= HVP_OVER_GRAD_TARGET else 'FAIL'}"))
    for route in ROUTES:
        rows.append((f"{cnn} grad", f"tinygrad2, {route} route", med[f"tg2 grad ({route})"],
                     f"{pr(f'tg2 grad ({route})', 'tg2 grad'):.2f}x blocked", ""))
        rows.append((f"{cnn} HVP", f"tinygrad2, {route} route", med[f"tg2 HVP ({route})"],
                     f"{pr(f'tg2 HVP ({route})', f'tg2 grad ({route})'):.2f}x own grad", ""))
    if torch is not None:
        rows.append((f"{cnn} grad", "torch eager", med["torch grad"], "", ""))
        rows.append((f"{cnn} HVP", "torch eager (func.jvp of grad)", med["torch HVP"],
                     f"{pr('torch HVP', 'torch grad'):.2f}x own grad", ""))
    if "tg2 ResNet18 step" in med:
        ratio, target = "", "torch not importable"
        if "torch ResNet18 step" in med:
            r = pr("tg2 ResNet18 step", "torch ResNet18 step")
            ratio = f"{r:.2f}x torch"
            target = f"<= {RESNET_OVER_TORCH_TARGET}x torch: {'PASS' if r <= RESNET_OVER_TORCH_TARGET else 'FAIL'}"
        rows.append((res, "tinygrad2", med["tg2 ResNet18 step"], ratio, target))
        if "torch ResNet18 step" in med:
            rows.append((res, "torch eager", med["torch ResNet18 step"], "", ""))
    for case, who, t, ratio, target in rows:
        print(f"| {case} | {who} | {ms(t)} | {ratio} | {target} |")
    return shown


# ================================================================ profile


def profile(obj, theta, v, reps, label):
    """Seconds per call inside each primitive's forward and jvp rules."""
    timer = H.RuleTimer(P.REGISTRY, outermost_only=False)
    spent, calls = timer.spent, timer.calls
    jobs = {"grad": lambda: obj.loss_and_grad(theta)}
    if v is not None:
        jobs["HVP"] = lambda: obj.hvp(theta, v)
    try:
        timer.install()
        for what, fn in jobs.items():
            fn()
            timer.clear()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            total = (time.perf_counter() - t0) / reps
            inside = sum(spent.values()) / reps
            print(f"\n{label} {what}: {ms(total)} per call, {ms(inside)} inside primitive rules, "
                  f"{ms(total - inside)} engine bookkeeping and glue")
            for key, t in spent.most_common(12):
                print(f"  {key:<26s} {ms(t / reps):>10s}  {calls[key] // reps:4d} calls")
    finally:
        timer.restore()


# ================================================================ main


def main(argv=None):
    ap = H.make_parser(__doc__, threads=1, seed=True,
                       quick_help="tiny run: 3 rounds, ResNet18 at batch 10 for 1 round (a smoke test)",
                       profile_help="also print time per primitive",
                       rounds_help="rounds of the SmallCNN cells (default 30; --quick 3)")
    ap.add_argument("--no-resnet", action="store_true", help="skip the ResNet18 step")
    ap.add_argument("--resnet-rounds", type=int, default=None, metavar="R",
                    help="rounds of the ResNet18 cells (default 7; --quick 1): more rounds narrow the "
                         "spread of its paired ratio on a busy machine, at about 0.6 s a round")
    args = ap.parse_args(argv)
    resnet_rounds = (1 if args.quick else 7) if args.resnet_rounds is None else args.resnet_rounds
    if resnet_rounds < 1:
        ap.error(f"--resnet-rounds must be at least 1, got {resnet_rounds}")
    warmup = 0.05 if args.quick else 1.0
    batch, rbatch = 128, (10 if args.quick else 100)
    rng = np.random.default_rng(args.seed)
    torch = H.import_torch()
    H.setup(NAME, args)  # BLAS (and, below, torch) threads: 1 unless --threads says otherwise
    print(f"nets benchmark: SmallCNN grad/HVP (batch {batch}) and a ResNet18 training step "
          f"(batch {rbatch}), float32")
    if torch is not None:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        print(f"torch {torch.__version__} (threads {torch.get_num_threads()})")
    else:
        print("torch: not importable (pip install '.[compare]'): torch columns skipped")
    cifar = H.cifar10_train(NAME, args, batch)
    mnist = H.mnist_train(NAME, args, rbatch) if torch is not None or not args.no_resnet else None
    validate(torch, np.random.default_rng(1234), cifar, mnist)

    X, y, what = cifar
    print(f"SmallCNN data: {what}")
    cells, (obj, theta, v) = smallcnn_cells(torch, X, y, rng)
    rounds = args.rounds or (3 if args.quick else 30)  # every cell runs once per round: paired ratios use all rounds
    timings = H.run_rounds(cells, rng, rounds=rounds, warmup_s=warmup)
    if not args.no_resnet:
        Xr, yr, what_r = mnist
        Xr = Xr.reshape(rbatch, 1, 28, 28)
        print(f"ResNet18 data: {what_r}")
        rcells, (robj, rtheta) = resnet_cells(torch, Xr, yr)
        timings.update(H.run_rounds(rcells, rng, rounds=resnet_rounds))
    print("\nrepeats: " + ", ".join(f"{k} {n}" for k, n in timings.reps.items()))
    shown = print_table(timings, torch, batch, rbatch)
    med = timings.medians
    noise = [f"HVP/grad {med['tg2 HVP'] / med['tg2 grad']:.2f}x"]
    if torch is not None:
        noise.insert(0, f"grad/torch grad {med['tg2 grad'] / med['torch grad']:.2f}x")
    print("\nratio column: median over rounds of the paired ratio within a round; noise check, the "
          "same as ratios of medians (far apart = a noisy run): " + ", ".join(noise))
    print("paired ratios, median [min-max] over the rounds: "
          + ", ".join(f"{k} {r.spread()}" for k, r in shown.items()))
    if args.profile:
        profile(obj, theta, v, 5, f"SmallCNN b{batch}")
        if not args.no_resnet:
            profile(robj, rtheta, None, 2, f"ResNet18 b{rbatch}")


if __name__ == "__main__":
    main()
