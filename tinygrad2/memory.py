"""Memory forecasts for dense curvature, and the chunk of directions per pass.

A dense product (a Hessian, a GGN, an exact diagonal) is assembled from
batched passes of K directions each. Before anything large is allocated the
planner forecasts

    needed = result + K · bytes_per_direction,

picks K (the *chunk*), and raises :class:`CurvatureMemoryError` if even the
smallest plan exceeds the budget. The per-direction cost is measured from one
probe forward pass (:func:`graph_elements`), so the forecast follows the model.
"""
from __future__ import annotations

import functools
import math

from .graph import reachable

default_memory_budget = 2 * 2**30
"""Bytes that a dense curvature computation may use when the caller gives no
budget of its own (2 GiB). Change it here for the whole session."""

preferred_chunk = 64
"""The most directions per batched pass when assembling dense curvature. From
``python -m benchmarks.engine --directions`` (MLP 784-32-10, float32, one
BLAS thread, every call timed warm; two sweeps on 2026-11-29): the time per
direction of a K-direction HVP pass, over the gradient's time, falls from
1.91-1.92x / 1.56-1.57x at K = 1 (batch 64 / 1000) to 0.47-0.49x /
0.73-0.81x for every K from 32 to 256, with no K best in both sweeps.
Larger chunks than this only cost memory."""

min_chunk = 16
"""The fewest directions per pass that the memory rule of
:func:`choose_chunk` cuts a chunk down to (the budget may cut further):
per direction within about 10% of the best from K = 16 on."""

chunk_floor_bytes = 64 * 2**20
"""The automatic chunk's forecast working memory may reach at least this
much (64 MiB), however small the result."""


class CurvatureMemoryError(MemoryError):
    """A dense curvature computation would exceed the memory budget.

    Raised before anything large is allocated. Attributes: ``n`` (parameters),
    ``needed`` and ``budget`` (bytes)."""

    def __init__(self, message, n, needed, budget):
        super().__init__(message)
        self.n, self.needed, self.budget = n, needed, budget


def format_bytes(b):
    """``1.50 GiB (1,610,612,736 bytes)``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:.2f} {unit} ({int(b):,} bytes)"
    return f"{int(b):,} bytes"


def graph_elements(root) -> int:
    """Total number of elements of every recorded intermediate behind
    ``root`` (the activations a pass keeps alive; leaves and constants not
    counted)."""
    nodes, _ = reachable(root)
    return sum(t.data.size for t in nodes)


def bytes_per_direction(intermediate_elements, n, itemsize) -> int:
    """Forecast working memory of one direction in a batched product:

        itemsize · (3 A + 4 n),

    A = elements of all recorded intermediates of one forward pass (each
    carries a K-direction tangent forward; the backward pass makes
    cotangents and their tangents of the same sizes), 4 n = the direction,
    the result, and the per-parameter cotangent pieces being summed.
    Measured peaks of MLP Hessians (64-32-10 on 1,797 digits, K = 16
    and 32): 1.14-1.23 A per direction, tanh and ReLU alike (the backward
    pass frees each intermediate once its consumers are done), so the
    forecast errs on the safe side by about 2.5x."""
    return itemsize * (3 * intermediate_elements + 4 * n)


def choose_chunk(result_bytes, per_direction, directions, budget, chunk=None, where="chunk"):
    """(chunk, bytes needed) for a chunked computation whose result takes
    ``result_bytes``; ``per_direction`` is a number of bytes or a callable
    returning it (called only when needed: measuring it costs a forward pass).

    chunk None picks ``preferred_chunk`` directions per pass (at most
    ``directions``), fewer -- down to ``min_chunk`` -- when one chunk's
    forecast working memory would exceed half the result's size (or
    ``chunk_floor_bytes``, if larger), so that the peak stays near 1.5x the
    result; then cut to what fits the budget (down to 1). A small, wide
    problem (the digits MLP's Hessian: 44 MiB, 5 MiB per direction) gets 16,
    a large one (MNIST's, 618 MiB) 64."""
    measure = per_direction if callable(per_direction) else (lambda: per_direction)
    if chunk is not None:
        chunk = int(chunk)
        if chunk < 1:
            raise ValueError(f"{where}: chunk must be >= 1, got {chunk}")
        return chunk, result_bytes + chunk * measure()
    if result_bytes > budget:  # the result alone does not fit: no need to probe
        return 1, result_bytes
    per = max(measure(), 1)
    by_memory = max(min_chunk, int(max(result_bytes / 2, chunk_floor_bytes) // per))
    chunk = max(1, min(preferred_chunk, directions, by_memory))
    if budget != math.inf:
        chunk = max(1, min(chunk, int((budget - result_bytes) // per)))
    return chunk, result_bytes + chunk * per


def check_fits(where, n, result_elements, dtype, chunk, needed, budget):
    """Raise :class:`CurvatureMemoryError` (naming ``where``, e.g.
    ``"Objective.hessian"``) when ``needed`` exceeds ``budget``."""
    if needed <= budget:
        return
    shape = f"({n}, {n})" if result_elements == n * n else f"({result_elements},)"
    what = (f"the {shape} {dtype} result alone" if needed == result_elements * dtype.itemsize
            else f"the {shape} {dtype} result plus one chunk of {chunk} direction(s)")
    raise CurvatureMemoryError(
        f"{where}: n = {n:,} parameters; needs about {format_bytes(needed)} for {what}, but the "
        f"memory budget is {format_bytes(budget)}. Cheaper alternatives: hvp(theta, V) / ggn_vp "
        f"for products, hessian_diag(theta, method='hutchinson') for the diagonal, the "
        f"spectrum estimates (tinygrad2.spectrum: Lanczos, Hutchinson trace) for eigenvalues; "
        f"or a smaller chunk, or raise memory_budget= (this objective or call) / "
        f"tinygrad2.memory.default_memory_budget.",
        n, needed, budget,
    )


@functools.cache
def keep_freed_host_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning
    it to the operating system; returns whether it took effect (False off
    glibc, e.g. macOS, Windows, musl).

    A training step frees and reallocates the same few hundred arrays every
    step. With glibc's defaults every array above the (adaptive) mmap
    threshold, and every free that leaves the top of the heap large, goes
    back to the kernel, so the next step's arrays are fresh pages, each
    zero-filled on its first write (a page fault per 4 KiB). On ResNet18 at
    batch 100 that was about a quarter of a NumPy training step. This sets
    ``M_MMAP_THRESHOLD`` to 32 MiB (glibc's maximum; larger arrays are still
    mapped and unmapped) and ``M_TRIM_THRESHOLD`` to 1 GiB; the peak
    resident memory is unchanged, and memory is not given back between steps.
    The process-wide setting also applies to every other library in the
    process (PyTorch's CPU tensors included). The experiments CLI and the
    benchmarks call it (the first call sets it; later calls return the
    first answer); library users may call it."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(mallopt(m_trim_threshold, 1 << 30))
