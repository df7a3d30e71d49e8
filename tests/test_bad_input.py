"""Every bad input ends in a named exception at the API boundary, and nothing is lost.

One table: each row is a mistake a user can make (a callable given the
case's tmp folder), the exception it must raise, and a regex the message
must match -- the operation, the argument and the bad value or shape. Rows
that read or write files first build their folder; every file under it must
be byte-identical afterwards. Every row must fail fast (no retries, no work).
"""
from __future__ import annotations

import hashlib
import math
import socket
import time
import urllib.error
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import pytest

import nets
import tinygrad2 as tg
from experiments import data as D
from experiments import download as DL
from optimizers import (SGD, SGDPH, BB, LBFGS, Adam, AdamW, AdaHessian, DampedNewton, GaussNewton, HessianFree,
                        Hybrid, Newton)
from optimizers.cg import cg

# ---------------------------------------------------------------- shared small objects

RNG = np.random.default_rng(0)
MODEL = nets.MLP((4, 3, 2))
THETA = MODEL.init_theta(seed=0, dtype="float64")
N = THETA.size  # 23
X = RNG.normal(size=(5, 4))
Y = np.array([0, 1, 1, 0, 1])
OBJ = MODEL.objective("cross_entropy", X, Y)
V = RNG.normal(size=(2, N))


def with_value(a, index, value):
    a = np.array(a, dtype=np.result_type(a, type(value)))
    a[index] = value
    return a


def f_quad(x):
    return (x * x).sum()


def call(fn, *args, **kw):
    return lambda tmp: fn(*args, **kw)


def no_sleep(seconds):
    raise AssertionError(f"retried (slept {seconds} s) on an error that is not transient")


def empty_dataset():
    return D.Dataset("toy/train", np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), ("0", "1"))


def toy_dataset(n=6):
    return D.Dataset("toy/train", np.ones((n, 4), np.float32), np.arange(n) % 2, ("0", "1"))


def toy_splits():
    train = D.Dataset("toy/train", np.ones((20, 4), np.float32), np.arange(20) % 2, ("0", "1"))
    test = D.Dataset("toy/test", np.ones((6, 4), np.float32), np.arange(6) % 2, ("0", "1"))
    return D.Splits("toy", train, None, test)


# ---------------------------------------------------------------- folders of files


def write_text(name, text="not what you think"):
    def setup(tmp):
        (tmp / name).write_text(text)
    return setup


def write_saved_model(model, name="model.h5"):
    def setup(tmp):
        model.save(tmp / name, model.init_theta(seed=1))
    return setup


def write_foreign_h5(tmp):
    with h5py.File(tmp / "other.h5", "w") as f:
        f.create_dataset("weights", data=np.zeros(3))


def write_cifar(counts, record=3073):
    """CIFAR-10 binary batches in tmp/cifar10 with the given record counts per file."""
    def setup(tmp):
        folder = tmp / "cifar10"
        folder.mkdir()
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for name, n in zip(names, counts):
            raw = np.zeros((n, 3073), np.uint8)
            raw[:, 0] = np.arange(n) % 10
            (folder / name).write_bytes(raw.tobytes()[: n * record])
    return setup


def write_bad_mnist(tmp):
    folder = tmp / "mnist"
    folder.mkdir()
    for name in D.MNIST_MD5:
        (folder / name).write_bytes(b"plain text, not gzip")


def write_part(tmp):
    (tmp / "file.bin.part").write_bytes(b"12345")


def small_cifar_records():
    return mock.patch.object(D, "CIFAR10_BATCH_RECORDS", 10)


def load_small_cifar(tmp):
    with small_cifar_records():
        return D.load_cifar10(tmp, verify=False)


def refused_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def fetch(tmp, **kw):
    return DL.download("http://example.invalid/file.bin", tmp / "file.bin", "0" * 32, retries=15,
                       backoff=1.0, progress=False, sleep=no_sleep, **kw)


def urlopen_raising(err):
    def fake(*args, **kw):
        raise err
    return mock.patch("urllib.request.urlopen", fake)


def fetch_failing(err, **kw):
    def run(tmp):
        with urlopen_raising(err):
            fetch(tmp, **kw)
    return run


# ---------------------------------------------------------------- the table

NF = tg.NonFiniteError
HTE = (TypeError, ValueError)  # hyper-parameter type errors are both

