"""The fused CPU scan's float32 backward kernel for input-dependent B and C, vectorised across channels.

The counterpart of :mod:`.cpu_lanes`' forward: a block of up to ``LANES`` channels of one batch row that
share one group of B and one of C walks the chunks in reverse with its states as (N, lanes) tiles. Per chunk,
in three passes over (step, n, lane) tiles:

    recompute, from the saved chunk start:  E_t = exp(dt_t A)  (the forward's 2^(dt·A·log2 e)),
                                            Q_t = E_t ⊙ h_{t-1},  h_t = Q_t + (dt_t u_t) B_t
    walk back (the only sequential part):   G_t = dh + dy_t C_t,  dh <- G_t ⊙ E_t   (G_t over E_t)
    what the gradients give, per step:      d(dt) = Σ_n G·Q·A + u Σ_n G·B,  du = dt Σ_n G·B,
                                            dA += G·Q·dt,  dB_t = Σ_lanes G·(dt u),
                                            dC_t = Σ_lanes dy·Q + B_t Σ_lanes dy·(dt u)

Q_t (rather than h_{t-1}) is what every gradient reads, since G·Q = G·E·h_{t-1} and h_t = Q_t + x_t B_t; so
the recompute pass does nothing but the recurrence, and the sums over n are lane-wide with no reduction
across lanes (dB and dC, shared by the block's channels, take one sum over the lanes per (t, n), written once
per block instead of once per channel; they share the third pass's loop, which measured faster than two).
Element-wise work (softplus and its derivative, the gate, D·u, dz, the D and bias sums) runs along each
channel's contiguous row, staged through (lanes, chunk) tiles as in the forward.
The scratch tiles are allocated by the plain wrapper :func:`scan_backward_lanes_kernel` and passed to
:func:`_backward_blocks`, compiled ``noalias`` (:mod:`mambakit.ops.cpu.noalias`): told that no two tiles
overlap, LLVM keeps the accumulators of the N passes in registers.
It computes what :func:`~mambakit.ops.selective_scan.cpu.scan_backward_kernel` computes for the same blocks
(:func:`~.cpu_lanes.lane_blocks`), which stays the backward pass for float64 and time-invariant B or C.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..cpu.kernel_math import FASTMATH, LOG2E, scalar_sigmoid, softplus_with_grad
from ..cpu.noalias import njit_noalias
from .cpu_lanes import LANES, _exp2_float32


@njit(nogil=True, cache=True)
def scan_backward_lanes_kernel(u, delta, A, Bk, Ck, D, z, bias, starts, softplus, b_sel, dpg_b, c_b_sel,
                               dpg_c, chunk, blocks, first_block, end_block, zero, states, dout,
                               dlast, du, ddelta, dz, dh0, dA_part, dB_part, dC_part, dD_part, dbias_part):
    """Gradients for the blocks ``first_block <= i < end_block`` of ``blocks`` (rows (b, d0, d1)); the
    arguments as :func:`~.cpu.scan_backward_kernel`'s (dA_part, dB_part, dC_part, dD_part, dbias_part: this
    thread's partial sums). Allocates the scratch tiles and hands them to :func:`_backward_blocks`."""
    N, lanes, dtype = A.shape[1], LANES, u.dtype
    per_n = (np.empty((N, lanes), dtype), np.empty((N, lanes), dtype), np.empty((N, lanes), dtype),
             np.empty((N, lanes), dtype), np.empty((N, lanes), dtype))
    per_step_n = (np.empty((chunk, N, lanes), dtype), np.empty((chunk, N, lanes), dtype))
    per_step = (np.empty((chunk, lanes), dtype), np.empty((chunk, lanes), dtype),
                np.empty((chunk, lanes), dtype), np.empty((chunk, lanes), dtype),
                np.empty((chunk, lanes), dtype), np.empty((chunk, lanes), dtype),
                np.empty((chunk, lanes), dtype))
    per_row = (np.empty((lanes, chunk), dtype), np.empty((lanes, chunk), dtype),
               np.empty((lanes, chunk), dtype), np.empty((lanes, chunk), dtype),
               np.empty((lanes, chunk), dtype), np.empty((lanes, chunk), dtype),
               np.empty((lanes, chunk), dtype))
    _backward_blocks(u, delta, A, Bk, Ck, D, z, bias, starts, softplus, b_sel, dpg_b, c_b_sel, dpg_c, chunk,
                     blocks, first_block, end_block, zero, states, dout, dlast, du, ddelta, dz, dh0, dA_part,
                     dB_part, dC_part, dD_part, dbias_part, per_n, per_step_n, per_step, per_row)


