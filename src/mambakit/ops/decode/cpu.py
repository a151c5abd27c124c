"""The fused decoding step (numba): conv-window shift, convolution + SiLU, x_proj, dt_proj + softplus,
the state update and the gated output, for each batch row in one pass with everything in cache.

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
from ..cpu.kernel_math import FASTMATH, scalar_exp, scalar_sigmoid, scalar_softplus
from ..cpu.threads import run_blocks, split_pairs
from . import fused_step_applies


@njit(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def _decode_rows(xz, conv_state, ssm_state, conv_w, conv_b, x_proj_w, dt_w, dt_b, A, D, first, end, zero,
                 out, xc, dbl):
    """Rows ``first <= b < end``; xc (d_inner,) and dbl (dt_rank + 2N,) are the row's scratch."""
    d_inner, W = conv_w.shape
    N = A.shape[1]
    R = dt_w.shape[1]
    has_bias, has_D = conv_b.shape[0] > 0, D.shape[0] > 0
    for b in range(first, end):
        window = conv_state[b]
        for d in range(d_inner):   # shift the window, take the new input, convolve, SiLU
            acc = conv_b[d] if has_bias else zero
            for k in range(W - 1):
                v = window[d, k + 1]
                window[d, k] = v
                acc += conv_w[d, k] * v
            v = xz[b, d]
            window[d, W - 1] = v
            acc += conv_w[d, W - 1] * v
            xc[d] = acc * scalar_sigmoid(acc)
        for j in range(R + 2 * N):   # x_proj: (R + 2N, d_inner) @ xc
            acc = zero
            row = x_proj_w[j]
            for d in range(d_inner):
                acc += row[d] * xc[d]
            dbl[j] = acc
        h = ssm_state[b]
        for d in range(d_inner):
            v = dt_b[d]
            for r in range(R):
                v += dt_w[d, r] * dbl[r]
            dt = scalar_softplus(v)
            x = xc[d]
            dx = dt * x
            acc = zero
            for n in range(N):
                hn = scalar_exp(dt * A[d, n]) * h[d, n] + dx * dbl[R + n]
                h[d, n] = hn
                acc += hn * dbl[R + N + n]
            if has_D:
                acc += D[d] * x
            zt = xz[b, d_inner + d]
            out[b, d] = acc * (zt * scalar_sigmoid(zt))


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
              x_proj_weight.detach().contiguous().numpy(), dt_proj_weight.detach().contiguous().numpy(),
              dt_proj_bias.detach().contiguous().numpy(), A.detach().contiguous().numpy(),
              empty if D is None else D.detach().contiguous().numpy()]
    out = torch.empty(batch, d_inner, dtype=xz.dtype)
    out_np, zero = out.numpy(), np_dtype(0)

    def block(_, first, end):
        xc, dbl = np.empty(d_inner, dtype=np_dtype), np.empty(R + 2 * N, dtype=np_dtype)
        _decode_rows(*arrays, *params, first, end, zero, out_np, xc, dbl)

    run_blocks(block, *split_pairs(batch, batch * d_inner * (N + R + W) * 8))
    return out