ENGINE = [
    # --- non-finite theta, V, data: the Objective
    ("obj-hvp-theta-nan", None, call(OBJ.hvp, with_value(THETA, 2, np.nan), V), NF,
     r"Objective.hvp: theta has 1 non-finite entry .* index 2 is nan"),
    ("obj-hvp-theta-inf", None, call(OBJ.hvp, with_value(THETA, 7, np.inf), V), NF,
     r"Objective.hvp: theta has 1 non-finite .* index 7 is inf"),
    ("obj-hvp-V-nan", None, call(OBJ.hvp, THETA, with_value(V, (1, 3), np.nan)), NF,
     r"Objective.hvp: V has 1 non-finite entry .* shape \(2, 23\); the first at index \(1, 3\)"),
    ("obj-hvp-V-inf-1d", None, call(OBJ.hvp, THETA, with_value(V[0], 0, -np.inf)), NF,
     r"Objective.hvp: V has 1 non-finite .* index 0 is -inf"),
    ("obj-hvp-V-all-nan", None, call(OBJ.hvp, THETA, np.full((2, N), np.nan)), NF,
     r"Objective.hvp: V has 46 non-finite entries"),
    ("obj-loss-theta-nan", None, call(OBJ.loss, with_value(THETA, 0, np.nan)), NF, r"Objective.loss: theta has 1"),
    ("obj-grad-theta-nan", None, call(OBJ.grad, with_value(THETA, 22, np.nan)), NF, r"Objective.grad: theta .* 22"),
    ("obj-loss_and_grad-theta-inf", None, call(OBJ.loss_and_grad, with_value(THETA, 1, np.inf)), NF,
     r"Objective.loss_and_grad: theta"),
    ("obj-ggn_vp-V-nan", None, call(OBJ.ggn_vp, THETA, with_value(V, (0, 5), np.nan)), NF,
     r"Objective.ggn_vp: V has 1 non-finite"),
    ("obj-hessian-theta-nan", None, call(OBJ.hessian, with_value(THETA, 3, np.nan)), NF,
     r"Objective.hessian: theta"),
    ("obj-hessian_diag-theta-nan", None, call(OBJ.hessian_diag, with_value(THETA, 3, np.nan)), NF,
     r"Objective.hessian_diag: theta"),
    ("obj-block_diag-theta-inf", None, call(OBJ.block_diag, with_value(THETA, 3, np.inf), "1.bias"), NF,
     r"Objective.block_diag: theta"),
    ("obj-X-nan", None, call(MODEL.objective, "cross_entropy", with_value(X, (2, 1), np.nan), Y), NF,
     r"Objective\(loss='cross_entropy'\): X has 1 non-finite .* index \(2, 1\)"),
    ("obj-X-inf", None, call(MODEL.objective, "cross_entropy", with_value(X, (0, 0), np.inf), Y), NF,
     r"Objective.*: X has 1 non-finite .* is inf"),
    ("obj-y-nan-mse", None, call(MODEL.objective, "mse", X, with_value(np.zeros((5, 2)), (4, 1), np.nan)), NF,
     r"Objective\(loss='mse'\): y has 1 non-finite .* index \(4, 1\)"),
    ("obj-with_batch-X-nan", None, call(OBJ.with_batch, with_value(X, (1, 1), np.nan), Y), NF,
     r"Objective\(loss='cross_entropy'\).with_batch: X has 1 non-finite"),
    # --- non-real dtypes
    ("obj-V-complex", None, call(OBJ.hvp, THETA, V + 1j), TypeError,
     r"Objective.hvp: V must hold real numbers, got dtype complex128"),
    ("obj-V-object", None, call(OBJ.hvp, THETA, V.astype(object)), TypeError,
     r"Objective.hvp: V must hold real numbers, got dtype object"),
    ("obj-V-strings", None, call(OBJ.hvp, THETA, np.array(["1"] * N)), TypeError,
     r"Objective.hvp: V must hold real numbers, got dtype <U1"),
    ("obj-ggn_vp-V-complex", None, call(OBJ.ggn_vp, THETA, V.astype(np.complex64)), TypeError,
     r"Objective.ggn_vp: V must hold real numbers, got dtype complex64"),
    ("obj-theta-complex", None, call(OBJ.grad, THETA + 0j), TypeError,
     r"Objective.grad: theta must hold real numbers, got dtype complex128"),
    ("obj-theta-int", None, call(OBJ.loss, np.zeros(N, int)), TypeError, r"Objective.loss: theta must be floating"),
    ("obj-X-complex", None, call(MODEL.objective, "cross_entropy", X + 1j, Y), TypeError,
     r"Objective.*: X must hold real numbers, got dtype complex128 \(shape \(5, 4\)\)"),
    ("obj-X-object", None, call(MODEL.objective, "cross_entropy", X.astype(object), Y), TypeError,
     r"Objective.*: X must hold real numbers, got dtype object"),
    # --- empty batch
    ("obj-X-empty", None, call(MODEL.objective, "cross_entropy", np.zeros((0, 4)), np.zeros(0, int)), ValueError,
     r"Objective\(loss='cross_entropy'\): X has 0 rows \(shape \(0, 4\)\)"),
    ("obj-with_batch-empty", None, call(OBJ.with_batch, np.zeros((0, 4)), np.zeros(0, int)), ValueError,
     r"with_batch: X has 0 rows"),
    # --- unknown parameter names
    ("obj-block_row_sums-name", None, call(OBJ.block_row_sums, THETA, "W3"), KeyError,
     r"Objective.block_row_sums: no parameter named 'W3'; the layout has \['1.weight', '1.bias'"),
    ("obj-block_diag-name", None, call(OBJ.block_diag, THETA, "fc.bias"), KeyError,
     r"Objective.block_diag: no parameter named 'fc.bias'; the layout has \[.*'3.bias'\]"),
    ("obj-block_diag-name-int", None, call(OBJ.block_diag, THETA, 3), KeyError,
     r"Objective.block_diag: no parameter named 3"),
    ("layout-indicator-name", None, call(OBJ.layout.indicator, "W3"), KeyError,
     r"Layout.indicator: no parameter named 'W3'"),
    ("obj-hessian_diag-samples-0", None, call(OBJ.hessian_diag, THETA, "hutchinson", samples=0), ValueError,
     r"hessian_diag: samples must be an int >= 1, got 0"),
    ("obj-hessian_diag-samples-float", None, call(OBJ.hessian_diag, THETA, "hutchinson", samples=2.5), ValueError,
     r"hessian_diag: samples must be an int >= 1, got 2.5"),
    ("obj-hessian_diag-method", None, call(OBJ.hessian_diag, THETA, "diag"), ValueError,
     r"hessian_diag: method must be 'exact' or 'hutchinson', got 'diag'"),
    # --- the functional API
    ("tg-grad-x-nan", None, call(tg.grad(f_quad), np.array([1.0, np.nan])), NF,
     r"value_and_grad: x has 1 non-finite .* index 1 is nan"),
    ("tg-hvp-x-inf", None, call(tg.hvp, f_quad, np.array([np.inf, 1.0]), np.ones(2)), NF,
     r"hvp: x has 1 non-finite .* index 0 is inf"),
    ("tg-hvp-v-nan", None, call(tg.hvp, f_quad, np.ones(3), np.array([[1.0, np.nan, 0.0]])), NF,
     r"hvp: v has 1 non-finite .* index \(0, 1\)"),
    ("tg-jvp-v-nan", None, call(tg.jvp, f_quad, np.ones(2), np.array([np.nan, 0.0])), NF, r"jvp: v has 1"),
    ("tg-vjp-x-nan", None, call(tg.vjp, f_quad, np.array([np.nan])), NF, r"vjp: x has 1"),
    ("tg-hessian-x-nan", None, call(tg.hessian, f_quad, np.array([0.0, np.nan])), NF, r"hessian: x has 1"),
    ("tg-hvp_ror-v-inf", None, call(tg.hvp_reverse_over_reverse, f_quad, np.ones(2), np.array([np.inf, 0])), NF,
     r"hvp_reverse_over_reverse: v has 1"),
    ("tg-hvp-v-complex", None, call(tg.hvp, f_quad, np.ones(2), np.ones(2) * 1j), TypeError,
     r"hvp: v must hold real numbers, got dtype complex128"),
    ("tg-hvp-v-object", None, call(tg.hvp, f_quad, np.ones(2), np.array([1.0, None])), TypeError,
     r"hvp: v must hold real numbers, got dtype object"),
    ("tg-jvp-x-complex", None, call(tg.jvp, f_quad, np.ones(2) + 1j, np.ones(2)), TypeError,
     r"jvp: x must hold real numbers, got dtype complex128"),
    # --- the closed-form problems
    ("logreg-X-nan", None, call(tg.LogisticRegression, with_value(X, (3, 2), np.nan), Y), NF,
     r"LogisticRegression: X has 1 non-finite .* index \(3, 2\)"),
    ("logreg-X-empty", None, call(tg.LogisticRegression, np.zeros((0, 4)), np.zeros(0)), ValueError,
     r"LogisticRegression: X has 0 rows"),
    ("logreg-X-complex", None, call(tg.LogisticRegression, X + 1j, Y), TypeError,
     r"LogisticRegression: X must hold real numbers, got dtype complex128"),
    ("logreg-with_batch-X-inf", None, call(tg.LogisticRegression(X, Y).with_batch, with_value(X, (0, 0), np.inf), Y),
     NF, r"LogisticRegression: X has 1 non-finite"),
    ("quadratic-A-nan", None, call(tg.Quadratic, with_value(np.eye(3), (1, 1), np.nan)), NF,
     r"Quadratic: A has 1 non-finite .* index \(1, 1\)"),
    ("quadratic-b-inf", None, call(tg.Quadratic, np.eye(2), np.array([0.0, np.inf])), NF,
     r"Quadratic: b has 1 non-finite .* index 1"),
    ("quadratic-hvp-V-complex", None, call(tg.Quadratic(np.eye(2)).hvp, np.zeros(2), np.ones(2) * 1j), TypeError,
     r"Quadratic.hvp: V must hold real numbers"),
    ("rosenbrock-n-float", None, call(tg.Rosenbrock, 2.5), ValueError, r"Rosenbrock: n must be an int >= 2, got 2.5"),
    ("function-n-zero", None, call(tg.Function, f_quad, 0), ValueError, r"Function: n must be an int >= 1 .* got 0"),
    ("function-f-not-callable", None, call(tg.Function, "x**2", 2), TypeError, r"Function: f must be callable"),
]

