"""Fused CPU selective scan (backend ``"cpu"``): numba kernels for the forward and the backward pass.

The kernels compute all of :func:`~mambakit.ops.selective_scan.ref.selective_scan_ref` for real A,

    dt_t  = softplus(delta_t + delta_bias)               (bias and softplus optional)
    h_t   = exp(dt_t · A) ⊙ h_{t-1} + dt_t · u_t · B_t,    h_{-1} = 0 or the given initial state,
    out_t = (<C_t, h_t> + D · u_t) · silu(z_t)           (D and the gate optional),

one (batch row, channel) pair at a time with the state h (N numbers) held in cache, so the (batch, dim, L, N)
tensor is never built. For each pair the forward kernel makes three passes over the row (length L), all in
cache: dt from delta, the recurrence (writing y into the output row), then D·u and the gate. It writes out,
the last state and the state at the start of every chunk of ``CHUNK`` steps; dt and the ungated y are not
kept. The backward kernel recomputes dt, walks each chunk in reverse after recomputing its states (and
<C, h> where z needs it) from the saved boundary, and produces du, d(delta), dz and per-thread partial sums of
dA, dB, dC, dD and d(delta_bias). So the memory kept for training is O(batch·dim·L·(1 + N / CHUNK)). The
(batch·dim) pairs are split over ``torch.get_num_threads()`` threads (:mod:`mambakit.ops.cpu.threads`).

In float32 with input-dependent B and C (Mamba's case) the forward pass runs
:mod:`mambakit.ops.selective_scan.cpu_lanes` instead: the same results, vectorised across blocks of
channels that share B_t and C_t rather than across N, with no horizontal sum per step (the keyword
``forward_kernel`` of :func:`selective_scan_cpu` chooses between the two explicitly).

Packed sequences (``seq_idx``) reach the kernels as a (batch, L) uint8 array of sequence starts, where the
state restarts from 0 (the backward pass treats the decay into a start as 0).

Absent D, z, delta_bias, initial state or starts are passed to the kernels as zero-size arrays (the kernels
test the size), so each kernel is compiled once per dtype, not once per combination of options.

An initial state h_{-1} is where the forward recurrence starts, and so it is the first saved chunk state,
from which the backward pass recomputes. The backward walk ends with the gradient of the loss with respect
to h_{-1}: at each step t it turns the gradient of h_t into that of h_{t-1} by multiplying by
∂h_t/∂h_{t-1} = exp(dt_t · A), so after step 0, d(initial state) = exp(dt_0 · A) ⊙ (∂loss/∂h_0).

Speed: the forward pass does batch·dim·L·N exponentials, which bound it on CPUs (see docs/benchmarks.md).
numba's ``np.exp`` is a scalar libm call here, so float32 uses the vectorisable exp and softplus of
:mod:`mambakit.ops.cpu.kernel_math` (over the N lanes of the state and along L); float64 keeps libm's.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from ...errors import ConfigError
from ..cpu.kernel_math import FASTMATH, scalar_exp, scalar_sigmoid, scalar_softplus, softplus_with_grad
from ..cpu.threads import run_blocks, split_pairs
from ..packing import sequence_starts
from . import cpu_lanes, cpu_lanes_bwd
from .common import check_real_scan, empty_scan, kernel_layout

CHUNK = 64  # steps between saved states; the backward pass keeps CHUNK × N states per thread
FORWARD_KERNELS = ("auto", "lanes", "channels")
# torch.profiler labels of the fused scan's forward and backward (benchmarks/train_throughput.py --breakdown)
PROFILE_FORWARD, PROFILE_BACKWARD = "mambakit::selective_scan_forward", "mambakit::selective_scan_backward"


@njit(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def _steps(delta_row, bias_d, softplus, dt, dt_grad):
    """dt[t] = softplus(delta_row[t] + bias_d) (or without softplus); with softplus and a non-empty
    ``dt_grad``, also the softplus's derivative there."""
    L = delta_row.shape[0]
    if not softplus:
        for t in range(L):
            dt[t] = delta_row[t] + bias_d
    elif dt_grad.shape[0] == 0:
        for t in range(L):
            dt[t] = scalar_softplus(delta_row[t] + bias_d)
    else:
        for t in range(L):
            x = delta_row[t] + bias_d
            dt[t], dt_grad[t] = softplus_with_grad(x)


