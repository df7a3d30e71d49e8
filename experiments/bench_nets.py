"""Benchmark: nets models on the engine, beside PyTorch eager when importable.

    python -m experiments.bench_nets              # full run
    python -m experiments.bench_nets --quick      # short run
    python -m experiments.bench_nets --profile    # + where the time goes, per primitive
    options: --blas-threads N (default 1; 0 = library default), --no-resnet, --seed S

Cases (float32):

* SmallCNN (conv 3->6 k5, ReLU, maxpool 2, conv 6->16 k5, ReLU, maxpool 2,
  linear 400->120, ReLU, linear 120->10; 52,202 parameters), batch 128 of
  CIFAR-10 (the first 128 records of data_batch_1.bin, pixels / 255, when
  /work/shared/data/cifar10 is there; else uniform random images and random
  labels -- the header says which), mean softmax cross-entropy:

  - grad: ``objective.loss_and_grad(theta)`` (one forward, one backward);
  - HVP: ``objective.hvp(theta, v)``, one direction, forward-over-reverse;
  - the same two with ``Conv2d(patches="im2col")``, the engine's im2col
    primitive, instead of the default shifted-slice patches;
  - torch eager (if ``import torch`` works): grad by ``torch.autograd.grad``,
    HVP by ``torch.func.jvp(torch.func.grad(f))``, the same weights and data.

  Targets: tinygrad2 grad <= 2x torch eager grad; tinygrad2 HVP <= 2.5x its
  own grad.

* ResNet18 (ImageNet stem, 1 input channel, 10 classes, width 1; 11,175,370
  parameters), batch 100 of 1x28x28 (MNIST's first 100 training images when
  present, else random): one training step = loss + gradient in training
  mode, running statistics updated (``with model.updating_running_stats()``).
  Reported, no target; torch eager beside it when importable.

Timing with experiments/bench_engine.py's ``bench``: after a warm-up, every
contender runs once per round, in a freshly shuffled order, for 30 rounds
(8 with --quick; ResNet18: 7 and 3); medians. Ratio columns are medians over
rounds of the paired ratio within a round (a slow drift of a shared
machine's load cancels out of them). BLAS (and torch) run single-threaded
by default.

Before timing, float64 validation on a batch of 8: tinygrad2's SmallCNN loss,
gradient and HVP against torch's (when importable) and against the im2col
route, and ResNet18 (width 1/4) outputs and gradient against a torch
ResNet-18 with torchvision's layout loaded name by name from theta.
"""
from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import time

import numpy as np

import nets
import tinygrad2
import tinygrad2.primitives as P

from .bench_engine import _engine_version, bench, paired_ratio, set_blas_threads

CIFAR = "/work/shared/data/cifar10/data_batch_1.bin"
MNIST = "/work/shared/data/mnist/train-images-idx3-ubyte.gz"
GRAD_OVER_TORCH_TARGET = 2.0
HVP_OVER_GRAD_TARGET = 2.5
VALIDATION_TOL = 1e-10


# ================================================================ data


def load_cifar(n, rng):
    """(X (n, 3, 32, 32) float32 in [0, 1], y (n,) int64, description).
    Binary CIFAR-10: each record is 1 label byte + 3072 pixel bytes
    (1024 R, 1024 G, 1024 B, row-major)."""
    if os.path.exists(CIFAR):
        raw = np.fromfile(CIFAR, dtype=np.uint8, count=n * 3073).reshape(n, 3073)
        X = raw[:, 1:].reshape(n, 3, 32, 32).astype(np.float32) / 255.0
        return X, raw[:, 0].astype(np.int64), f"CIFAR-10 ({CIFAR}, first {n} records)"
    X = rng.random((n, 3, 32, 32), dtype=np.float32)
    return X, rng.integers(0, 10, n), "RANDOM images and labels (CIFAR-10 not found)"


def load_mnist(n, rng):
    """(X (n, 1, 28, 28) float32 in [0, 1], y (n,) int64, description)."""
    if os.path.exists(MNIST):
        with gzip.open(MNIST, "rb") as fh:
            raw = fh.read()
        X = np.frombuffer(raw, np.uint8, count=n * 784, offset=16).reshape(n, 1, 28, 28).astype(np.float32) / 255
        labels = MNIST.replace("images-idx3", "labels-idx1")
        if os.path.exists(labels):
            with gzip.open(labels, "rb") as fh:
                y = np.frombuffer(fh.read(), np.uint8, count=n, offset=8).astype(np.int64)
            return X, y, f"MNIST (first {n} training images and labels)"
        return X, rng.integers(0, 10, n), "MNIST images, random labels"
    X = rng.random((n, 1, 28, 28), dtype=np.float32)
    return X, rng.integers(0, 10, n), "RANDOM images and labels (MNIST not found)"