NETS = [
    ("mlp-width-zero", None, call(nets.MLP, (4, 0, 2)), ValueError, r"MLP: sizes\[1\] must be a positive int, got 0"),
    ("mlp-width-float", None, call(nets.MLP, (4, 32.5, 2)), TypeError,
     r"MLP: sizes\[1\] must be a positive int, got 32.5 \(float\)"),
    ("mlp-width-bool", None, call(nets.MLP, (4, True, 2)), TypeError, r"MLP: sizes\[1\] .* got True \(bool\)"),
    ("mlp-width-str", None, call(nets.MLP, ("64", 10)), TypeError, r"MLP: sizes\[0\] .* got '64' \(str\)"),
    ("mlp-width-negative", None, call(nets.MLP, (4, -3, 2)), ValueError, r"MLP: sizes\[1\] .* got -3"),
    ("mlp-sizes-int", None, call(nets.MLP, 64), TypeError, r"MLP: sizes must be a sequence .* got 64"),
    ("linear-in-zero", None, call(nets.Linear, 0, 3), ValueError, r"Linear: in_features must be a positive int, got 0"),
    ("linear-out-negative", None, call(nets.Linear, 3, -1), ValueError, r"Linear: out_features .* got -1"),
    ("linear-in-float", None, call(nets.Linear, 3.0, 2), TypeError, r"Linear: in_features .* got 3.0 \(float\)"),
    ("conv-out-zero", None, call(nets.Conv2d, 3, 0, 3), ValueError, r"Conv2d: out_channels .* got 0"),
    ("conv-in-float", None, call(nets.Conv2d, 3.5, 4, 3), TypeError, r"Conv2d: in_channels .* got 3.5"),
    ("bn-zero", None, call(nets.BatchNorm2d, 0), ValueError, r"BatchNorm2d: num_features .* got 0"),
    ("bn-str", None, call(nets.BatchNorm1d, "8"), TypeError, r"BatchNorm1d: num_features .* got '8' \(str\)"),
    ("smallcnn-width-zero", None, call(nets.SmallCNN, widths=(6, 0)), ValueError, r"SmallCNN: widths\[1\] .* got 0"),
    ("smallcnn-hidden-float", None, call(nets.SmallCNN, hidden=12.5), TypeError, r"SmallCNN: hidden .* got 12.5"),
    ("smallcnn-classes-zero", None, call(nets.SmallCNN, num_classes=0), ValueError, r"SmallCNN: num_classes .* got 0"),
    ("smallcnn-widths-one", None, call(nets.SmallCNN, widths=(6,)), TypeError, r"SmallCNN: widths must be a pair"),
    ("resnet-width-zero", None, call(nets.ResNet18, width=0), ValueError, r"ResNet18: width must be a positive .* 0"),
    ("resnet-width-nan", None, call(nets.ResNet18, width=math.nan), ValueError, r"ResNet18: width .* nan"),
    ("resnet-classes-float", None, call(nets.ResNet18, num_classes=10.5), TypeError, r"ResNet18: num_classes .* 10.5"),
    ("vgg-width-str", None, call(nets.VGG, width="1"), TypeError, r"VGG: width must be a positive number, got '1'"),
    ("vgg-in-zero", None, call(nets.VGG, in_channels=0), ValueError, r"VGG: in_channels .* got 0"),
    ("init-dtype-int", None, call(MODEL.init_theta, dtype="int32"), TypeError,
     r"MLP.init_theta: dtype must be a floating dtype .* got 'int32'"),
    ("init-dtype-bool", None, call(MODEL.init_theta, dtype=bool), TypeError, r"MLP.init_theta: dtype .*bool"),
    ("init-dtype-complex", None, call(MODEL.init_theta, dtype=np.complex128), TypeError, r"init_theta: dtype .*complex"),
    ("init-dtype-nonsense", None, call(MODEL.init_theta, dtype="float99"), TypeError, r"init_theta: dtype .*float99"),
    ("init-seed-str", None, call(MODEL.init_theta, seed="0"), TypeError, r"MLP.init_theta: seed .* got '0' \(str\)"),
    ("init-seed-negative", None, call(MODEL.init_theta, seed=-1), TypeError, r"MLP.init_theta: seed .* got -1"),
    # files: nothing under tmp may change
    ("load-text-file", write_text("model.h5"), lambda tmp: MODEL.load(tmp / "model.h5"), ValueError,
     r"MLP.load: .*model.h5 is not an HDF5 file"),
    ("load-empty-file", write_text("model.h5", ""), lambda tmp: MODEL.load(tmp / "model.h5"), ValueError,
     r"MLP.load: .*model.h5 is not an HDF5 file"),
    ("load-missing", None, lambda tmp: MODEL.load(tmp / "none.h5"), FileNotFoundError, r"MLP.load: no file at .*none.h5"),
    ("load-folder", None, lambda tmp: MODEL.load(tmp), FileNotFoundError, r"MLP.load: no file at "),
    ("load-foreign-h5", write_foreign_h5, lambda tmp: MODEL.load(tmp / "other.h5"), ValueError,
     r"MLP.load: .*other.h5 is not a tinygrad2.nets/1 file"),
    ("load-other-model", write_saved_model(nets.MLP((4, 5, 2))), lambda tmp: MODEL.load(tmp / "model.h5"),
     ValueError, r"MLP.load: .*model.h5 holds a different layout"),
    ("save-no-folder", None, lambda tmp: MODEL.save(tmp / "nope" / "m.h5", THETA), FileNotFoundError,
     r"MLP.save: cannot write .*m.h5: the folder .*nope does not exist"),
    ("save-onto-folder", write_text("keep.txt"), lambda tmp: MODEL.save(tmp, THETA), IsADirectoryError,
     r"MLP.save: cannot write .*: it is a folder"),
    ("save-theta-int", write_saved_model(MODEL), lambda tmp: MODEL.save(tmp / "model.h5", np.zeros(N, int)),
     TypeError, r"MLP.save: theta must be floating, got dtype int"),
    ("save-theta-shape", write_saved_model(MODEL), lambda tmp: MODEL.save(tmp / "model.h5", THETA[:5]),
     ValueError, r"MLP.save: theta has shape \(5,\), expected \(23,\)"),
]

