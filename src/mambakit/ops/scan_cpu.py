"""Fused CPU selective scan (backend ``"cpu"``): numba kernels for the forward and the backward pass.

The kernels run the recurrence of :func:`~mambakit.ops.selective_scan.selective_scan_ref` for real A,

    h_t = exp(dt_t · A) ⊙ h_{t-1} + dt_t · u_t · B_t,     y_t = <C_t, h_t>,

one (batch row, channel) pair at a time with the state h (N numbers) held in cache, so the (batch, dim, L, N)
tensor is never built. The forward pass writes y, the last state and the state at the start of every chunk
of ``CHUNK`` steps; the backward pass walks each chunk in reverse after recomputing its states from the saved
boundary, so the memory kept for training is O(batch·dim·L·(1 + N / CHUNK)). The (batch·dim) pairs are
split over ``torch.get_num_threads()`` threads (:mod:`mambakit.ops.cpu_threads`).

What is O(1) per (batch, channel, step) -- the bias and softplus on delta, the skip term D·u and the SiLU(z)
gate -- stays in torch around the kernel: those are vectorised, memory-bound passes over (batch, dim, L) that
autograd differentiates, and keeping them out leaves the kernels short.

Speed: the forward pass does batch·dim·L·N exponentials, which bound it on CPUs (see docs/benchmarks.md).
numba's ``np.exp`` is a scalar libm call here, so float32 uses our own exp (Cody-Waite range reduction and a
degree-7 polynomial, relative error below 6e-7, exactly 0 / inf / NaN where exp underflows, overflows or gets
NaN) that LLVM vectorises over the N lanes of the state; float64 keeps the libm exp.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .cpu_threads import run_blocks, split_pairs
from .scan_common import kernel_core, run_real_scan

CHUNK = 64  # steps between saved states; the backward pass keeps CHUNK × N states per thread
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # no 'nnan'/'ninf': infinities and NaN must survive

# float32 exp constants (Cody-Waite split of ln 2 and a minimax polynomial for exp on [-ln2/2, ln2/2]).
_F32 = np.float32
_EXP_HI = _F32(88.72283)     # above: exp overflows float32
_EXP_LO = _F32(-87.33654)    # below: exp is under the smallest normal float32; we return 0
_LOG2E = _F32(1.4426950408889634)
_LN2_HI = _F32(0.693359375)
_LN2_LO = _F32(-2.12194440e-4)
_P0, _P1, _P2 = _F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3)
_P3, _P4, _P5 = _F32(4.1665795894e-2), _F32(1.6666665459e-1), _F32(5.0000001201e-1)
_HALF, _ONE, _ZERO, _INF = _F32(0.5), _F32(1.0), _F32(0.0), _F32(np.inf)
_MAX_EXP2 = _F32(127.0)


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32 (a no-op cast LLVM can vectorise)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(fastmath=_FASTMATH, inline="always", cache=True)
def _exp_float32(v):
    """exp(v) for float32 v, branch-free so the loops that call it vectorise."""
    x = min(max(v, _EXP_LO), _EXP_HI)
    k = min(np.floor(x * _LOG2E + _HALF), _MAX_EXP2)
    r = x - k * _LN2_HI - k * _LN2_LO
    p = _P0
    p = p * r + _P1
    p = p * r + _P2
    p = p * r + _P3
    p = p * r + _P4
    p = p * r + _P5
    p = p * r * r + r + _ONE
    two_to_k = _int32_bits_as_float32(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))
    result = p * two_to_k
    result = _ZERO if v < _EXP_LO else result
    result = _INF if v > _EXP_HI else result
    return v if v != v else result  # NaN in, NaN out


def _exp(v):
    """exp, dispatched on the scalar type when compiled (float32: ours; float64: libm)."""
    return math.exp(v)


@overload(_exp, inline="always")
def _exp_overload(v):
    if v == types.float32:
        return lambda v: _exp_float32(v)
    return lambda v: math.exp(v)


@njit(nogil=True, fastmath=_FASTMATH, cache=True)
def _exp_float32_kernel(x, out):
    for i in range(x.shape[0]):
        out[i] = _exp(x[i])


def exp_float32(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The kernels' float32 exp over a 1-D float32 array, one thread (for tests and benchmarks)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x) if out is None else out
    _exp_float32_kernel(x, out)
    return out


@njit(nogil=True, fastmath=_FASTMATH, cache=True)
def _scan_forward_kernel(u, dt, A, Bk, Ck, b_sel, t_sel, dpg_b, c_b_sel, c_t_sel, dpg_c,
                         chunk, first_pair, end_pair, zero, y, states, last):
    """y[b, d, t] = <C_t, h_t>; states[b, d, c] = h before step c·chunk; last[b, d] = h_L.

    Runs the (batch row, channel) pairs ``first_pair <= b·dim + d < end_pair``.
    Bk, Ck: (batch or 1, groups, L or 1, N); row b·b_sel, group d // dpg_b, step t·t_sel serve (b, d, t).
    """
    dim, L = u.shape[1], u.shape[2]
    N = A.shape[1]
    h = np.empty(N, dtype=u.dtype)
    for pair in range(first_pair, end_pair):
        b = pair // dim
        d = pair - b * dim
        Bs = Bk[b * b_sel, d // dpg_b]
        Cs = Ck[b * c_b_sel, d // dpg_c]
        Ad = A[d]
        h[:] = zero
        for t in range(L):
            if t % chunk == 0:
                states[b, d, t // chunk, :] = h
            dtt = dt[b, d, t]
            x = dtt * u[b, d, t]
            Bt = Bs[t * t_sel]
            Ct = Cs[t * c_t_sel]
            acc = zero
            for n in range(N):
                hn = _exp(dtt * Ad[n]) * h[n] + x * Bt[n]
                h[n] = hn
                acc += hn * Ct[n]
            y[b, d, t] = acc
        last[b, d, :] = h


@njit(nogil=True, fastmath=_FASTMATH, cache=True)
def _scan_backward_kernel(u, dt, A, Bk, Ck, b_sel, t_sel, dpg_b, c_b_sel, c_t_sel, dpg_c,
                          chunk, first_pair, end_pair, zero, states, dy, dlast,
                          du, ddt, dA_part, dB_part, dC_part):
    """Gradients of the forward kernel's (y, last) for the upstream gradients (dy, dlast).

    Runs the pairs ``first_pair <= b·dim + d < end_pair``: writes their du, ddt (batch, dim, L) and adds
    their contributions into dA_part (dim, N), dB_part (like Bk) and dC_part (like Ck), the running thread's
    own partial sums (threads share channels and groups, so each has its own and the caller adds them up).
    """
    dim, L = u.shape[1], u.shape[2]
    N = A.shape[1]
    n_chunks = (L + chunk - 1) // chunk
    H = np.empty((chunk, N), dtype=u.dtype)   # states h_t of the chunk being walked
    E = np.empty((chunk, N), dtype=u.dtype)   # decays exp(dt_t · A) of that chunk
    dh = np.empty(N, dtype=u.dtype)           # gradient flowing into h_t from the future
    dA_acc = np.empty(N, dtype=u.dtype)
    for pair in range(first_pair, end_pair):
        b = pair // dim
        d = pair - b * dim
        gb = d // dpg_b
        gc = d // dpg_c
        Bs = Bk[b * b_sel, gb]
        Cs = Ck[b * c_b_sel, gc]
        dBs = dB_part[b * b_sel, gb]
        dCs = dC_part[b * c_b_sel, gc]
        Ad = A[d]
        dh[:] = dlast[b, d]
        dA_acc[:] = zero
        for c in range(n_chunks - 1, -1, -1):
            t0 = c * chunk
            t1 = min(L, t0 + chunk)
            h0 = states[b, d, c]
            for t in range(t0, t1):   # recompute the chunk's states from its saved start
                i = t - t0
                prev = h0 if i == 0 else H[i - 1]
                dtt = dt[b, d, t]
                x = dtt * u[b, d, t]
                Bt = Bs[t * t_sel]
                for n in range(N):
                    e = _exp(dtt * Ad[n])
                    E[i, n] = e
                    H[i, n] = e * prev[n] + x * Bt[n]
            for t in range(t1 - 1, t0 - 1, -1):
                i = t - t0
                prev = h0 if i == 0 else H[i - 1]
                g = dy[b, d, t]
                dtt = dt[b, d, t]
                ut = u[b, d, t]
                x = dtt * ut
                Bt = Bs[t * t_sel]
                Ct = Cs[t * c_t_sel]
                dBt = dBs[t * t_sel]
                dCt = dCs[t * c_t_sel]
                sum_ddt = zero
                sum_du = zero
                for n in range(N):
                    dhn = dh[n] + g * Ct[n]
                    dCt[n] += g * H[i, n]
                    w = dhn * prev[n] * E[i, n]      # d loss / d log-decay of step t
                    dA_acc[n] += w * dtt
                    sum_ddt += w * Ad[n] + dhn * ut * Bt[n]
                    sum_du += dhn * Bt[n]
                    dBt[n] += dhn * x
                    dh[n] = dhn * E[i, n]
                ddt[b, d, t] = sum_ddt
                du[b, d, t] = sum_du * dtt
        for n in range(N):
            dA_part[d, n] += dA_acc[n]


class _FusedScan(torch.autograd.Function):
    """(u, dt, A, Bk, Ck) -> (y, last_state) with the fused kernels; all inputs contiguous, one real dtype."""

    @staticmethod
    def forward(ctx, u, dt, A, Bk, Ck, b_index, c_index):
        batch, dim, L = u.shape
        N = A.shape[1]
        chunk = CHUNK
        y = torch.empty_like(u)
        states = torch.empty(batch, dim, -(-L // chunk), N, dtype=u.dtype)
        last = torch.empty(batch, dim, N, dtype=u.dtype)
        arrays = [t.numpy() for t in (u, dt, A, Bk, Ck)]
        zero = arrays[0].dtype.type(0)
        outs = [t.numpy() for t in (y, states, last)]

        def block(_, first, end):
            _scan_forward_kernel(*arrays, *b_index, *c_index, chunk, first, end, zero, *outs)

        run_blocks(block, *split_pairs(batch * dim, batch * dim * L * N))
        ctx.save_for_backward(u, dt, A, Bk, Ck, states)
        ctx.b_index, ctx.c_index, ctx.chunk = b_index, c_index, chunk
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dlast):
        u, dt, A, Bk, Ck, states = ctx.saved_tensors
        batch, dim, L = u.shape
        N = A.shape[1]
        dy = torch.zeros_like(u) if dy is None else dy.contiguous().to(u.dtype)
        dlast = (torch.zeros(batch, dim, N, dtype=u.dtype) if dlast is None
                 else dlast.contiguous().to(u.dtype))
        workers, blocks = split_pairs(batch * dim, 3 * batch * dim * L * N)
        du = torch.empty_like(u)
        ddt = torch.empty_like(u)
        dA_part = torch.zeros((workers, *A.shape), dtype=u.dtype)   # one partial sum per thread
        dB_part = torch.zeros((workers, *Bk.shape), dtype=u.dtype)
        dC_part = torch.zeros((workers, *Ck.shape), dtype=u.dtype)
        arrays = [t.numpy() for t in (u, dt, A, Bk, Ck)]
        zero = arrays[0].dtype.type(0)
        grads = [t.numpy() for t in (states, dy, dlast, du, ddt)]
        parts = [t.numpy() for t in (dA_part, dB_part, dC_part)]

        def block(i, first, end):
            _scan_backward_kernel(*arrays, *ctx.b_index, *ctx.c_index, ctx.chunk, first, end, zero, *grads,
                                  parts[0][i], parts[1][i], parts[2][i])

        run_blocks(block, workers, blocks)
        return du, ddt, dA_part.sum(0), dB_part.sum(0), dC_part.sum(0), None, None


_fused_core = kernel_core(_FusedScan)


def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fused CPU selective scan; arguments, results and gradients as :func:`selective_scan_ref`.

    Args:
        u, delta, z: (batch, dim, L) on the CPU; A: real (dim, N); B, C: (dim, N), (batch, N, L) or
        (batch, groups, N, L); D, delta_bias: (dim,). Complex A raises DTypeError (``selective_scan``
        hands it to ``ref``).

    Returns:
        out (batch, dim, L) in u's dtype, and with ``return_last_state`` the last state (batch, dim, N).
    """
    return run_real_scan(_fused_core, "cpu", u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                         return_last_state, device_type="cpu")
