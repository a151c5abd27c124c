"""The fused CPU scan's float32 forward kernel for input-dependent B and C, vectorised across channels.

:mod:`mambakit.ops.selective_scan.cpu`'s per-channel forward kernel vectorises one channel's step over the
N lanes of its state and ends every step with a horizontal sum ``<C_t, h_t>``. When B and C depend on the step
(the Mamba case: (batch, groups, L, N) in :func:`~mambakit.ops.selective_scan.common.kernel_layout`), every
channel of a group reads the same B_t and C_t, so this kernel takes a block of up to ``LANES`` channels of one
batch row and one group of B and of C, keeps their states as an (N, lanes) tile, and per step does

    for n in range(N):   h[n, :] = exp(dt_t[:] · A[:, n]) ⊙ h[n, :] + (dt_t[:] · u_t[:]) · B[t, n]
                         y_t[:] += C[t, n] · h[n, :]

with B[t, n] and C[t, n] broadcast over the channel lanes: contiguous lane-wide vector operations and no
horizontal sum. The channels' rows of u, delta and z are (batch, dim, L), so each chunk of ``CHUNK`` steps is
staged: dt = softplus(delta + bias) along each channel's row (contiguous, vectorised), then copied into
step-major (chunk, lanes) tiles; the chunk's y goes back through a (lanes, chunk) tile to the rows, where
D·u and the SiLU(z) gate are applied along each row. The tile starts from the channels' initial states
(zeros when none is given). Lanes past the block's last channel start at 0 and hold dt = u = 0 (so their
state stays 0) and are never written out.

The decays are computed as 2^(dt · A·log2(e)) with A·log2(e) precomputed per block: rounding to the
nearest integer k leaves f in [-1/2, 1/2] exactly, 2^f is a degree-5 polynomial (relative error below 2e-7
in float32 arithmetic) and 2^k goes straight into the exponent bits, with the clamp to [-127, 128] giving
exactly 0 below 2^-126.5 (k = -127: zero bits) and inf from 2^127.5 (k = 128: inf bits); NaN stays NaN.
It takes about two thirds of the instructions of :mod:`~mambakit.ops.selective_scan.cpu`'s float32 exp, which
matters because the forward pass is bound by its batch·dim·L·N decays.

It writes exactly what the per-channel kernel writes (out, the state before every chunk in the layout the
backward kernel reads, the last state), so the backward pass is shared. float64 and time-invariant (dim, N)
B or C stay on the per-channel kernel (:func:`uses_lane_kernel`), which keeps one compiled variant here.
The tiles are allocated by the plain wrapper and passed to :func:`_forward_blocks`, compiled ``noalias``
(:mod:`mambakit.ops.cpu.noalias`), so LLVM keeps the state tile's loads and stores out of each other's way.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..cpu.kernel_math import (
    FASTMATH,
    LOG2E,
    elementwise_float32,
    int32_bits_as_float32,
    scalar_sigmoid,
    scalar_softplus,
)
from ..cpu.noalias import njit_noalias

# Channels per block, the width of every tile (narrower blocks are padded); faster than 8, 16 and 64 on AVX2
# (one thread, (1, 768, 2048, 16)). The kernels compile it in: blocks must be built with it.
LANES = 32

_F32 = np.float32
# 2^f on [-1/2, 1/2] as 1 + f·(Q1 + f·(Q2 + ...)), fitted to relative error (reweighted least squares).
_Q1, _Q2, _Q3 = _F32(0.6931470036506653), _F32(0.24022242426872253), _F32(0.05550733953714371)
_Q4, _Q5 = _F32(0.009671513922512531), _F32(0.0013264714507386088)
_K_MIN, _K_MAX, _ONE = _F32(-127.0), _F32(128.0), _F32(1.0)


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _exp2_float32(t):
    """2^t for float32 t, branch-free (see the module docstring for its range and accuracy)."""
    clamped = min(max(t, _K_MIN), _K_MAX)
    k = np.rint(clamped)   # to nearest (ties either way: f stays in [-1/2, 1/2])
    f = clamped - k   # exact
    p = _Q5
    p = p * f + _Q4
    p = p * f + _Q3
    p = p * f + _Q2
    p = p * f + _Q1
    p = p * f + _ONE
    result = p * int32_bits_as_float32(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))
    return t if t != t else result   # NaN in, NaN out


exp2_float32 = elementwise_float32(_exp2_float32, "exp2_float32")   # the lane kernel's 2^t, for tests


def uses_lane_kernel(dtype: np.dtype, b_index: tuple[int, int, int], c_index: tuple[int, int, int]) -> bool:
    """Whether the forward pass runs this kernel: float32, with B and C both read per step."""
    return dtype == np.float32 and b_index[1] == 1 and c_index[1] == 1


def lane_blocks(batch: int, dim: int, channels_per_group_b: int, channels_per_group_c: int,
                lanes: int) -> np.ndarray:
    """(n_blocks, 3) int64 rows (b, first channel, end channel): runs of at most ``lanes`` channels of one
    batch row that share one group of B and one group of C, covering every (b, channel) once."""
    starts = []
    d0 = 0
    while d0 < dim:
        d1 = min(dim, d0 + lanes, (d0 // channels_per_group_b + 1) * channels_per_group_b,
                 (d0 // channels_per_group_c + 1) * channels_per_group_c)
        starts.append((d0, d1))
        d0 = d1
    rows = [(b, d0, d1) for b in range(batch) for d0, d1 in starts]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


@njit(nogil=True, fastmath=FASTMATH, cache=True, inline="never")
def _load_states(h, h0, b, d0, width, zero):
    """h (N, lanes) = the initial states h0[b, d0 + w] of the block's channels w < width, 0 beyond. Out of
    line: written inside the kernel, this loop made the kernel about 3% slower even without an initial
    state (measured; LLVM laid out the kernel's loops differently)."""
    h[:, :] = zero
    for w in range(width):
        for n in range(h.shape[0]):
            h[n, w] = h0[b, d0 + w, n]


@njit(nogil=True, cache=True)
def scan_forward_lanes_kernel(u, delta, A, Bk, Ck, D, z, bias, h0, starts, softplus, b_sel, dpg_b, c_b_sel,
                               dpg_c, chunk, blocks, first_block, end_block, zero, out, states, last):
    """The per-channel forward kernel's (out, states, last) for the blocks ``first_block <= i < end_block``
    of ``blocks`` (rows (b, d0, d1) from :func:`lane_blocks`, at most ``LANES`` channels each).

    u, delta: (batch, dim, L); D, bias: (dim,) or empty (absent); z: like u or empty; h0: the initial state
    (batch, dim, N), or empty (zeros); starts: (batch, L) uint8, 1 where a packed sequence starts, or empty.
    Bk, Ck: (batch or 1, groups, L, N); row b·b_sel, group d // dpg_b
    serve (b, d). out: like u; states: (batch, dim, ceil(L / chunk), N), the state before each chunk; last:
    (batch, dim, N).

    It allocates the scratch tiles and hands them to :func:`_forward_blocks`.
    """
    N, lanes, dtype = A.shape[1], LANES, u.dtype
    per_n = (np.empty((N, lanes), dtype), np.empty((N, lanes), dtype))
    per_step = (np.empty((chunk, lanes), dtype), np.empty((chunk, lanes), dtype),
                np.empty((chunk, lanes), dtype))
    rows = np.empty((lanes, chunk), dtype)   # channel-major staging of dt, then of y
    _forward_blocks(u, delta, A, Bk, Ck, D, z, bias, h0, starts, softplus, b_sel, dpg_b, c_b_sel, dpg_c,
                    chunk, blocks, first_block, end_block, zero, out, states, last, per_n, per_step, rows)


# Every array it writes is its own (fresh outputs, its wrapper's tiles), so it may be compiled noalias
# (:mod:`mambakit.ops.cpu.noalias`): measured 7% faster than with the tiles allocated here.
@njit_noalias(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def _forward_blocks(u, delta, A, Bk, Ck, D, z, bias, h0, starts, softplus, b_sel, dpg_b, c_b_sel, dpg_c,
                    chunk, blocks, first_block, end_block, zero, out, states, last, per_n, per_step, rows):
    """:func:`scan_forward_lanes_kernel` with its scratch tiles as arguments: (N, lanes) h and A·log2(e),
    three step-major (chunk, lanes) tiles, and the channel-major (lanes, chunk) rows."""
    L = u.shape[2]
    N = A.shape[1]
    lanes = LANES   # a compile-time constant: the lane loops unroll without per-row alias checks
    n_chunks = (L + chunk - 1) // chunk
    has_D, has_z, has_bias, has_h0 = D.shape[0] > 0, z.shape[0] > 0, bias.shape[0] > 0, h0.shape[0] > 0
    has_starts = starts.shape[0] > 0
    h, A_tile = per_n       # the block's states, one row per state index n; A·log2(e) in the same layout
    dt_tile, x_tile, y_tile = per_step   # dt; dt · u; <C_t, h_t>
    for block in range(first_block, end_block):
        b, d0, width = blocks[block, 0], blocks[block, 1], blocks[block, 2] - blocks[block, 1]
        if width > lanes:
            raise ValueError("blocks: a block wider than LANES channels")
        Bs = Bk[b * b_sel, d0 // dpg_b]   # (L, N), shared by the block's channels
        Cs = Ck[b * c_b_sel, d0 // dpg_c]
        for n in range(N):
            for w in range(lanes):
                A_tile[n, w] = A[d0 + w, n] * LOG2E if w < width else zero
        if has_h0:
            _load_states(h, h0, b, d0, width, zero)
        else:
            h[:, :] = zero
        dt_tile[:, :] = zero
        x_tile[:, :] = zero
        for c in range(n_chunks):
            t0 = c * chunk
            T = min(L, t0 + chunk) - t0
            # the chunk's span of each row, indexed from 0: an index t0 + t would keep LLVM from vectorising
            # the loops over t (numba's wraparound check on an index it cannot prove non-negative)
            span = slice(t0, t0 + T)
            for w in range(width):
                for n in range(N):
                    states[b, d0 + w, c, n] = h[n, w]
            for w in range(width):   # dt along each channel's row, where it vectorises
                bias_d = bias[d0 + w] if has_bias else zero
                delta_row = delta[b, d0 + w, span]
                for t in range(T):
                    v = delta_row[t] + bias_d
                    rows[w, t] = scalar_softplus(v) if softplus else v
            for w in range(width):
                u_row = u[b, d0 + w, span]
                for t in range(T):
                    dt_tile[t, w] = rows[w, t]
                    x_tile[t, w] = rows[w, t] * u_row[t]
            for t in range(T):
                tb = t0 + t
                if has_starts and starts[b, tb]:   # a new packed sequence: nothing carries over
                    h[:, :] = zero
                for w in range(lanes):
                    y_tile[t, w] = zero
                for n in range(N):
                    bn = Bs[tb, n]
                    cn = Cs[tb, n]
                    for w in range(lanes):
                        hn = _exp2_float32(dt_tile[t, w] * A_tile[n, w]) * h[n, w] + x_tile[t, w] * bn
                        h[n, w] = hn
                        y_tile[t, w] += cn * hn
            for w in range(width):
                for t in range(T):
                    rows[w, t] = y_tile[t, w]
            for w in range(width):   # D·u and the gate along each channel's row
                D_d = D[d0 + w] if has_D else zero
                u_row = u[b, d0 + w, span]
                out_row = out[b, d0 + w, span]
                if has_z:
                    z_row = z[b, d0 + w, span]
                    for t in range(T):
                        zt = z_row[t]
                        out_row[t] = (rows[w, t] + D_d * u_row[t]) * (zt * scalar_sigmoid(zt))
                else:
                    for t in range(T):
                        out_row[t] = rows[w, t] + D_d * u_row[t]
        for w in range(width):
            for n in range(N):
                last[b, d0 + w, n] = h[n, w]