OPTIMIZERS = [
    ("sgd-lr-str", None, call(SGD, "0.1"), HTE, r"SGD: lr must be a real number, got '0.1' \(str\)"),
    ("sgd-lr-negative", None, call(SGD, -0.1), ValueError, r"SGD: lr must be a finite number >= 0, got -0.1"),
    ("sgd-lr-nan", None, call(SGD, math.nan), ValueError, r"SGD: lr must be a number, got NaN"),
    ("sgd-lr-inf", None, call(SGD, math.inf), ValueError, r"SGD: lr must be a finite number .* got inf"),
    ("sgd-lr-bool", None, call(SGD, True), HTE, r"SGD: lr must be a real number, got True \(bool\)"),
    ("sgd-momentum-none", None, call(SGD, 0.1, momentum=None), HTE, r"SGD: momentum must be a real number, got None"),
    ("sgd-nesterov-str", None, call(SGD, 0.1, 0.9, nesterov="yes"), HTE,
     r"SGD: nesterov must be True or False, got 'yes'"),
    ("sgd-weight_decay-list", None, call(SGD, 0.1, weight_decay=[0.1]), HTE, r"SGD: weight_decay .* got \[0.1\]"),
    ("adam-betas-one", None, call(Adam, betas=(0.9,)), HTE, r"Adam: betas must be a pair .* got \(0.9,\)"),
    ("adam-betas-str", None, call(Adam, betas=(0.9, "0.999")), HTE, r"Adam: betas\[1\] must be a real number, got '0.999'"),
    ("adam-betas-none", None, call(Adam, betas=None), HTE, r"Adam: betas must be a pair .* got None"),
    ("adam-eps-none", None, call(Adam, eps=None), HTE, r"Adam: eps must be a real number, got None"),
    ("adam-decoupled-int", None, call(Adam, decoupled=1), HTE, r"Adam: decoupled must be True or False, got 1"),
    ("adamw-weight_decay-str", None, call(AdamW, weight_decay="0.01"), HTE, r"AdamW: weight_decay .* '0.01'"),
    ("bb-lr-str", None, call(BB, "0.1", beta=0.5), HTE, r"BB: lr must be a real number, got '0.1'"),
    ("bb-steps-float", None, call(BB, 0.1, steps_per_epoch=1.5), HTE, r"BB: steps_per_epoch must be an integer .* 1.5"),
    ("bb-beta-str", None, call(BB, 0.1, beta="0.5"), HTE, r"BB: beta must be a real number, got '0.5'"),
    ("bb-smoothing-str", None, call(BB, 0.1, beta=0.5, smoothing="no"), HTE, r"BB: smoothing must be True or False"),
    ("lbfgs-history-float", None, call(LBFGS, history_size=2.5), HTE, r"LBFGS: history_size must be an integer .* 2.5"),
    ("lbfgs-history-none", None, call(LBFGS, history_size=None), HTE, r"LBFGS: history_size .* got None"),
    ("lbfgs-line_search-bool", None, call(LBFGS, line_search=True), ValueError,
     r"LBFGS: line_search must be one of \(None, 'strong_wolfe', 'exact'\), got True"),
    ("lbfgs-c1-none", None, call(LBFGS, c1=None), HTE, r"LBFGS: c1 must be a real number, got None"),
    ("newton-lr-nan", None, call(Newton, lr=math.nan), ValueError, r"Newton: lr must be a number, got NaN"),
    ("newton-curvature-none", None, call(Newton, curvature=None), ValueError, r"Newton: curvature must be one of"),
    ("newton-rcond-str", None, call(Newton, rcond="1e-6"), HTE, r"Newton: rcond must be a real number, got '1e-6'"),
    ("damped-damping-negative", None, call(DampedNewton, damping=-1.0), ValueError,
     r"DampedNewton: damping must be a finite number >= 0, got -1.0"),
    ("damped-saddle_free-str", None, call(DampedNewton, saddle_free="no"), HTE,
     r"DampedNewton: saddle_free must be True or False, got 'no'"),
    ("damped-boost-str", None, call(DampedNewton, boost="2"), HTE, r"DampedNewton: boost must be a real number, got '2'"),
    ("hf-cg_max_iter-str", None, call(HessianFree, cg_max_iter="10"), HTE, r"HessianFree: cg_max_iter .* got '10'"),
    ("hf-cg_tol-none", None, call(HessianFree, cg_tol=None), HTE, r"HessianFree: cg_tol must be a real number, got None"),
    ("hf-backtracking-none", None, call(HessianFree, backtracking=None), HTE,
     r"HessianFree: backtracking must be True or False, got None"),
    ("gn-damping-nan", None, call(GaussNewton, damping=math.nan), ValueError, r"GaussNewton: damping must be a number"),
    ("ada-betas-one", None, call(AdaHessian, betas=(0.9,)), HTE, r"AdaHessian: betas .* must be a pair"),
    ("ada-update_each-zero", None, call(AdaHessian, update_each=0), ValueError,
     r"AdaHessian: update_each must be an integer >= 1, got 0"),
    ("ada-seed-float", None, call(AdaHessian, seed=1.5), HTE, r"AdaHessian: seed must be an integer >= 0, got 1.5"),
    ("sgdph-lr-str", None, call(SGDPH, lr="0.1"), HTE, r"SGDPH: lr must be a real number, got '0.1'"),
    ("sgdph-momentum-none", None, call(SGDPH, momentum=None), HTE, r"SGDPH: momentum must be a real number, got None"),
    ("hybrid-threshold-str", None, call(Hybrid, threshold="1"), HTE, r"Hybrid: threshold must be a real number, got '1'"),
    ("hybrid-sgd_lr-none", None, call(Hybrid, sgd_lr=None), HTE, r"Hybrid: sgd_lr must be a real number, got None"),
    ("hybrid-ada-update_each", None, call(Hybrid, update_each=0), ValueError,
     r"Hybrid: AdaHessian: update_each must be an integer >= 1, got 0"),
    ("cg-max_iter-none", None, call(cg, lambda v: v, np.ones(3), max_iter=None), HTE,
     r"cg: max_iter must be an integer >= 1, got None"),
]