@njit(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def scan_forward_kernel(u, delta, A, Bk, Ck, D, z, bias, h0, starts, softplus, b_sel, t_sel, dpg_b, c_b_sel,
                         c_t_sel, dpg_c, chunk, first_pair, end_pair, zero, out, states, last):
    """out[b, d, t] = (<C_t, h_t> + D[d]·u) · silu(z); states[b, d, c] = h before step c·chunk; last = h_L.

    Runs the (batch row, channel) pairs ``first_pair <= b·dim + d < end_pair``. D, bias: (dim,) or empty
    (absent); z: like u or empty; h0: the initial state (batch, dim, N), or empty (zeros); starts: (batch, L)
    uint8, 1 where a packed sequence starts (the state restarts from 0), or empty. Bk, Ck: (batch or 1,
    groups, L or 1, N); row b·b_sel, group d // dpg_b, step t·t_sel serve (b, d, t).
    """
    dim, L = u.shape[1], u.shape[2]
    N = A.shape[1]
    n_chunks = (L + chunk - 1) // chunk
    has_D, has_z, has_bias, has_h0 = D.shape[0] > 0, z.shape[0] > 0, bias.shape[0] > 0, h0.shape[0] > 0
    has_starts = starts.shape[0] > 0
    h = np.empty(N, dtype=u.dtype)
    dt = np.empty(L, dtype=u.dtype)
    no_grad = np.empty(0, dtype=u.dtype)
    for pair in range(first_pair, end_pair):
        b = pair // dim
        d = pair - b * dim
        Bs = Bk[b * b_sel, d // dpg_b]   # (L or 1, N); indexed below, never sliced per step (a view per
        Cs = Ck[b * c_b_sel, d // dpg_c]  # step costs reference counting that outweighs the step's work)
        Ad = A[d]
        u_row = u[b, d]
        out_row = out[b, d]
        _steps(delta[b, d], bias[d] if has_bias else zero, softplus, dt, no_grad)
        if has_h0:
            h[:] = h0[b, d]
        else:
            h[:] = zero
        for c in range(n_chunks):
            states[b, d, c, :] = h
            for t in range(c * chunk, min(L, (c + 1) * chunk)):
                if has_starts and starts[b, t]:   # a new packed sequence: nothing carries over
                    h[:] = zero
                dtt = dt[t]
                x = dtt * u_row[t]
                tb = t * t_sel
                tc = t * c_t_sel
                acc = zero
                for n in range(N):
                    hn = scalar_exp(dtt * Ad[n]) * h[n] + x * Bs[tb, n]
                    h[n] = hn
                    acc += hn * Cs[tc, n]
                out_row[t] = acc
        last[b, d, :] = h
        D_d = D[d] if has_D else zero
        if has_z:
            z_row = z[b, d]
            for t in range(L):
                zt = z_row[t]
                out_row[t] = (out_row[t] + D_d * u_row[t]) * (zt * scalar_sigmoid(zt))
        elif has_D:
            for t in range(L):
                out_row[t] += D_d * u_row[t]


@njit(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def scan_backward_kernel(u, delta, A, Bk, Ck, D, z, bias, starts, softplus, b_sel, t_sel, dpg_b, c_b_sel,
                          c_t_sel, dpg_c, chunk, first_pair, end_pair, zero, states, dout, dlast,
                          du, ddelta, dz, dh0, dA_part, dB_part, dC_part, dD_part, dbias_part):
    """Gradients of the forward kernel's (out, last) for the upstream gradients (dout, dlast).

    The recomputation starts from the saved chunk states (the first one is the initial state); where a packed
    sequence starts (``starts``, as in the forward kernel) the decay into it counts as 0, which also cuts the
    gradient flowing back across the boundary. Runs the
    pairs ``first_pair <= b·dim + d < end_pair``: writes their du, ddelta and (with z) dz, all (batch, dim,
    L), their d(initial state) into dh0 (batch, dim, N) unless it is empty, and adds their contributions
    into dA_part (dim, N), dB_part (like Bk), dC_part (like Ck), dD_part and dbias_part ((dim,), or empty
    when D / bias is absent): the running thread's own partial sums (threads share channels and groups, so
    each has its own and the caller adds them up).
    """
    dim, L = u.shape[1], u.shape[2]
    N = A.shape[1]
    has_D, has_z, has_bias, has_dh0 = D.shape[0] > 0, z.shape[0] > 0, bias.shape[0] > 0, dh0.shape[0] > 0
    has_starts = starts.shape[0] > 0
    n_chunks = (L + chunk - 1) // chunk
    H = np.empty((chunk + 1, N), dtype=u.dtype)   # H[i + 1] = state after step t0 + i of the chunk walked
    E = np.empty((chunk, N), dtype=u.dtype)       # decays exp(dt_t · A) of that chunk
    G = np.empty((chunk, N), dtype=u.dtype)       # G[i] = d loss / d (state after step t0 + i)
    dh = np.empty(N, dtype=u.dtype)               # gradient flowing into h_t from the future
    dA_acc = np.empty(N, dtype=u.dtype)
    dt = np.empty(L, dtype=u.dtype)               # the row's steps, recomputed
    dt_grad = np.empty(L if softplus else 0, dtype=u.dtype)   # d dt / d delta where softplus
    dy = np.empty(L, dtype=u.dtype)               # gradient of the ungated y
    gate = np.empty(L if has_z else 0, dtype=u.dtype)     # sigmoid(z)
    y_core = np.empty(L if has_z else 0, dtype=u.dtype)   # <C_t, h_t>, recomputed for dz
    for pair in range(first_pair, end_pair):
        b = pair // dim
        d = pair - b * dim
        gb = d // dpg_b
        gc = d // dpg_c
        Bs = Bk[b * b_sel, gb]     # 2-D, indexed (not sliced) per step, as in the forward kernel
        Cs = Ck[b * c_b_sel, gc]
        dBs = dB_part[b * b_sel, gb]
        dCs = dC_part[b * c_b_sel, gc]
        Ad = A[d]
        u_row = u[b, d]
        g_row = dout[b, d]
        ddelta_row = ddelta[b, d]
        du_row = du[b, d]
        D_d = D[d] if has_D else zero
        _steps(delta[b, d], bias[d] if has_bias else zero, softplus, dt, dt_grad)
        if has_z:
            z_row = z[b, d]
            for t in range(L):
                s = scalar_sigmoid(z_row[t])
                gate[t] = s
                dy[t] = g_row[t] * z_row[t] * s
        else:
            for t in range(L):
                dy[t] = g_row[t]
        dh[:] = dlast[b, d]
        dA_acc[:] = zero
        for c in range(n_chunks - 1, -1, -1):
            t0 = c * chunk
            t1 = min(L, t0 + chunk)
            H[0, :] = states[b, d, c]
            for t in range(t0, t1):   # recompute the chunk's states from its saved start
                i = t - t0
                dtt = dt[t]
                x = dtt * u_row[t]
                tb = t * t_sel
                for n in range(N):
                    e = scalar_exp(dtt * Ad[n])
                    E[i, n] = e
                    H[i + 1, n] = e * H[i, n] + x * Bs[tb, n]
                if has_starts and starts[b, t]:
                    for n in range(N):
                        E[i, n] = zero
                        H[i + 1, n] = x * Bs[tb, n]
                if has_z:
                    tc = t * c_t_sel
                    acc = zero
                    for n in range(N):
                        acc += H[i + 1, n] * Cs[tc, n]
                    y_core[t] = acc
            for t in range(t1 - 1, t0 - 1, -1):   # the gradient into h_t, walking back
                i = t - t0
                g = dy[t]
                tc = t * c_t_sel
                for n in range(N):
                    dhn = dh[n] + g * Cs[tc, n]
                    G[i, n] = dhn
                    dh[n] = dhn * E[i, n]
            # What the chunk's state gradients give the inputs, in loops that each write one array (a loop
            # writing several needs more runtime overlap checks than LLVM makes before it vectorises).
            for t in range(t0, t1):
                i = t - t0
                ut = u_row[t]
                tb = t * t_sel
                sum_ddt = zero
                sum_du = zero
                for n in range(N):   # G·H[i]·E: the gradient of step t's log-decay dt_t·A_n
                    gB = G[i, n] * Bs[tb, n]
                    sum_ddt += G[i, n] * H[i, n] * E[i, n] * Ad[n] + gB * ut
                    sum_du += gB
                ddelta_row[t] = sum_ddt * dt_grad[t] if softplus else sum_ddt
                du_row[t] = sum_du * dt[t] + dy[t] * D_d
            for t in range(t0, t1):
                i = t - t0
                dtt = dt[t]
                for n in range(N):
                    dA_acc[n] += G[i, n] * H[i, n] * E[i, n] * dtt
            for t in range(t0, t1):
                i = t - t0
                x = dt[t] * u_row[t]
                tb = t * t_sel
                for n in range(N):
                    dBs[tb, n] += G[i, n] * x
            for t in range(t0, t1):
                i = t - t0
                g = dy[t]
                tc = t * c_t_sel
                for n in range(N):
                    dCs[tc, n] += g * H[i + 1, n]
        for n in range(N):
            dA_part[d, n] += dA_acc[n]
        if has_dh0:   # after step 0's walk back, dh is the gradient of the state before it
            dh0[b, d, :] = dh
        if has_z:   # d out / d z = y · silu'(z), silu'(z) = s·(1 + z·(1 - s)), s = sigmoid(z)
            z_row = z[b, d]
            dz_row = dz[b, d]
            for t in range(L):
                s = gate[t]
                zt = z_row[t]
                dz_row[t] = g_row[t] * (y_core[t] + D_d * u_row[t]) * (s + zt * (s - s * s))
        if has_D:
            acc = zero
            for t in range(L):
                acc += dy[t] * u_row[t]
            dD_part[d] += acc
        if has_bias:
            acc = zero
            for t in range(L):
                acc += ddelta_row[t]
            dbias_part[d] += acc


def _starts_array(starts: torch.Tensor | None) -> np.ndarray:
    """The (batch, L) uint8 sequence starts, or the kernels' zero-size "absent"."""
    return np.empty((0, 0), dtype=np.uint8) if starts is None else starts.numpy()


def _or_empty(t: torch.Tensor | None, like: torch.Tensor, ndim: int) -> np.ndarray:
    """t as a numpy array, or a zero-size array of ``ndim`` dims (the kernels' "absent")."""
    return t.numpy() if t is not None else np.empty((0,) * ndim, dtype=like.numpy().dtype)


class FusedScan(torch.autograd.Function):
    """(u, delta, A, Bk, Ck, D, z, delta_bias, softplus, b_index, c_index, initial_state, lanes) ->
    (out, last_state) with the fused kernels.

    All tensors contiguous, on the CPU, in one real dtype; D, z, delta_bias, initial_state may be None
    (initial_state and lanes last, so callers without them may leave them out); B and C in
    :func:`~mambakit.ops.selective_scan.common.kernel_layout`. ``lanes``: run the forward pass on the
    channel-vectorised kernel of :mod:`.cpu_lanes` (only where :func:`~.cpu_lanes.uses_lane_kernel` holds).
    """

    @staticmethod
    def forward(ctx, u, delta, A, Bk, Ck, D, z, delta_bias, softplus, b_index, c_index, initial_state=None,
                lanes=False, starts=None):
        with torch.profiler.record_function(PROFILE_FORWARD):
            return FusedScan._forward(ctx, u, delta, A, Bk, Ck, D, z, delta_bias, softplus, b_index, c_index,
                                      initial_state, lanes, starts)

    @staticmethod
    def _forward(ctx, u, delta, A, Bk, Ck, D, z, delta_bias, softplus, b_index, c_index, initial_state,
                 lanes, starts):
        batch, dim, L = u.shape
        N = A.shape[1]
        chunk = CHUNK
        out = torch.empty_like(u)
        states = torch.empty(batch, dim, -(-L // chunk), N, dtype=u.dtype)
        last = torch.empty(batch, dim, N, dtype=u.dtype)
        arrays = [t.numpy() for t in (u, delta, A, Bk, Ck)]
        options = [_or_empty(D, u, 1), _or_empty(z, u, 3), _or_empty(delta_bias, u, 1),
                   _or_empty(initial_state, u, 3), _starts_array(starts), softplus]
        zero = arrays[0].dtype.type(0)
        outs = [t.numpy() for t in (out, states, last)]
        work = batch * dim * L * N
        ctx.lanes = None
        if lanes:
            blocks = cpu_lanes.lane_blocks(batch, dim, b_index[2], c_index[2], cpu_lanes.LANES)
            ctx.lanes = blocks   # the backward pass runs on the same blocks

            def lane_block(_, first, end):
                cpu_lanes.scan_forward_lanes_kernel(
                    *arrays, *options, b_index[0], b_index[2], c_index[0], c_index[2], chunk, blocks,
                    first, end, zero, *outs)

            run_blocks(lane_block, *split_pairs(len(blocks), work))
        else:
            def block(_, first, end):
                scan_forward_kernel(*arrays, *options, *b_index, *c_index, chunk, first, end, zero, *outs)

            run_blocks(block, *split_pairs(batch * dim, work))
        # No need to keep initial_state: it is states[:, :, 0], where the backward pass recomputes from.
        ctx.save_for_backward(u, delta, A, Bk, Ck, D, z, delta_bias, states, starts)
        ctx.softplus, ctx.b_index, ctx.c_index, ctx.chunk = softplus, b_index, c_index, chunk
        ctx.has_initial_state = initial_state is not None
        return out, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlast):
        with torch.profiler.record_function(PROFILE_BACKWARD):
            return FusedScan._backward(ctx, dout, dlast)

    @staticmethod
    def _backward(ctx, dout, dlast):
        u, delta, A, Bk, Ck, D, z, delta_bias, states, starts = ctx.saved_tensors
        batch, dim, L = u.shape
        N = A.shape[1]
        dout = torch.zeros_like(u) if dout is None else dout.contiguous().to(u.dtype)
        dlast = (torch.zeros(batch, dim, N, dtype=u.dtype) if dlast is None
                 else dlast.contiguous().to(u.dtype))
        # The lane kernel walks the forward's blocks of channels; the per-channel one, (row, channel) pairs.
        units = batch * dim if ctx.lanes is None else len(ctx.lanes)
        workers, blocks = split_pairs(units, 3 * batch * dim * L * N)
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dz = torch.empty_like(u) if z is not None else None
        dh0 = torch.empty(batch, dim, N, dtype=u.dtype) if ctx.has_initial_state else None
        # One partial sum per thread for what several threads add to.
        dA_part = torch.zeros((workers, *A.shape), dtype=u.dtype)
        dB_part = torch.zeros((workers, *Bk.shape), dtype=u.dtype)
        dC_part = torch.zeros((workers, *Ck.shape), dtype=u.dtype)
        dD_part = torch.zeros((workers, dim if D is not None else 0), dtype=u.dtype)
        dbias_part = torch.zeros((workers, dim if delta_bias is not None else 0), dtype=u.dtype)
        arrays = [t.numpy() for t in (u, delta, A, Bk, Ck)]
        options = [_or_empty(D, u, 1), _or_empty(z, u, 3), _or_empty(delta_bias, u, 1), _starts_array(starts),
                   ctx.softplus]
        zero = arrays[0].dtype.type(0)
        grads = [t.numpy() for t in (states, dout, dlast, du, ddelta)] + [_or_empty(dz, u, 3),
                                                                          _or_empty(dh0, u, 3)]
        parts = [t.numpy() for t in (dA_part, dB_part, dC_part, dD_part, dbias_part)]

        if ctx.lanes is not None:
            lane_blocks = ctx.lanes

            def block(i, first, end):
                cpu_lanes_bwd.scan_backward_lanes_kernel(
                    *arrays, *options, ctx.b_index[0], ctx.b_index[2], ctx.c_index[0], ctx.c_index[2],
                    ctx.chunk, lane_blocks, first, end, zero, *grads, *(part[i] for part in parts))
        else:
            def block(i, first, end):
                scan_backward_kernel(*arrays, *options, *ctx.b_index, *ctx.c_index, ctx.chunk, first, end,
                                      zero, *grads, *(part[i] for part in parts))

        run_blocks(block, workers, blocks)
        dD = dD_part.sum(0) if D is not None else None
        dbias = dbias_part.sum(0) if delta_bias is not None else None
        return (du, ddelta, dA_part.sum(0), dB_part.sum(0), dC_part.sum(0), dD, dz, dbias,
                None, None, None, dh0, None, None)


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
    *,
    initial_state: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    forward_kernel: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fused CPU selective scan; arguments, results and gradients as :func:`selective_scan_ref`.

    Args:
        u, delta, z: (batch, dim, L) on the CPU; A: real (dim, N); B, C: (dim, N), (batch, N, L) or
        (batch, groups, N, L); D, delta_bias: (dim,); initial_state: (batch, dim, N) state to start from
        (default zeros); seq_idx: (batch, L) ids of packed sequences (the state restarts where one
        starts). Complex A raises DTypeError (``selective_scan`` hands it to ``ref``). bfloat16 /
        float16 inputs are computed in float32.
        forward_kernel: which kernel runs the forward pass (the backward kernel is the same for both):
            ``"lanes"``, vectorised across channels (:mod:`.cpu_lanes`; float32 with B and C both
            input-dependent only), ``"channels"``, the per-channel kernel (any case), or ``"auto"``:
            ``"lanes"`` wherever it applies, else ``"channels"``. The two give the same results up to
            float32 rounding; the choice is for tests and benchmarks that compare them.

    Raises:
        ConfigError: an unknown ``forward_kernel``, or ``"lanes"`` where it does not apply.

    Returns:
        out (batch, dim, L) in u's dtype, and with ``return_last_state`` the last state (batch, dim, N) in
        the compute dtype (float32 or float64).
    """
    if forward_kernel not in FORWARD_KERNELS:
        raise ConfigError(f"forward_kernel: expected one of {list(FORWARD_KERNELS)}, got {forward_kernel!r}")
    dtype = check_real_scan("cpu", u, delta, A, B, C, D, z, delta_bias, device_type="cpu",
                            initial_state=initial_state, seq_idx=seq_idx)
    dim, L = u.shape[1], u.shape[2]
    if L == 0:
        out, last = empty_scan(u, delta, A, B, C, D, z, delta_bias, dtype=dtype, initial_state=initial_state)
    else:
        def prep(t):
            return None if t is None else t.to(dtype).contiguous()

        Bk, b_index = kernel_layout(B.to(dtype), dim)
        Ck, c_index = kernel_layout(C.to(dtype), dim)
        numpy_dtype = np.dtype(str(dtype).removeprefix("torch."))
        lanes_apply = cpu_lanes.uses_lane_kernel(numpy_dtype, b_index, c_index)
        if forward_kernel == "lanes" and not lanes_apply:
            raise ConfigError("forward_kernel: 'lanes' runs float32 with input-dependent B and C only; "
                              "use 'auto' or 'channels'")
        starts = None if seq_idx is None else sequence_starts(seq_idx).to(torch.uint8).contiguous()
        out, last = FusedScan.apply(prep(u), prep(delta), prep(A), Bk, Ck, prep(D), prep(z),
                                    prep(delta_bias), bool(delta_softplus), b_index, c_index,
                                    prep(initial_state), lanes_apply and forward_kernel != "channels", starts)
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out