# Every array it writes is its own (the outputs are fresh, the tiles its wrapper's), so it may be compiled
# noalias: measured, the lane backward took 14% less time than with the tiles allocated here.
@njit_noalias(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def _backward_blocks(u, delta, A, Bk, Ck, D, z, bias, starts, softplus, b_sel, dpg_b, c_b_sel, dpg_c, chunk,
                     blocks, first_block, end_block, zero, states, dout, dlast, du, ddelta, dz, dh0, dA_part,
                     dB_part, dC_part, dD_part, dbias_part, per_n, per_step_n, per_step, per_row):
    """:func:`scan_backward_lanes_kernel`, with its scratch tiles as four tuples of arrays: (N, lanes),
    (chunk, N, lanes), step-major (chunk, lanes) and channel-major (lanes, chunk)."""
    A2, Ar, h, dh, dA = per_n         # A·log2(e) (the decay's exponent in base 2), A, h, its gradient, dA
    E, Q = per_step_n                 # the decays, walking back the states' gradients G; exp(dt_t A) h_{t-1}
    # dt, dt·u, u, the gradient of the ungated y; sum_n G·Q·A then d(dt); sum_n G·B; <C_t, h_t> for dz
    dt_t, x_t, u_t, dy_t, ddt_t, gb_t, yc_t = per_step
    # channel-major rows: dt; d(dt) then d(delta); d dt / d delta; sigmoid(z); dy; sum_n G·B; <C, h>
    r_dt, r_ddt, r_dtg, r_sig, r_dy, r_gb, r_yc = per_row
    L = u.shape[2]
    N = A.shape[1]
    lanes = LANES   # compiled in, as in the forward kernel
    n_chunks = (L + chunk - 1) // chunk
    has_D, has_z, has_bias, has_dh0 = D.shape[0] > 0, z.shape[0] > 0, bias.shape[0] > 0, dh0.shape[0] > 0
    has_starts = starts.shape[0] > 0
    for block in range(first_block, end_block):
        b, d0, width = blocks[block, 0], blocks[block, 1], blocks[block, 2] - blocks[block, 1]
        if width > lanes:
            raise ValueError("blocks: a block wider than LANES channels")
        Bs = Bk[b * b_sel, d0 // dpg_b]
        Cs = Ck[b * c_b_sel, d0 // dpg_c]
        dBs = dB_part[b * b_sel, d0 // dpg_b]
        dCs = dC_part[b * c_b_sel, d0 // dpg_c]
        for n in range(N):
            for w in range(lanes):
                a = A[d0 + w, n] if w < width else zero
                Ar[n, w] = a
                A2[n, w] = a * LOG2E
        dA[:, :] = zero
        dh[:, :] = zero
        for w in range(width):
            for n in range(N):
                dh[n, w] = dlast[b, d0 + w, n]
        dt_t[:, :] = zero
        x_t[:, :] = zero
        u_t[:, :] = zero
        dy_t[:, :] = zero
        for c in range(n_chunks - 1, -1, -1):
            t0 = c * chunk
            T = min(L, t0 + chunk) - t0
            # the chunk's span of each row, indexed from 0: an index t0 + t would keep LLVM from vectorising
            # the loops over t (numba's wraparound check on an index it cannot prove non-negative)
            span = slice(t0, t0 + T)
            for w in range(width):   # stage the chunk along each channel's row (vectorised), then step-major
                bias_d = bias[d0 + w] if has_bias else zero
                drow, grow = delta[b, d0 + w, span], dout[b, d0 + w, span]
                if softplus:
                    for t in range(T):
                        v = drow[t] + bias_d
                        r_dt[w, t], r_dtg[w, t] = softplus_with_grad(v)
                else:
                    for t in range(T):
                        r_dt[w, t] = drow[t] + bias_d
                if has_z:
                    zrow = z[b, d0 + w, span]
                    for t in range(T):
                        zt = zrow[t]
                        sg = scalar_sigmoid(zt)
                        r_sig[w, t] = sg
                        r_dy[w, t] = grow[t] * zt * sg
                else:
                    for t in range(T):
                        r_dy[w, t] = grow[t]
            for w in range(width):   # the rows into step-major tiles
                urow = u[b, d0 + w, span]
                for t in range(T):
                    dtv = r_dt[w, t]
                    dt_t[t, w] = dtv
                    u_t[t, w] = urow[t]
                    x_t[t, w] = dtv * urow[t]
                    dy_t[t, w] = r_dy[w, t]
            for w in range(lanes):
                for n in range(N):
                    h[n, w] = states[b, d0 + w, c, n] if w < width else zero
            for t in range(T):   # recompute the chunk: its decays and decayed states
                tb = t0 + t
                cut = has_starts and starts[b, tb]
                for n in range(N):
                    bn = Bs[tb, n]
                    for w in range(lanes):
                        e = _exp2_float32(dt_t[t, w] * A2[n, w])
                        e = zero if cut else e
                        q = e * h[n, w]
                        E[t, n, w] = e
                        Q[t, n, w] = q
                        h[n, w] = q + x_t[t, w] * bn
            for t in range(T - 1, -1, -1):   # walking back: the gradient G of each state, over its decay
                cn_row = Cs[t0 + t]
                for n in range(N):
                    cn = cn_row[n]
                    for w in range(lanes):
                        g = dh[n, w] + dy_t[t, w] * cn
                        dh[n, w] = g * E[t, n, w]   # ... carried to h_{t-1}
                        E[t, n, w] = g
            for t in range(T):   # what the gradients give, step by step (h_t = Q_t + x_t B_t)
                tb = t0 + t
                for w in range(lanes):
                    ddt_t[t, w] = zero
                    gb_t[t, w] = zero
                    yc_t[t, w] = zero
                cb = zero
                dyx = zero
                for w in range(lanes):
                    dyx += dy_t[t, w] * x_t[t, w]
                for n in range(N):
                    bn, cn = Bs[tb, n], Cs[tb, n]
                    cb += cn * bn
                    sum_b = zero
                    sum_c = zero
                    for w in range(lanes):
                        g = E[t, n, w]
                        q = Q[t, n, w]
                        gq = g * q
                        ddt_t[t, w] += gq * Ar[n, w]
                        gb_t[t, w] += g * bn
                        dA[n, w] += gq * dt_t[t, w]
                        yc_t[t, w] += cn * q
                        sum_b += g * x_t[t, w]
                        sum_c += dy_t[t, w] * q
                    dBs[tb, n] += sum_b
                    dCs[tb, n] += sum_c + bn * dyx
                for w in range(lanes):
                    ddt_t[t, w] += gb_t[t, w] * u_t[t, w]
                    yc_t[t, w] += cb * x_t[t, w]
            for w in range(width):   # back to channel rows: d(dt), sum_n G·B and <C, h>
                for t in range(T):
                    r_ddt[w, t] = ddt_t[t, w]
                    r_gb[w, t] = gb_t[t, w]
                    r_yc[w, t] = yc_t[t, w]
            for w in range(width):   # du, d(delta), dz and the D and bias sums along each channel's row
                D_d = D[d0 + w] if has_D else zero
                urow = u[b, d0 + w, span]
                du_row, dd_row = du[b, d0 + w, span], ddelta[b, d0 + w, span]
                if softplus:
                    for t in range(T):
                        r_ddt[w, t] *= r_dtg[w, t]
                sum_D = zero
                sum_bias = zero
                for t in range(T):
                    dd = r_ddt[w, t]
                    dd_row[t] = dd
                    du_row[t] = r_gb[w, t] * r_dt[w, t] + r_dy[w, t] * D_d
                    sum_D += r_dy[w, t] * urow[t]
                    sum_bias += dd
                if has_D:
                    dD_part[d0 + w] += sum_D
                if has_bias:
                    dbias_part[d0 + w] += sum_bias
                if has_z:
                    grow, zrow, dz_row = dout[b, d0 + w, span], z[b, d0 + w, span], dz[b, d0 + w, span]
                    for t in range(T):
                        zt = zrow[t]
                        sg = r_sig[w, t]
                        dz_row[t] = (grow[t] * (r_yc[w, t] + D_d * urow[t])
                                          * (sg + zt * (sg - sg * sg)))
        for w in range(width):
            d = d0 + w
            for n in range(N):
                dA_part[d, n] += dA[n, w]
            if has_dh0:
                for n in range(N):
                    dh0[b, d, n] = dh[n, w]
