"""The fused decoding step (numba): conv-window shift, convolution + SiLU, x_proj, dt_proj + softplus,
the state update and the gated output, for each batch row in one pass with everything in cache. Its phases
(:func:`conv_rows`, x_proj by ``linear_rows``, :func:`scan_rows`) are also those of the fused stack
(:mod:`.stack_cpu`), which runs them for blocks of channels on several threads.

Same map as :func:`~.ref.mamba_decode_step_ref`. The weights are read once per row; at batch 1 the kernel is
bound by reading x_proj's and dt_proj's weights (small next to in_proj and out_proj, which stay torch
matmuls). Rows are split over the torch threads when there are several.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from ..._checks import check_shape, check_tensor
from ...errors import DeviceError, DTypeError
from ..cpu.kernel_math import FASTMATH, scalar_exp, scalar_sigmoid, scalar_softplus, zero_of
from ..cpu.threads import run_blocks, split_pairs
from ..linear.cpu import linear_rows
from . import fused_step_applies


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def conv_rows(xz, conv_state, conv_w, conv_b, first, end, xc):
    """Channels first <= d < end of every row m: shift the conv window, take x = xz[m, d], convolve, SiLU
    into xc[m, d]."""
    W = conv_w.shape[1]
    has_bias = conv_b.shape[0] > 0
    for m in range(xz.shape[0]):
        window = conv_state[m]
        for d in range(first, end):
            acc = conv_b[d] if has_bias else zero_of(xz[m, d])
            for k in range(W - 1):
                v = window[d, k + 1]
                window[d, k] = v
                acc += conv_w[d, k] * v
            v = xz[m, d]
            window[d, W - 1] = v
            acc += conv_w[d, W - 1] * v
            xc[m, d] = acc * scalar_sigmoid(acc)


@njit(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def scan_rows(xz, xc, dbl, ssm_state, dt_wT, dt_b, A, D, first, end, y):
    """Channels first <= d < end: Δ = softplus(dt_proj), the state update, C·h + D·x, the SiLU gate.
    dt_wT is dt_proj's weight transposed, (dt_rank, d_inner): contiguous (the fused stack keeps such a copy),
    Δ is made for the whole block of channels at once in vector registers; a transposed view works too. Δ is
    kept in y until the channel's output replaces it."""
    d_inner, N = A.shape
    R = dt_wT.shape[0]
    has_D = D.shape[0] > 0
    M = xz.shape[0]
    # the channel loops run over slices from 0: indexed from ``first`` they would not vectorise (numba's
    # negative-index wraparound check on an index LLVM cannot prove non-negative), 7x slower here
    channels = end - first
    bias = dt_b[first:end]
    for m in range(M):
        dt = y[m, first:end]
        for i in range(channels):
            dt[i] = bias[i]
        for r in range(R):
            c = dbl[m, r]
            w = dt_wT[r, first:end]
            for i in range(channels):
                dt[i] += w[i] * c
        for i in range(channels):
            dt[i] = scalar_softplus(dt[i])
        B, C = dbl[m, R:R + N], dbl[m, R + N:]
        for d in range(first, end):
            x = xc[m, d]
            delta = dt[d - first]
            dx = delta * x
            h, a = ssm_state[m, d], A[d]
            acc = zero_of(x)
            for n in range(N):
                hn = scalar_exp(delta * a[n]) * h[n] + dx * B[n]
                h[n] = hn
                acc += hn * C[n]
            if has_D:
                acc += D[d] * x
            zt = xz[m, d_inner + d]
            y[m, d] = acc * (zt * scalar_sigmoid(zt))


@njit(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def _decode_rows(xz, conv_state, ssm_state, conv_w, conv_b, x_proj_w, dt_wT, dt_b, A, D, first, end, out, xc,
                 dbl):
    """Rows ``first <= b < end``, all channels; xc (rows, d_inner), dbl (rows, dt_rank + 2N): scratch."""
    d_inner = A.shape[0]
    rows = slice(first, end)
    conv_rows(xz[rows], conv_state[rows], conv_w, conv_b, 0, d_inner, xc)
    linear_rows(x_proj_w, dt_b[:0], dt_b[:0], xc, 0, x_proj_w.shape[0], dbl, 0)
    scan_rows(xz[rows], xc, dbl, ssm_state[rows], dt_wT, dt_b, A, D, 0, d_inner, out[rows])


def mamba_decode_step_cpu(xz, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                          dt_proj_bias, A, D) -> torch.Tensor:
    """The fused kernel; arguments and result as :func:`~.ref.mamba_decode_step_ref` (states updated in
    place), for CPU tensors of one dtype (float32 or float64) outside autograd."""
    check_tensor("xz", xz, ndim=2)
    batch, two_d = xz.shape
    d_inner, W = conv_weight.shape
    N = A.shape[1]
    R = dt_proj_weight.shape[1]
    check_shape("xz", xz, (batch, 2 * d_inner), "(batch, 2·d_inner)")
    check_shape("conv_state", conv_state, (batch, d_inner, W), "(batch, d_inner, d_conv)")
    check_shape("ssm_state", ssm_state, (batch, d_inner, N), "(batch, d_inner, N)")
    check_shape("x_proj_weight", x_proj_weight, (R + 2 * N, d_inner), "(dt_rank + 2N, d_inner)")
    check_shape("dt_proj_weight", dt_proj_weight, (d_inner, R), "(d_inner, dt_rank)")
    check_shape("dt_proj_bias", dt_proj_bias, (d_inner,))
    check_shape("A", A, (d_inner, N), "(d_inner, N)")
    if not fused_step_applies(xz, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
                              dt_proj_weight, dt_proj_bias, A, D):
        if any(t.device.type != "cpu" for t in (xz, conv_state, ssm_state)):
            raise DeviceError(f"xz: the fused decode step runs on the CPU, got {xz.device}")
        raise DTypeError("xz: the fused decode step needs CPU tensors of one dtype (float32 or float64) "
                         f"outside autograd; got xz {xz.dtype}, conv_state {conv_state.dtype}, ssm_state "
                         f"{ssm_state.dtype}, A {A.dtype}")
    for name, t in (("conv_state", conv_state), ("ssm_state", ssm_state)):
        if not t.is_contiguous():
            raise DTypeError(f"{name}: the fused decode step updates it in place and needs it contiguous")
    np_dtype = np.float32 if xz.dtype == torch.float32 else np.float64
    empty = np.empty(0, dtype=np_dtype)
    arrays = [xz.detach().contiguous().numpy(), conv_state.detach().numpy(), ssm_state.detach().numpy()]
    params = [conv_weight.detach().contiguous().numpy(),
              empty if conv_bias is None else conv_bias.detach().contiguous().numpy(),
              x_proj_weight.detach().contiguous().numpy(), dt_proj_weight.detach().contiguous().numpy().T,
              dt_proj_bias.detach().contiguous().numpy(), A.detach().contiguous().numpy(),
              empty if D is None else D.detach().contiguous().numpy()]
    out = torch.empty(batch, d_inner, dtype=xz.dtype)
    out_np = out.numpy()

    def block(_, first, end):
        xc = np.empty((end - first, d_inner), dtype=np_dtype)
        dbl = np.empty((end - first, R + 2 * N), dtype=np_dtype)
        _decode_rows(*arrays, *params, first, end, out_np, xc, dbl)

    run_blocks(block, *split_pairs(batch, batch * d_inner * (N + R + W) * 8))
    return out