DATA = [
    ("batches-empty-set", None, lambda tmp: empty_dataset().batches(4), ValueError,
     r"Dataset.batches: 'toy/train' has no examples \(X of shape \(0, 4\)\)"),
    ("batches-empty-full-batch", None, lambda tmp: empty_dataset().batches(None), ValueError,
     r"Dataset.batches: 'toy/train' has no examples"),
    ("batch_indices-empty-set", None, lambda tmp: empty_dataset().batch_indices(4), ValueError,
     r"'toy/train' has no examples"),
    ("batches-size-zero", None, lambda tmp: toy_dataset().batches(0), ValueError,
     r"Dataset.batches: batch_size must be a positive int or None, got 0"),
    ("batches-size-bool", None, lambda tmp: toy_dataset().batches(True), ValueError, r"batch_size .* got True"),
    ("batches-size-float", None, lambda tmp: toy_dataset().batches(2.5), ValueError, r"batch_size .* got 2.5"),
    ("batches-drop_last-too-few", None, lambda tmp: toy_dataset(3).batches(8, drop_last=True), ValueError,
     r"Dataset.batches: 'toy/train' has 3 examples, fewer than one batch of 8"),
    ("subset-n_train-zero", None, lambda tmp: toy_splits().subset(0), ValueError,
     r"Splits.subset: n_train must be None or an int >= 1 .* got 0"),
    ("subset-n_train-negative", None, lambda tmp: toy_splits().subset(-5), ValueError, r"n_train .* got -5"),
    ("subset-n_train-float", None, lambda tmp: toy_splits().subset(2.5), ValueError, r"n_train .* got 2.5"),
    ("subset-n_val-str", None, lambda tmp: toy_splits().subset(10, n_val="4"), ValueError, r"n_val .* got '4'"),
    ("cifar-cut-batch", write_cifar([10, 10, 7, 10, 10, 10]), load_small_cifar, D.DataFormatError,
     r"cifar10: .*every batch file must hold 10 records; data_batch_3.bin has 7"),
    ("cifar-empty-batch", write_cifar([10, 10, 10, 10, 10, 0]), load_small_cifar, D.DataFormatError,
     r"test_batch.bin has 0"),
    ("cifar-partial-record", write_cifar([2, 2, 2, 2, 2, 2], record=3000), lambda tmp: D.load_cifar10(tmp, verify=False),
     D.DataFormatError, r"data_batch_1.bin: 6000 bytes is not a whole number of 3073-byte records"),
    ("mnist-not-gzip", write_bad_mnist, lambda tmp: D.load_mnist(tmp, verify=False), D.DataFormatError,
     r"mnist: .*train-images-idx3-ubyte.gz: not a valid gzip file"),
    ("load-unknown-set", None, lambda tmp: D.load("cifar100", tmp), ValueError,
     r"data.load: unknown data set 'cifar100'"),
]