# ================================================================ torch twins (optional)


def torch_or_none():
    try:
        import torch
        import torch.func  # noqa: F401
        return torch
    except Exception:
        return None


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


def validate(torch, rng):
    """float64: SmallCNN against torch and the im2col route; ResNet18 (width
    1/4) against a torch twin. Aborts on disagreement."""
    checks = {}
    X, y, _ = load_cifar(8, rng)
    X = X.astype(np.float64)
    model = nets.SmallCNN()
    theta = model.init_theta(1, dtype=np.float64)
    v = rng.standard_normal(theta.shape)
    obj = model.objective("cross_entropy", X, y)
    loss, g = obj.loss_and_grad(theta)
    hv = obj.hvp(theta, v)
    slow = nets.SmallCNN()
    for m in slow.features:
        if isinstance(m, nets.Conv2d):
            m.patches = "im2col"
    slow_obj = slow.objective("cross_entropy", X, y)
    checks["SmallCNN grad, slices vs im2col route"] = rel(slow_obj.grad(theta), g)
    checks["SmallCNN HVP,  slices vs im2col route"] = rel(slow_obj.hvp(theta, v), hv)
    if torch is not None:
        torch.set_default_dtype(torch.float64)
        try:
            tmodel = load_into_torch(torch, torch_smallcnn(torch), model, theta)
            t_grad, t_hvp, flat, split = torch_grad_hvp(torch, tmodel, X, y)
            t_loss, t_g = t_grad()
            checks["SmallCNN loss vs torch"] = abs(loss - t_loss) / abs(t_loss)
            checks["SmallCNN grad vs torch"] = rel(g, flat(t_g))
            checks["SmallCNN HVP  vs torch"] = rel(hv, flat(t_hvp(split(v))))
            Xr, yr, _ = load_mnist(8, rng)
            Xr = Xr.astype(np.float64)
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


def smallcnn_cells(torch, X, y, rng):
    model = nets.SmallCNN()
    theta = model.init_theta(0)
    v = rng.standard_normal(theta.shape).astype(np.float32)
    obj = model.objective("cross_entropy", X, y)
    slow = nets.SmallCNN()
    for m in slow.features:
        if isinstance(m, nets.Conv2d):
            m.patches = "im2col"
    slow_obj = slow.objective("cross_entropy", X, y)
    cells = {
        "tg2 grad": lambda: obj.loss_and_grad(theta),
        "tg2 HVP": lambda: obj.hvp(theta, v),
        "tg2 grad (im2col)": lambda: slow_obj.loss_and_grad(theta),
        "tg2 HVP (im2col)": lambda: slow_obj.hvp(theta, v),
    }
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


def print_table(med, times, torch):
    print("\n| case | contender | median | ratio | target |")
    print("|---|---|---:|---:|---|")
    pr = lambda a, b: paired_ratio(times, a, b)
    rows = []
    g_ratio = pr("tg2 grad", "torch grad") if torch is not None else None
    rows.append(("SmallCNN b128 grad", "tinygrad2", med["tg2 grad"],
                 f"{g_ratio:.2f}x torch" if g_ratio else "",
                 (f"<= {GRAD_OVER_TORCH_TARGET}x torch: {'PASS' if g_ratio <= GRAD_OVER_TORCH_TARGET else 'FAIL'}")
                 if g_ratio else "torch not importable"))
    h_ratio = pr("tg2 HVP", "tg2 grad")
    rows.append(("SmallCNN b128 HVP", "tinygrad2", med["tg2 HVP"], f"{h_ratio:.2f}x own grad",
                 f"<= {HVP_OVER_GRAD_TARGET}x grad: {'PASS' if h_ratio <= HVP_OVER_GRAD_TARGET else 'FAIL'}"))
    rows.append(("SmallCNN b128 grad", "tinygrad2, im2col route", med["tg2 grad (im2col)"],
                 f"{pr('tg2 grad (im2col)', 'tg2 grad'):.2f}x slices", ""))
    rows.append(("SmallCNN b128 HVP", "tinygrad2, im2col route", med["tg2 HVP (im2col)"],
                 f"{pr('tg2 HVP (im2col)', 'tg2 grad (im2col)'):.2f}x own grad", ""))
    if torch is not None:
        rows.append(("SmallCNN b128 grad", "torch eager", med["torch grad"], "", ""))
        rows.append(("SmallCNN b128 HVP", "torch eager (func.jvp of grad)", med["torch HVP"],
                     f"{pr('torch HVP', 'torch grad'):.2f}x own grad", ""))
    if "tg2 ResNet18 step" in med:
        r = ("", "")
        if "torch ResNet18 step" in med:
            r = (f"{pr('tg2 ResNet18 step', 'torch ResNet18 step'):.2f}x torch", "")
        rows.append(("ResNet18 b100 1x28x28 step", "tinygrad2", med["tg2 ResNet18 step"], r[0], "reported"))
        if "torch ResNet18 step" in med:
            rows.append(("ResNet18 b100 1x28x28 step", "torch eager", med["torch ResNet18 step"], "", ""))
    for case, who, t, ratio, target in rows:
        print(f"| {case} | {who} | {ms(t)} | {ratio} | {target} |")


