"""The fused CPU scan's float32 backward kernel for input-dependent B and C, vectorised across channels.

The counterpart of :mod:`.cpu_lanes`' forward: a block of up to ``LANES`` channels of one batch row that
share one group of B and one of C walks the chunks in reverse with its states as (N, lanes) tiles. Per chunk
it recomputes the states from the saved chunk start (decays by the same 2^(dt·A·log2 e) as the forward),
then walks the chunk back,

    G[n, :]   = dh[n, :] + dy_t[:] · C[t, n]          (the gradient of h_t)
    dh[n, :]  = G[n, :] ⊙ exp(dt_t A)[n, :]            (... carried to h_{t-1})

turning each G at once into the inputs' gradients with lane-wide operations: d(dt), du and dA per channel
without any sum across lanes, and dB[t, n], dC[t, n] (shared by the block's channels) as one sum over the
lanes per (t, n), written once per block instead of once per channel. It computes what
:func:`~mambakit.ops.selective_scan.cpu.scan_backward_kernel` computes for the same blocks
(:func:`~.cpu_lanes.lane_blocks`), which stays the backward pass for float64 and time-invariant B or C.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..cpu.kernel_math import FASTMATH, LOG2E, scalar_sigmoid, scalar_softplus, scalar_softplus_grad
from .cpu_lanes import _exp2_float32


@njit(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def scan_backward_lanes_kernel(u, delta, A, Bk, Ck, D, z, bias, starts, softplus, b_sel, dpg_b, c_b_sel,
                               dpg_c, chunk, lanes, blocks, first_block, end_block, zero, states, dout,
                               dlast, du, ddelta, dz, dh0, dA_part, dB_part, dC_part, dD_part, dbias_part):
    """Gradients for the blocks ``first_block <= i < end_block`` of ``blocks`` (rows (b, d0, d1)); the
    arguments as :func:`~.cpu.scan_backward_kernel`'s (dA_part, dB_part, dC_part, dD_part, dbias_part: this
    thread's partial sums)."""
    L = u.shape[2]
    N = A.shape[1]
    n_chunks = (L + chunk - 1) // chunk
    has_D, has_z, has_bias, has_dh0 = D.shape[0] > 0, z.shape[0] > 0, bias.shape[0] > 0, dh0.shape[0] > 0
    has_starts = starts.shape[0] > 0
    A2 = np.empty((N, lanes), dtype=u.dtype)          # A·log2(e): the decay's exponent in base 2
    Ar = np.empty((N, lanes), dtype=u.dtype)          # A itself, for the gradients
    H = np.empty((chunk + 1, N, lanes), dtype=u.dtype)
    E = np.empty((chunk, N, lanes), dtype=u.dtype)
    dh = np.empty((N, lanes), dtype=u.dtype)
    dA = np.empty((N, lanes), dtype=u.dtype)
    dt_t = np.empty((chunk, lanes), dtype=u.dtype)    # step-major tiles of the chunk
    x_t = np.empty((chunk, lanes), dtype=u.dtype)     # dt · u
    u_t = np.empty((chunk, lanes), dtype=u.dtype)
    dy_t = np.empty((chunk, lanes), dtype=u.dtype)    # gradient of the ungated y
    ddt_t = np.empty((chunk, lanes), dtype=u.dtype)
    du_t = np.empty((chunk, lanes), dtype=u.dtype)
    yc_t = np.empty((chunk, lanes), dtype=u.dtype)    # <C_t, h_t>, for dz
    acc = np.empty(lanes, dtype=u.dtype)
    acc2 = np.empty(lanes, dtype=u.dtype)
    dtg_t = np.empty((chunk, lanes), dtype=u.dtype)   # d dt / d delta (softplus)
    for block in range(first_block, end_block):
        b, d0, width = blocks[block, 0], blocks[block, 1], blocks[block, 2] - blocks[block, 1]
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
            for w in range(width):   # stage the chunk: dt, dt·u, u and the gradient of y, per channel row
                bias_d = bias[d0 + w] if has_bias else zero
                drow, urow, grow = delta[b, d0 + w], u[b, d0 + w], dout[b, d0 + w]
                for t in range(T):
                    v = drow[t0 + t] + bias_d
                    dtv = scalar_softplus(v) if softplus else v
                    if softplus:
                        dtg_t[t, w] = scalar_softplus_grad(v)
                    dt_t[t, w] = dtv
                    u_t[t, w] = urow[t0 + t]
                    x_t[t, w] = dtv * urow[t0 + t]
                    if has_z:
                        zt = z[b, d0 + w, t0 + t]
                        dy_t[t, w] = grow[t0 + t] * zt * scalar_sigmoid(zt)
                    else:
                        dy_t[t, w] = grow[t0 + t]
            for w in range(lanes):
                for n in range(N):
                    H[0, n, w] = states[b, d0 + w, c, n] if w < width else zero
            for t in range(T):   # recompute the chunk's states (and <C, h> where z needs it)
                tb = t0 + t
                cut = has_starts and starts[b, tb]
                for w in range(lanes):
                    yc_t[t, w] = zero
                for n in range(N):
                    bn, cn = Bs[tb, n], Cs[tb, n]
                    for w in range(lanes):
                        e = _exp2_float32(dt_t[t, w] * A2[n, w])
                        e = zero if cut else e
                        E[t, n, w] = e
                        hn = e * H[t, n, w] + x_t[t, w] * bn
                        H[t + 1, n, w] = hn
                        yc_t[t, w] += cn * hn
            for t in range(T - 1, -1, -1):   # walking back: each state's gradient, then what it gives
                tb = t0 + t
                for w in range(lanes):
                    acc[w] = zero    # d(dt)
                    acc2[w] = zero   # sum_n G·B
                for n in range(N):
                    bn, cn = Bs[tb, n], Cs[tb, n]
                    sum_b = zero
                    sum_c = zero
                    for w in range(lanes):
                        g = dh[n, w] + dy_t[t, w] * cn          # the gradient of h_t
                        e = E[t, n, w]
                        gHE = g * H[t, n, w] * e
                        acc[w] += gHE * Ar[n, w] + g * bn * u_t[t, w]
                        acc2[w] += g * bn
                        dA[n, w] += gHE * dt_t[t, w]
                        sum_b += g * x_t[t, w]
                        sum_c += dy_t[t, w] * H[t + 1, n, w]
                        dh[n, w] = g * e                        # ... carried to h_{t-1}
                    dBs[tb, n] += sum_b
                    dCs[tb, n] += sum_c
                for w in range(lanes):
                    ddt_t[t, w] = acc[w]
                    du_t[t, w] = acc2[w] * dt_t[t, w]
            for w in range(width):   # back to the channel rows: du, d(delta), dz
                D_d = D[d0 + w] if has_D else zero
                du_row, dd_row = du[b, d0 + w], ddelta[b, d0 + w]
                for t in range(T):
                    dd = ddt_t[t, w]
                    dd_row[t0 + t] = dd * dtg_t[t, w] if softplus else dd
                    du_row[t0 + t] = du_t[t, w] + dy_t[t, w] * D_d
                if has_z:
                    grow, zrow, urow, dz_row = dout[b, d0 + w], z[b, d0 + w], u[b, d0 + w], dz[b, d0 + w]
                    for t in range(T):
                        zt = zrow[t0 + t]
                        s = scalar_sigmoid(zt)
                        dz_row[t0 + t] = (grow[t0 + t] * (yc_t[t, w] + D_d * urow[t0 + t])
                                          * (s + zt * (s - s * s)))
        for w in range(width):
            d = d0 + w
            for n in range(N):
                dA_part[d, n] += dA[n, w]
            if has_dh0:
                for n in range(N):
                    dh0[b, d, n] = dh[n, w]
            if has_D:
                s = zero
                urow, dd_src = u[b, d], dout[b, d]
                for t in range(L):
                    zt = z[b, d, t] if has_z else zero
                    gy = dd_src[t] * zt * scalar_sigmoid(zt) if has_z else dd_src[t]
                    s += gy * urow[t]
                dD_part[d] += s
            if has_bias:
                s = zero
                dd_row = ddelta[b, d]
                for t in range(L):
                    s += dd_row[t]
                dbias_part[d] += s