DOWNLOAD = [
    ("name-does-not-resolve", None,
     fetch_failing(urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))), DL.DownloadError,
     r"download http://example.invalid/file.bin: the host name does not resolve .*not retried.*no partial file"),
    ("gaierror-bare", None, fetch_failing(socket.gaierror(-3, "Temporary failure in name resolution")),
     DL.DownloadError, r"host name does not resolve .*not retried"),
    ("connection-refused-wrapped", None, fetch_failing(urllib.error.URLError(ConnectionRefusedError(111, "refused"))),
     DL.DownloadError, r"the connection was refused .*not retried.*no partial file was left"),
    ("connection-refused-keeps-part", write_part, fetch_failing(ConnectionRefusedError(111, "Connection refused")),
     DL.DownloadError, r"connection was refused .*file.bin.part keeps the 5 bytes received so far; the next call resumes"),
    ("connection-refused-no-resume", write_part,
     fetch_failing(ConnectionRefusedError(111, "Connection refused"), resume=False), DL.DownloadError,
     r"file.bin.part keeps the 5 bytes .* the next call \(resume=False\) starts over"),
    ("connection-refused-real-socket", None,
     lambda tmp: DL.download(f"http://127.0.0.1:{refused_port()}/file.bin", tmp / "file.bin", "0" * 32,
                             retries=15, progress=False, sleep=no_sleep, timeout=5.0),
     DL.DownloadError, r"download http://127.0.0.1:\d+/file.bin: the connection was refused"),
    ("md5-not-hex", None, lambda tmp: DL.download("http://x.invalid/f", tmp / "f", "abc"), ValueError,
     r"download http://x.invalid/f: md5 must be 32 lowercase hex digits, got 'abc'"),
    ("retries-negative", None, lambda tmp: DL.download("http://x.invalid/f", tmp / "f", "0" * 32, retries=-1),
     ValueError, r"retries must be an int >= 0, got -1"),
    ("timeout-zero", None, lambda tmp: DL.download("http://x.invalid/f", tmp / "f", "0" * 32, timeout=0),
     ValueError, r"timeout must be a finite number > 0, got 0"),
    ("url-not-http", None, lambda tmp: DL.download("ftp://x.invalid/f", tmp / "f", "0" * 32), ValueError,
     r"download: url must be an http\(s\):// address, got 'ftp://x.invalid/f'"),
]

