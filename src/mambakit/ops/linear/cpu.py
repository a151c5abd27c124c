"""The fused low-precision linear map for a few rows of x (decoding): each weight row is read once, widened
to float32 in registers (bf16: its 16 bits shifted into a float32's high half; int8: converted, the
channel's scale applied to the sum) and dotted with every row of x. Memory traffic is the weight's own
bytes, half (bf16) or a quarter (int8) of float32's; the output channels are split over the threads."""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from ...errors import DeviceError
from ..cpu.kernel_math import FASTMATH, widen_weight, zero_of
from ..cpu.prefetch import CACHE_LINE, prefetch, prefetch_distance
from ..cpu.threads import run_blocks, split_pairs
from .ref import check_lowp_args

MAX_ROWS = 16  # rows of x up to which the kernel beats dequantize + matmul (a decode step has the batch)


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def linear_rows(w, scales, bias, x, first, end, out, out_offset):
    """out[m, out_offset + r] = scale[r]·Σ_k w[r, k]·x[m, k] + bias[r] for rows first <= r < end of w
    (float32 / float64, bf16 bits as uint16, or int8; an empty ``scales`` or ``bias`` is left out)."""
    M, K = x.shape
    has_scale, has_bias = scales.shape[0] > 0, bias.shape[0] > 0
    ahead, row_bytes = prefetch_distance(w), K * w.itemsize
    for r in range(first, end):
        row = w[r]
        if ahead > 0:   # the row `ahead` bytes on, within this call's rows
            start = r * row_bytes + ahead
            for offset in range(start, min(start + row_bytes, end * row_bytes), CACHE_LINE):
                prefetch(w, offset)
        for m in range(M):
            xm = x[m]
            acc = zero_of(xm[0])
            for k in range(K):
                acc += widen_weight(row[k]) * xm[k]
            if has_scale:
                acc *= scales[r]
            if has_bias:
                acc += bias[r]
            out[m, out_offset + r] = acc


def kernel_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the fused kernel runs these arguments: CPU, at most MAX_ROWS rows, x not needing a gradient
    (the kernel is forward only)."""
    rows = x.numel() // max(1, x.shape[-1])
    needs_grad = torch.is_grad_enabled() and x.requires_grad
    return x.device.type == "cpu" and weight.device.type == "cpu" and rows <= MAX_ROWS and not needs_grad


def kernel_arrays(weight: torch.Tensor, scales: torch.Tensor | None,
                  bias: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The kernel's views of a weight (uint16 bits for bf16, int8), its scales and bias (float32; empty
    when absent). A layer computes them once and passes them to :func:`run_kernel` at every call."""
    w = weight.detach().contiguous()
    w_np = w.view(torch.int16).numpy().view(np.uint16) if w.dtype == torch.bfloat16 else w.numpy()
    s_np = None if scales is None else scales.detach().float().contiguous().numpy()
    b_np = np.empty(0, np.float32) if bias is None else bias.detach().float().contiguous().numpy()
    return w_np, s_np, b_np


def run_kernel(x: torch.Tensor, w_np: np.ndarray, s_np: np.ndarray | None, b_np: np.ndarray) -> torch.Tensor:
    """x (..., in) on the CPU -> (..., out) in x's dtype, with arrays from :func:`kernel_arrays`; the
    arguments are not checked again."""
    lead, K = x.shape[:-1], x.shape[-1]
    N = w_np.shape[0]
    xs = x.detach().reshape(-1, K).to(torch.float32).contiguous()
    out = torch.empty(xs.shape[0], N, dtype=torch.float32)
    xs_np, out_np = xs.numpy(), out.numpy()
    s_np = np.empty(0, np.float32) if s_np is None else s_np

    def block(_, first, end):
        linear_rows(w_np, s_np, b_np, xs_np, first, end, out_np, 0)

    run_blocks(block, *split_pairs(N, xs.shape[0] * N * K))
    return out.reshape(*lead, N).to(x.dtype)


def linear_lowp_cpu(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """As :func:`~.ref.linear_lowp_ref` (float32 arithmetic; result in x's dtype), for CPU tensors."""
    check_lowp_args(x, weight, scales, bias)
    if x.device.type != "cpu" or weight.device.type != "cpu":
        raise DeviceError(f"x: the fused low-precision linear runs on the CPU, got {x.device}")
    return run_kernel(x, *kernel_arrays(weight, scales, bias))
