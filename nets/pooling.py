"""Pooling: max, average, global average.

Windows follow PyTorch: output size ⌊(H + 2p - k) / s⌋ + 1, stride defaults
to the kernel size, and padding may be at most half the kernel.

Both windowed pools are separable: they combine the kw column-shifted,
strided views ``x̃[:, :, :, j::sw]`` of the (padded) input elementwise, then
the kh row-shifted views ``r[:, :, i::sh]`` of that result (each cut to the
output size):

    max:      r = maximum(x̃_j=0, x̃_j=1, ...),   y = maximum(r_i=0, r_i=1, ...)
    average:  r = Σ_j x̃_j,                        y = Σ_i r_i / (kh·kw)

(kh + kw views instead of kh·kw). This serves overlapping and
non-overlapping windows alike and never reduces over small strided axes: on
SmallCNN's first pool (128x6x28x28) the maximum of views takes about 0.5 ms
where ``reshape(..., 2, ..., 2).max(axis=(3, 5))`` takes about 30 ms, and the
maximum's derivative is two masks instead of the max primitive's
tie-averaging weights.

Ties: ``maximum(a, b)`` passes the derivative to a when a >= b, so within a
row the first maximal column wins, and then the first row holding the
window's maximum: the first maximal entry in row-major order, which is the
entry PyTorch's max_pool2d routes its gradient to.

Max-pooling pads with -inf, not zero (``Tensor.pad(..., value=-inf)``: a
constant, so its tangent is zero), the columns before the column pass and the
rows before the row pass. A padded entry never wins (padding <= kernel/2
guarantees every window holds a real entry), its tangent is exactly zero,
and the maximum's kink test sees an infinite gap to it. Average-pooling pads
with zeros and divides by kh·kw (PyTorch's default ``count_include_pad=True``).
"""
from __future__ import annotations

from tinygrad2 import backend as B
from tinygrad2.kernels import window_output_size

from .layers import _pair
from .module import Module


class _Pool2d(Module):
    """Shared window logic; subclasses define ``_pad`` and ``_combine``."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel = _pair(kernel_size, f"{name}: kernel_size")
        self.stride = self.kernel if stride is None else _pair(stride, f"{name}: stride")
        self.padding = _pair(padding, f"{name}: padding")
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{name}: need kernel >= 1, stride >= 1, padding >= 0; got kernel {self.kernel}, "
                             f"stride {self.stride}, padding {self.padding}")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            raise ValueError(f"{name}: padding {self.padding} must be at most half the kernel {self.kernel}")

    def extra_repr(self):
        def fmt(prefix, pair):
            return f"{prefix}{pair[0]}" if pair[0] == pair[1] else f"{prefix}{pair[0]}x{pair[1]}"
        parts = [fmt("k", self.kernel)]
        if self.stride != self.kernel:
            parts.append(fmt("s", self.stride))
        if self.padding != (0, 0):
            parts.append(fmt("p", self.padding))
        return ", ".join(parts)

    def forward(self, x):
        self.expect_ndim(x, (4,), "(N, C, H, W)")
        h, w = x.shape[2:]
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        oh, ow = window_output_size(h, w, self.kernel, self.stride, self.padding)
        if oh < 1 or ow < 1:
            self.fail(x, f"is smaller than the window {self.kernel} after padding {self.padding}")
        if pw:
            x = self._pad(x, 3, pw)
        rows = self._combine([x[:, :, :, j: j + sw * (ow - 1) + 1: sw] for j in range(kw)])  # over columns
        if ph:
            rows = self._pad(rows, 2, ph)
        return self._combine([rows[:, :, i: i + sh * (oh - 1) + 1: sh] for i in range(kh)])  # then rows


class MaxPool2d(_Pool2d):
    """y[n, c, p, q] = max_{i, j} x̃[n, c, p·sh + i, q·sw + j], x̃ padded with -inf."""

    def _pad(self, x, axis, p):
        return x.pad(tuple((p, p) if a == axis else (0, 0) for a in range(4)), value=-B.xp.inf)

    def _combine(self, views):
        out = views[0]
        for v in views[1:]:
            out = out.maximum(v)
        return out


class AvgPool2d(_Pool2d):
    """y[n, c, p, q] = (1 / kh·kw) Σ_{i, j} x̃[n, c, p·sh + i, q·sw + j], x̃ zero-padded."""

    def _pad(self, x, axis, p):
        return x.pad(tuple((p, p) if a == axis else (0, 0) for a in range(4)))

    def _combine(self, views):
        out = views[0]
        for v in views[1:]:
            out = out + v
        return out * (1.0 / len(views))  # 1/kw after the columns, 1/kh after the rows


class GlobalAvgPool(Module):
    """(N, C, H, W) -> (N, C): the mean over all positions of each channel."""

    def forward(self, x):
        self.expect_ndim(x, (4,), "(N, C, H, W)")
        return x.mean(axis=(2, 3))