TABLE = {"tinygrad2": ENGINE, "nets": NETS, "optimizers": OPTIMIZERS, "data": DATA, "download": DOWNLOAD}
CASES = [pytest.param(setup, make, exc, match, id=f"{package}:{name}")
         for package, rows in TABLE.items() for name, setup, make, exc, match in rows]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_table_has_at_least_100_cases():
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
@pytest.mark.parametrize("setup, make, exc, match", CASES)
def test_bad_input_raises_a_named_error_and_changes_no_file(tmp_path, setup, make, exc, match):
    if setup is not None:
        setup(tmp_path)
    before = snapshot(tmp_path)
    start = time.perf_counter()
    with pytest.raises(exc, match=match):
        make(tmp_path)
    assert time.perf_counter() - start < 5.0, "a bad input must fail fast"
    assert snapshot(tmp_path) == before, "a failed call changed, added or removed a file"


# ---------------------------------------------------------------- the policy, beyond single rows


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_finite_inputs_still_work_and_the_errors_are_floating_point_errors():
    assert np.isfinite(OBJ.hvp(THETA, V)).all()
    with pytest.raises(FloatingPointError):
        OBJ.grad(with_value(THETA, 0, np.nan))
    with pytest.raises(ValueError):
        tg.grad(f_quad)(np.array([np.nan]))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_the_finite_check_passes_large_finite_values_and_catches_each_nonfinite_one(dtype):
    """Large finite entries (half the dtype's maximum: their squares and
    sums overflow, so a shortcut through Σ a or Σ a² would refuse them) pass;
    a single NaN, inf or -inf beside them is named with its index."""
    from tinygrad2 import backend
    from tinygrad2.guard import check_finite
    big = np.full((3, 7), np.finfo(dtype).max / 2, dtype)
    assert check_finite(backend.to_device(big), "op", "x") is not None
    for bad, where in ((np.nan, (0, 4)), (np.inf, (2, 6)), (-np.inf, (1, 0))):
        a = big.copy()
        a[where] = bad
        with pytest.raises(NF, match=rf"op: x has 1 non-finite entry .* at index \({where[0]}, {where[1]}\)"):
            check_finite(backend.to_device(a), "op", "x")


