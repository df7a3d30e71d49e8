"""Affine layers, activations and containers.

Shapes follow PyTorch: Linear maps (N, in) -> (N, out) with weight (out, in);
Conv2d maps (N, C, H, W) -> (N, C_out, OH, OW) with weight (C_out, C, kh, kw)
and OH = ⌊(H + 2 ph - kh) / sh⌋ + 1 (likewise OW).
"""
from __future__ import annotations

import math

from tinygrad2 import Tensor, capture
from tinygrad2.kernels import window_output_size
from tinygrad2.primitives import conv, im2col

from .module import Module, bias_uniform, check_size, fan_in, kaiming_uniform


def _pair(value, what):
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}")
    return pair


# ================================================================ affine maps


class Linear(Module):
    """y = x Wᵀ + b;  x (N, in), W (out, in) kind "weight", b (out,) kind "bias".

    Init (PyTorch's): W ~ U(±1/√in) (Kaiming-uniform with a = √5), b ~ U(±1/√in)."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = check_size(in_features, "Linear", "in_features")
        self.out_features = check_size(out_features, "Linear", "out_features")
        self.has_bias = bool(bias)
        self.add_param("weight", (self.out_features, self.in_features), "weight", kaiming_uniform)
        if bias:
            self.add_param("bias", (self.out_features,), "bias", bias_uniform(self.in_features))

    def extra_repr(self):
        return f"{self.in_features}->{self.out_features}" + ("" if self.has_bias else ", no bias")

    def forward(self, x):
        y = self.affine(x, self.weight, self.bias if self.has_bias else None)
        return _recorded(self, x.data, y) if capture.active() else y

    def affine(self, x, weight, bias):
        """x Wᵀ + b for a given weight (WeightNorm passes g·v/||v||)."""
        self.expect_ndim(x, (2,), "(N, in_features)")
        if x.shape[1] != self.in_features:
            self.fail(x, f"has {x.shape[1]} features, expected {self.in_features}")
        y = x @ weight.T
        return y + bias if bias is not None else y


class Conv2d(Module):
    """Cross-correlation, as PyTorch's Conv2d (groups = dilation = 1):

        y[n, o, p, q] = b[o] + Σ_{c, i, j} W[o, c, i, j] · x̃[n, c, p·sh + i, q·sw + j],

    x̃ the input zero-padded by (ph, pw): the weight, reshaped (C_out,
    C·kh·kw), times the patch matrix P (C·kh·kw, OH·OW·N). Three routes:

    * ``patches="blocked"`` (default): the engine's ``conv`` primitive on the
      input stored as (C, H, W, N), y = W P in blocks of output rows whose
      patches fit in cache (``tinygrad2.kernels.CONV_BLOCK_BYTES``), each
      copied out of a zero-copy strided view and used at once; P is never
      built whole or kept for the backward pass. Its weight and input
      gradients are the primitives ``conv_weight_grad`` (g Pᵀ) and
      ``conv_input_grad`` (P*(Wᵀ g)), blocked the same way; the three are
      each other's transposes, so H·v and recorded backward passes need no
      other rule. On SmallCNN at batch 128 the slices route's gradient
      takes 1.3-1.4x the blocked route's (benchmarks/nets.py, README
      "Measured").
    * ``patches="slices"``: the kh·kw shifted strided views of the
      input, stored as (C, H, W, N), stacked by one ``concatenate`` into
      P (C·kh·kw, OH·OW·N) (Caffe's im2col layout with the batch folded into
      the columns, innermost; rows in (c, i, j) order, so that W is only
      reshaped, never copied); y = W P (C_out, OH·OW·N) is returned as the
      (N, C_out, OH, OW) transposed view. One 2-D GEMM each for y, dW = dY Pᵀ
      (as (P dYᵀ)ᵀ when C_out <= 16 < C·kh·kw, the faster GEMM there) and
      dP = Wᵀ dY
      (a batched W @ P_n per sample would make the engine's matmul vjp build
      per-sample weight cotangents (N, C_out, C·kh·kw) before summing them:
      0.9 GB for ResNet18's last stage at batch 100). The batch is the
      innermost axis because the copies (the windows' concatenate, the
      padding, and in the backward pass the sum of the windows' cotangents
      back into the input) then run along ow·N or N contiguous elements, not
      along OW: on ResNet18's 7x7 to 1x1 stages at batch 100 they take 3-20x
      less time than in a (C, N, H, W) layout (benchmarks/nets.py --profile).
      The next conv finds its input already stored as (C, H, W, N): the
      elementwise layers between (BatchNorm, ReLU, unpadded pooling, the
      residual sum) keep their input's memory order. A padded max-pool (the
      ImageNet stem's) returns C order, and the conv after it copies once.
      Built from getitem, reshape and concatenate, linear primitives whose
      rules give jvp, vjp and H·v for free: the cross-check of the blocked
      route.
    * ``patches="im2col"``: the engine's ``im2col`` primitive, patches
      (N·OH·OW, C·kh·kw), y = P Wᵀ, transposed to (N, C_out, OH, OW). Its copy
      gathers runs of kw elements (about 3x slower than the slices on
      SmallCNN's first layer), and the SmallCNN gradient takes about 1.7x as
      long with it (benchmarks/nets.py); kept as a cross-check.

    W (C_out, C, kh, kw) kind "weight", b (C_out,) kind "bias"; PyTorch's init
    with fan_in = C·kh·kw."""

    patches = "blocked"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, patches=None):
        super().__init__()
        if patches is not None:
            if patches not in ("blocked", "slices", "im2col"):
                raise ValueError(f"Conv2d: patches must be 'blocked', 'slices' or 'im2col', got {patches!r}")
            self.patches = patches
        self.in_channels = check_size(in_channels, "Conv2d", "in_channels")
        self.out_channels = check_size(out_channels, "Conv2d", "out_channels")
        self.kernel = _pair(kernel_size, "Conv2d: kernel_size")
        self.stride = _pair(stride, "Conv2d: stride")
        self.padding = _pair(padding, "Conv2d: padding")
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2d: need kernel >= 1, stride >= 1, padding >= 0; got kernel {self.kernel}, "
                             f"stride {self.stride}, padding {self.padding}")
        self.has_bias = bool(bias)
        shape = (self.out_channels, self.in_channels) + self.kernel
        self.add_param("weight", shape, "weight", kaiming_uniform)
        if bias:
            self.add_param("bias", (self.out_channels,), "bias", bias_uniform(fan_in(shape)))

    def extra_repr(self):
        kh, kw = self.kernel
        parts = [f"{self.in_channels}->{self.out_channels}", f"k{kh}" if kh == kw else f"k{kh}x{kw}"]
        if self.stride != (1, 1):
            parts.append(f"s{self.stride[0]}" if self.stride[0] == self.stride[1] else f"s{self.stride[0]}x{self.stride[1]}")
        if self.padding != (0, 0):
            parts.append(f"p{self.padding[0]}" if self.padding[0] == self.padding[1] else f"p{self.padding[0]}x{self.padding[1]}")
        if not self.has_bias:
            parts.append("no bias")
        return ", ".join(parts)

    def output_size(self, h, w):
        return window_output_size(h, w, self.kernel, self.stride, self.padding)

    def forward(self, x):
        y = self.affine(x, self.weight, self.bias if self.has_bias else None)
        if not capture.active():
            return y
        patches = im2col.forward(x.data, kernel=self.kernel, stride=self.stride, padding=self.padding)
        return _recorded(self, patches.reshape(-1, self.in_channels * self.kernel[0] * self.kernel[1]), y)

    def affine(self, x, weight, bias):
        """The convolution with a given weight (WeightNorm passes g·v/||v||)."""
        self.expect_ndim(x, (4,), "(N, C, H, W)")
        n, c, h, w = x.shape
        if c != self.in_channels:
            self.fail(x, f"has {c} channels, expected {self.in_channels}")
        oh, ow = self.output_size(h, w)
        if oh < 1 or ow < 1:
            self.fail(x, f"is smaller than the kernel {self.kernel} after padding {self.padding}")
        o, k = self.out_channels, c * self.kernel[0] * self.kernel[1]
        if self.patches == "im2col":
            rows = im2col(x, kernel=self.kernel, stride=self.stride, padding=self.padding)  # (N, OH, OW, C, kh, kw)
            y = rows.reshape(n * oh * ow, k) @ weight.reshape(o, k).T                    # (N·OH·OW, C_out)
            if bias is not None:
                y = y + bias
            return y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)
        xc = batch_last(x)                                                       # (C, H, W, N)
        if self.patches == "blocked":
            y = conv(weight.reshape(o, k), xc, kernel=self.kernel, stride=self.stride, padding=self.padding)
            if bias is not None:
                y = y + bias.reshape(o, 1, 1, 1)
            return y.transpose(3, 0, 1, 2)                                       # (C_out, OH, OW, N) -> (N, ...)
        cols = shifted_windows(xc, self.kernel, self.stride, self.padding)       # (C, kh·kw, OH, OW, N)
        y = weight.reshape(o, k) @ cols.reshape(k, oh * ow * n)                  # (C_out, OH·OW·N)
        if bias is not None:
            y = y + bias.reshape(o, 1)
        return y.reshape(o, oh, ow, n).transpose(3, 0, 1, 2)


def _recorded(layer, inputs, y):
    """y, registered with :func:`tinygrad2.capture.record` (K-FAC's layer
    capture): ``inputs`` (rows = examples × locations, columns in the order of
    ``weight.reshape(out, -1)``: (in,) for Linear, (C, kh, kw) for Conv2d)."""
    name = layer.param_name("weight").rpartition(".")[0]
    bias = layer.param_name("bias") if layer.has_bias else None
    return capture.record(name, layer.param_name("weight"), bias, inputs, y)


def batch_last(x):
    """x (N, C, H, W) as the (C, H, W, N) transpose, stored contiguously:
    free (two views) when x is already such a transposed view -- the output
    of a Conv2d (blocked or slices route), and of elementwise layers after one, which keep
    their input's memory order -- else one copy (the reshape of a
    non-contiguous view)."""
    n, c, h, w = x.shape
    return x.transpose(1, 2, 3, 0).reshape(c, h * w * n).reshape(c, h, w, n)


def shifted_windows(x, kernel, stride, padding):
    """The kh·kw shifted, strided views of x (A, H, W, B) that a window
    visits, stacked along a new axis 1: (A, kh·kw, OH, OW, B), entry
    [a, i·kw + j, p, q, b] = x̃[a, p·sh + i, q·sw + j, b], x̃ zero-padded.
    Built from getitem (views) and one concatenate, a copy whose inner loops
    run along OW·B (stride 1) or B elements; with two or more windows the
    result is contiguous, so reshaping it to (A·kh·kw, OH·OW·B) is free (a
    1x1 kernel's single strided view is copied by that reshape), with rows
    in the order of a (C_out, C, kh, kw) weight's reshape to (C_out, C·kh·kw)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if ph or pw:
        x = x.pad(((0, 0), (ph, ph), (pw, pw), (0, 0)))
    h, w = x.shape[1:3]
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    a, b = x.shape[0], x.shape[3]
    views = [x[:, i: i + sh * (oh - 1) + 1: sh, j: j + sw * (ow - 1) + 1: sw].reshape(a, 1, oh, ow, b)
             for i in range(kh) for j in range(kw)]
    return views[0] if len(views) == 1 else Tensor.concatenate(views, axis=1)


class WeightNorm(Module):
    """Weight normalization (Salimans & Kingma, 2016) of a Linear or Conv2d:

        w_o = g_o · v_o / ||v_o||      for every output unit o,

    v_o the o-th row (Linear) or filter (Conv2d) of v. Parameters, named as
    PyTorch's ``weight_norm`` names them: ``weight_g`` (out,) kind "scale",
    ``weight_v`` (the layer's weight shape) kind "weight", and the layer's
    ``bias``. Init as PyTorch: v is the layer's default weight and
    g = ||v_o||, so that w starts equal to the plain layer's weight."""

    def __init__(self, layer):
        if not isinstance(layer, (Linear, Conv2d)):
            raise TypeError(f"WeightNorm: wraps a Linear or Conv2d, got {type(layer).__name__}")
        super().__init__()
        self._layer = layer  # not a child: only its configuration and affine map are used
        weight_shape, _, self._init_v = layer._specs["weight"]
        out = weight_shape[0]
        self.add_param("weight_g", (out,), "scale", None)
        self.add_param("weight_v", weight_shape, "weight", self._init_v)
        if layer.has_bias:
            self.add_param("bias", (out,), "bias", layer._specs["bias"][2])

    def extra_repr(self):
        return repr(self._layer)

    def init_params(self, rng):
        v = self._init_v(rng, self._specs["weight_v"][0])
        out = {"weight_g": (v.reshape(v.shape[0], -1) ** 2).sum(axis=1) ** 0.5, "weight_v": v}
        if "bias" in self._specs:
            shape, _, init = self._specs["bias"]
            out["bias"] = init(rng, shape)
        return out

    def weight(self):
        """g · v / ||v|| per output unit (the norm over all other axes)."""
        v, g = self.weight_v, self.weight_g
        keep = (v.shape[0],) + (1,) * (v.ndim - 1)
        norm = (v * v).sum(axis=tuple(range(1, v.ndim)), keepdims=True).sqrt()
        return v * (g.reshape(keep) / norm)

    def forward(self, x):
        return self._layer.affine(x, self.weight(), self.bias if "bias" in self._specs else None)


# ================================================================ shape


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1·d2·...)."""

    def forward(self, x):
        if x.ndim < 1:
            self.fail(x, "has no batch axis")
        return flatten(x)


def flatten(x):
    """x (N, ...) as (N, -1), in row-major order of the logical axes. A 4-D x
    stored in the convolutions' (C, H, W, N) order is first passed through
    :func:`batch_last`: free here, and in the backward pass it copies the
    cotangent once into that order, so that the elementwise layers before
    (ReLU, pooling) do not combine arrays of two memory orders, which NumPy
    iterates element by element (SmallCNN's gradient: about 10% slower)."""
    if x.ndim == 4 and not x.data.flags.c_contiguous and x.data.transpose(1, 2, 3, 0).flags.c_contiguous:
        x = batch_last(x).transpose(3, 0, 1, 2)
    return x.reshape(x.shape[0], -1)


# ================================================================ activations


class ReLU(Module):
    """max(x, 0); derivative [x > 0] (kink at 0)."""

    def forward(self, x):
        return x.relu()


class Tanh(Module):
    """tanh(x); derivative 1 - tanh²(x)."""

    def forward(self, x):
        return x.tanh()


class Softplus(Module):
    """log(1 + eˣ) (β = 1); derivative σ(x)."""

    def forward(self, x):
        return x.softplus()


class GELU(Module):
    """The tanh approximation of GELU (PyTorch's ``GELU(approximate="tanh")``):

        gelu(x) ≈ ½ x (1 + tanh(√(2/π) (x + 0.044715 x³))).

    The exact form x·Φ(x) needs erf, which is not an engine primitive; the two
    differ by at most about 5e-4."""

    C = math.sqrt(2.0 / math.pi)

    def forward(self, x):
        inner = (x + x * x * x * 0.044715) * self.C
        return x * 0.5 * (inner.tanh() + 1.0)


ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "softplus": Softplus, "gelu": GELU}


def activation(name):
    """A fresh activation module by name: "relu", "tanh", "softplus", "gelu"."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


# ================================================================ containers


class Sequential(Module):
    """Layers applied in order; children named "0", "1", ... (so parameters
    are "0.weight", "2.bias", ... as in PyTorch's nn.Sequential)."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: item {i} is a {type(layer).__name__}, not a Module")
            setattr(self, str(i), layer)

    def __getitem__(self, i):
        return list(self._children.values())[i]

    def __len__(self):
        return len(self._children)

    def __iter__(self):
        return iter(self._children.values())

    def extra_repr(self):
        return ", ".join(repr(m) for m in self)

    def forward(self, x):
        for layer in self:
            x = layer(x)
        return x