# ================================================================ profile


def profile(obj, theta, v, reps, label):
    """Seconds per call inside each primitive's forward and jvp rules."""
    from collections import Counter
    spent, calls = Counter(), Counter()
    saved = {name: (prim.forward, prim.jvp) for name, prim in P.REGISTRY.items()}

    def timed(fn, key):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t0
                calls[key] += 1
        return wrapper

    jobs = {"grad": lambda: obj.loss_and_grad(theta)}
    if v is not None:
        jobs["HVP"] = lambda: obj.hvp(theta, v)
    try:
        for name, prim in P.REGISTRY.items():
            prim.forward, prim.jvp = timed(prim.forward, f"{name}.forward"), timed(prim.jvp, f"{name}.jvp")
        for what, fn in jobs.items():
            fn()
            spent.clear()
            calls.clear()
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
        for name, prim in P.REGISTRY.items():
            prim.forward, prim.jvp = saved[name]


# ================================================================ main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run")
    ap.add_argument("--profile", action="store_true", help="also print time per primitive")
    ap.add_argument("--no-resnet", action="store_true", help="skip the ResNet18 step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="OpenBLAS (and torch) threads; default 1, 0 = library default")
    args = ap.parse_args(argv)
    warmup = 0.2 if args.quick else 1.0
    rng = np.random.default_rng(args.seed)
    torch = torch_or_none()
    print("nets benchmark: SmallCNN grad/HVP (batch 128) and a ResNet18 training step (batch 100), float32")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"backend {tinygrad2.backend.name}{', quick run' if args.quick else ''}; "
          f"tinygrad2 source: {_engine_version()}")
    print(set_blas_threads(args.blas_threads))
    if torch is not None:
        if args.blas_threads > 0:
            torch.set_num_threads(args.blas_threads)
        print(f"torch {torch.__version__} (threads {torch.get_num_threads()})")
    else:
        print("torch: not importable (pip install '.[compare]'): torch columns skipped")
    validate(torch, np.random.default_rng(1234))

    X, y, what = load_cifar(128, rng)
    print(f"SmallCNN data: {what}")
    cells, (obj, theta, v) = smallcnn_cells(torch, X, y, rng)
    rounds = 8 if args.quick else 30  # every cell runs once per round: paired ratios use all rounds
    med, reps = bench(cells, 0.0, rounds, rounds, warmup, rng)
    times = dict(bench.last_times)
    if not args.no_resnet:
        Xr, yr, what_r = load_mnist(100, rng)
        print(f"ResNet18 data: {what_r}")
        rcells, (robj, rtheta) = resnet_cells(torch, Xr, yr)
        n_r = 3 if args.quick else 7
        rmed, rreps = bench(rcells, 0.0, n_r, n_r, 0.0, rng)
        med.update(rmed)
        reps.update(rreps)
        times.update(bench.last_times)
    print("\nrepeats: " + ", ".join(f"{k} {n}" for k, n in reps.items()))
    print_table(med, times, torch)
    noise = [f"HVP/grad {med['tg2 HVP'] / med['tg2 grad']:.2f}x"]
    if torch is not None:
        noise.insert(0, f"grad/torch grad {med['tg2 grad'] / med['torch grad']:.2f}x")
    print("\nratio column: median over rounds of the paired ratio within a round; noise check, the "
          "same as ratios of medians (far apart = a noisy run): " + ", ".join(noise))
    if args.profile:
        profile(obj, theta, v, 5, "SmallCNN b128")
        if not args.no_resnet:
            profile(robj, rtheta, None, 2, "ResNet18 b100")


if __name__ == "__main__":
    main()