@pytest.mark.cpu_only  # written against host NumPy arrays, not yet converted for a device
def test_integer_directions_are_accepted_as_real():
    np.testing.assert_allclose(OBJ.hvp(THETA, np.eye(N, dtype=int)[:2]), OBJ.hvp(THETA, np.eye(N)[:2]))


def test_numpy_scalars_are_valid_hyperparameters_and_widths():
    assert SGD(np.float32(0.1), momentum=np.float64(0.9), nesterov=np.bool_(True)).nesterov is True
    assert nets.MLP((np.int64(4), np.int32(3), 2)).sizes == (4, 3, 2)
    assert LBFGS(history_size=np.int64(5)).history_size == 5


def test_a_cut_real_size_batch_is_caught_with_verification_off(tmp_path):
    write_cifar([10, 10, 10, 10, 10, 10])(tmp_path)
    assert len(load_small_cifar(tmp_path).train) == 50
    raw = (tmp_path / "cifar10" / "data_batch_2.bin").read_bytes()
    (tmp_path / "cifar10" / "data_batch_2.bin").write_bytes(raw[: 4 * 3073])
    with pytest.raises(D.DataFormatError, match="data_batch_2.bin has 4"):
        load_small_cifar(tmp_path)


def test_refused_connections_are_not_retried(tmp_path):
    calls = []

    def fake(*args, **kw):
        calls.append(1)
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    with mock.patch("urllib.request.urlopen", fake), pytest.raises(DL.DownloadError, match="refused"):
        fetch(tmp_path)
    assert calls == [1]


def test_timeouts_and_resets_are_still_retried(tmp_path):
    sleeps = []
    for err in (TimeoutError("timed out"), ConnectionResetError(104, "reset"),
                urllib.error.URLError(TimeoutError("timed out"))):
        with urlopen_raising(err), pytest.raises(DL.DownloadError, match="failed 3 times.*no partial file"):
            DL.download("http://example.invalid/f", tmp_path / "f", "0" * 32, retries=2, backoff=0.5,
                        progress=False, sleep=sleeps.append)
    assert sleeps == [0.5, 1.0] * 3

