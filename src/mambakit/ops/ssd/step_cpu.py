"""One SSD step on the CPU in one pass over the state (numba): for each (batch row, head), the decay
exp(Δ·A), H ← decay·H + Δ·x Bᵀ and y = H C, with the state read and written once. The torch reference
(:func:`~.ref.ssd_state_update_ref`) makes five passes over the (batch, heads, headdim, N) state in
separate operations, which a batch-1 decoding step pays for in every Mamba-2 layer."""

from __future__ import annotations

import torch
from numba import njit

from ..cpu.kernel_math import FASTMATH, scalar_exp
from ..cpu.threads import run_blocks, split_pairs
from .common import skip_and_gate, step_sizes
from .ref import check_step_args


@njit(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def _step_pairs(state, x, delta, A, B, C, heads_per_group, first, end, y):
    heads, headdim, N = state.shape[1], state.shape[2], state.shape[3]
    for pair in range(first, end):
        b = pair // heads
        h = pair - b * heads
        g = h // heads_per_group
        d = delta[b, h]
        decay = scalar_exp(d * A[h])
        Bv, Cv = B[b, g], C[b, g]
        for p in range(headdim):
            dx = d * x[b, h, p]
            row = state[b, h, p]
            acc = decay - decay   # zero of the dtype
            for n in range(N):
                v = decay * row[n] + dx * Bv[n]
                row[n] = v
                acc += v * Cv[n]
            y[b, h, p] = acc


def step_kernel_applies(state: torch.Tensor, x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """CPU tensors, state contiguous in x's compute dtype (float32 or float64), no autograd."""
    tensors = [state, x, *(t for t in others if t is not None)]
    if any(t.device.type != "cpu" for t in tensors) or not state.is_contiguous():
        return False
    if state.dtype not in (torch.float32, torch.float64) or x.dtype != state.dtype:
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def ssd_state_update_cpu(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                         dt_limit=(0.0, float("inf"))) -> torch.Tensor:
    """As :func:`~.ref.ssd_state_update_ref` (``state`` updated in place), for CPU tensors where
    :func:`step_kernel_applies`."""
    check_step_args(state, x, dt, A, B, C, D, z, dt_bias, dt_limit)
    batch, heads, headdim = x.shape
    dtype = state.dtype
    delta = step_sizes(dt, dt_bias, dt_softplus, dt_limit, dtype).contiguous()   # (batch, heads)
    groups = B.shape[1]
    arrays = [t.detach().to(dtype).contiguous().numpy() for t in (x, delta, A, B, C)]
    y = torch.empty(batch, heads, headdim, dtype=dtype)
    state_np, y_np = state.detach().numpy(), y.numpy()

    def block(_, first, end):
        _step_pairs(state_np, *arrays, heads // groups, first, end, y_np)

    run_blocks(block, *split_pairs(batch * heads, batch * heads * headdim * state.shape[3]))
    return skip_and_gate(y, x, D, z)
