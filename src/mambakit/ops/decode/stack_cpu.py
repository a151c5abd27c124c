"""The decoding step of a whole stack of Mamba layers (norm, in_proj, conv, x_proj, dt_proj, state update,
gate, out_proj, residual) in one numba call per thread.

At batch 1 a step reads every weight once and does little arithmetic with it, so it is bound by memory
bandwidth and, in torch, by the dispatch of some forty operations per layer. Here the work of each layer is
cut into items (the norm; blocks of channels of in_proj + conv; blocks of x_proj's rows; blocks of channels of
the state update; blocks of out_proj's rows) numbered in order. Each thread claims the next item from an
atomic counter and, before running it, spins until every item of the phase before is done. A thread that
starts late claims nothing already taken, so one thread alone finishes the step and no thread ever waits for
one that never came. The order of every sum is fixed by the items, not by the threads: the result does not
depend on how many threads ran or when.

Weights: float32 or float64 (the activations' dtype), or low precision for in_proj and out_proj (bf16 bits
as uint16, or int8 with a float32 scale per output row: :mod:`mambakit.ops.linear`); an empty array stands for
an absent bias, scale or D.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numba.typed import List

from ..cpu.atomics import atomic_fetch_add, wait_until_at_least
from ..cpu.kernel_math import FASTMATH, zero_of
from ..linear.cpu import linear_rows
from .cpu import conv_rows, scan_rows

FIELDS = ("norm_w", "norm_b", "in_w", "in_s", "in_b", "conv_w", "conv_b", "x_proj_w", "dt_wT", "dt_b", "A",
          "D", "out_w", "out_s", "out_b", "conv_state", "ssm_state")


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def _norm(residual, update, add, weight, bias, eps, rms, hidden):
    """residual += update (when ``add``), then hidden = norm(residual): RMSNorm or LayerNorm per row."""
    M, d = residual.shape
    has_bias = bias.shape[0] > 0
    for m in range(M):
        r = residual[m]
        if add:
            for k in range(d):
                r[k] += update[m, k]
        mean = zero_of(r[0])
        if not rms:
            for k in range(d):
                mean += r[k]
            mean /= d
        sq = zero_of(r[0])
        for k in range(d):
            c = r[k] - mean
            sq += c * c
        inv = 1 / math.sqrt(sq / d + eps)
        for k in range(d):
            v = (r[k] - mean) * inv * weight[k]
            hidden[m, k] = v + bias[k] if has_bias else v


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def _in_proj_conv(hidden, in_w, in_s, in_b, conv_state, conv_w, conv_b, first, end, xz, xc):
    """Channels first <= d < end: x and z rows of in_proj, then the conv window's shift, the conv and SiLU."""
    d_inner = conv_w.shape[0]
    linear_rows(in_w, in_s, in_b, hidden, first, end, xz, 0)
    # the gate's rows follow x's in in_proj: rows d_inner + d go to xz[:, d_inner + d]
    linear_rows(in_w[d_inner:], in_s[d_inner:], in_b[d_inner:], hidden, first, end, xz, d_inner)
    conv_rows(xz, conv_state, conv_w, conv_b, first, end, xc)


@njit(nogil=True, cache=True)
def _block(n, blocks, i):
    """Bounds of block i of ``blocks`` near-equal blocks of range(n)."""
    return i * n // blocks, (i + 1) * n // blocks


@njit(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def stack_step_worker(residual, norm_w, norm_b, in_w, in_s, in_b, conv_w, conv_b, x_proj_w, dt_wT, dt_b, A, D,
                      out_w, out_s, out_b, conv_state, ssm_state, eps, rms, blocks, counters,
                      hidden, xz, xc, dbl, y, update):
    """One thread's share of the step: claims items until none is left. ``counters``: [next item, items
    done] (int64, zero at the start); scratch: hidden and update (M, d_model), xz (M, 2·d_inner), xc and y
    (M, d_inner), dbl (M, dt_rank + 2N). The per-layer arguments are typed lists, one entry per layer."""
    n_layer = len(in_w)
    per_layer = 1 + 4 * blocks   # NORM, then blocks of IN_CONV, X_PROJ, SCAN and OUT
    total = n_layer * per_layer + 1
    d_model = residual.shape[1]
    while True:
        item = atomic_fetch_add(counters, 0, 1)
        if item >= total:   # every item is taken: wait for the others' to finish
            wait_until_at_least(counters, 1, total)
            return
        layer, k = item // per_layer, item % per_layer
        phase, b = (k - 1) // blocks, (k - 1) % blocks   # k == 0 (NORM) gives b == blocks - 1: not used
        # every item waits for the whole phase before its own (NORM: the previous layer's OUT)
        wait_until_at_least(counters, 1, item if k == 0 else item - b)
        if layer == n_layer:  # the last item: the final residual addition
            for m in range(residual.shape[0]):
                for j in range(d_model):
                    residual[m, j] += update[m, j]
        elif k == 0:
            _norm(residual, update, layer > 0, norm_w[layer], norm_b[layer], eps, rms, hidden)
        elif phase == 0:
            first, end = _block(conv_w[layer].shape[0], blocks, b)
            _in_proj_conv(hidden, in_w[layer], in_s[layer], in_b[layer], conv_state[layer], conv_w[layer],
                          conv_b[layer], first, end, xz, xc)
        elif phase == 1:   # rows of x_proj: a block each, so no thread waits on one that reads them all
            first, end = _block(x_proj_w[layer].shape[0], blocks, b)
            linear_rows(x_proj_w[layer], dt_b[layer][:0], dt_b[layer][:0], xc, first, end, dbl, 0)
        elif phase == 2:
            first, end = _block(A[layer].shape[0], blocks, b)
            scan_rows(xz, xc, dbl, ssm_state[layer], dt_wT[layer], dt_b[layer], A[layer], D[layer], first,
                       end, y)
        else:
            first, end = _block(d_model, blocks, b)
            linear_rows(out_w[layer], out_s[layer], out_b[layer], y, first, end, update, 0)
        atomic_fetch_add(counters, 1, 1)


@njit(cache=True)
def _list_of(first):
    out = List()
    out.append(first)
    return out


@njit(cache=True)
def _append(items, item):
    items.append(item)


def per_layer_lists(layers: list[dict[str, np.ndarray]]) -> tuple[List, ...]:
    """The per-layer arrays as one numba typed list per field of :data:`FIELDS`. The lists are built by
    compiled (and disk-cached) functions: built from Python, a typed list compiles its methods again in
    every new process (about a second); a tuple instead would make the kernel compile once per depth."""
    lists = []
    for name in FIELDS:
        items = _list_of(layers[0][name])
        for layer in layers[1:]:
            _append(items, layer[name])
        lists.append(items)
    return tuple(lists)


def scratch(batch: int, d_model: int, d_inner: int, dbl_width: int, dtype) -> tuple[np.ndarray, ...]:
    """hidden, xz, xc, dbl, y, update for :func:`stack_step_worker`."""
    return (np.empty((batch, d_model), dtype), np.empty((batch, 2 * d_inner), dtype),
            np.empty((batch, d_inner), dtype), np.empty((batch, dbl_width), dtype),
            np.empty((batch, d_inner), dtype), np.zeros((batch, d_model), dtype))
