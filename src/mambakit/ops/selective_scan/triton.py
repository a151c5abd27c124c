"""Fused selective scan in Triton (backend ``"triton"``), for CUDA GPUs.

The same algorithm as the fused CPU backend (:mod:`mambakit.ops.selective_scan.cpu`): one program per
(batch row, block of BLOCK_D channels) keeps the (BLOCK_D, N) state in registers while it walks L (starting
from zeros or the given initial state), writes y, the last state and the state at every chunk boundary; the
backward program walks the chunks in reverse, recomputing each chunk's states from its saved start into a
(batch, dim, CHUNK, N) scratch buffer, then walks the chunk backwards, ending with the gradient of the initial
state (that of the state before step 0). Gradients of B and C (shared by channels) and of A (shared by batch
rows) are summed with atomic adds. The bias, softplus, D and the SiLU(z) gate stay in torch
(:mod:`mambakit.ops.selective_scan.common`).

Triton is optional: without it this module still imports and ``selective_scan_triton`` raises a
ConfigError saying so. On machines without a GPU the kernels run under the Triton interpreter
(``TRITON_INTERPRET=1`` set before Triton is imported), which is how the tests check them.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError
from .chunked import _chunked_core
from .common import kernel_core, run_real_scan

try:
    import triton
    import triton.language as tl
except ImportError:  # the backend reports itself unavailable
    triton = None

CHUNK = 64
BLOCK_D = 16

if triton is not None:

    @triton.jit
    def _forward_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, y_ptr, states_ptr, last_ptr,
                        dim, L, N, n_chunks,
                        sB0, sB1, sB2, dpg_b, sC0, sC1, sC2, dpg_c,
                        CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                        HAS_H0: tl.constexpr):
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        md = d < dim
        m2 = md[:, None] & (n < N)[None, :]
        A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0)
        if HAS_H0:   # h0_ptr: the initial state (batch, dim, N); otherwise unused
            h = tl.load(h0_ptr + (b * dim + d)[:, None] * N + n[None, :], mask=m2, other=0.0)
        else:
            h = tl.zeros((BLOCK_D, BLOCK_N), dtype=A.dtype)
        row = (b * dim + d) * L
        B_rows = B_ptr + b * sB0 + (d // dpg_b)[:, None] * sB1 + n[None, :]
        C_rows = C_ptr + b * sC0 + (d // dpg_c)[:, None] * sC1 + n[None, :]
        state_rows = states_ptr + (b * dim + d)[:, None] * n_chunks * N + n[None, :]
        for t in range(L):
            if t % CHUNK == 0:
                tl.store(state_rows + (t // CHUNK) * N, h, mask=m2)
            ut = tl.load(u_ptr + row + t, mask=md, other=0.0)
            dtt = tl.load(dt_ptr + row + t, mask=md, other=0.0)
            Bt = tl.load(B_rows + t * sB2, mask=m2, other=0.0)
            Ct = tl.load(C_rows + t * sC2, mask=m2, other=0.0)
            h = tl.exp(dtt[:, None] * A) * h + (dtt * ut)[:, None] * Bt
            tl.store(y_ptr + row + t, tl.sum(h * Ct, axis=1), mask=md)
        tl.store(last_ptr + (b * dim + d)[:, None] * N + n[None, :], h, mask=m2)

    @triton.jit
    def _backward_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, states_ptr, dy_ptr, dlast_ptr, scratch_ptr,
                         du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dh0_ptr,
                         dim, L, N, n_chunks,
                         sB0, sB1, sB2, dpg_b, sC0, sC1, sC2, dpg_c,
                         CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                         HAS_H0: tl.constexpr):
        b = tl.program_id(0)
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        md = d < dim
        m2 = md[:, None] & (n < N)[None, :]
        A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0)
        row = (b * dim + d) * L
        B_off = b * sB0 + (d // dpg_b)[:, None] * sB1 + n[None, :]
        C_off = b * sC0 + (d // dpg_c)[:, None] * sC1 + n[None, :]
        state_rows = states_ptr + (b * dim + d)[:, None] * n_chunks * N + n[None, :]
        scratch_rows = scratch_ptr + (b * dim + d)[:, None] * CHUNK * N + n[None, :]
        dh = tl.load(dlast_ptr + (b * dim + d)[:, None] * N + n[None, :], mask=m2, other=0.0)
        dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=A.dtype)
        for cc in range(n_chunks):
            c = n_chunks - 1 - cc
            t0 = c * CHUNK
            t1 = tl.minimum(L, t0 + CHUNK)
            h0 = tl.load(state_rows + c * N, mask=m2, other=0.0)
            h = h0
            for t in range(t0, t1):   # recompute the chunk's states from its saved start
                ut = tl.load(u_ptr + row + t, mask=md, other=0.0)
                dtt = tl.load(dt_ptr + row + t, mask=md, other=0.0)
                Bt = tl.load(B_ptr + B_off + t * sB2, mask=m2, other=0.0)
                h = tl.exp(dtt[:, None] * A) * h + (dtt * ut)[:, None] * Bt
                tl.store(scratch_rows + (t - t0) * N, h, mask=m2)
            tl.debug_barrier()
            for k in range(t0, t1):
                t = t1 - 1 - (k - t0)
                i = t - t0
                ut = tl.load(u_ptr + row + t, mask=md, other=0.0)
                dtt = tl.load(dt_ptr + row + t, mask=md, other=0.0)
                g = tl.load(dy_ptr + row + t, mask=md, other=0.0)
                Bt = tl.load(B_ptr + B_off + t * sB2, mask=m2, other=0.0)
                Ct = tl.load(C_ptr + C_off + t * sC2, mask=m2, other=0.0)
                h_t = tl.load(scratch_rows + i * N, mask=m2, other=0.0)
                prev = tl.load(scratch_rows + tl.maximum(i - 1, 0) * N, mask=m2, other=0.0)
                prev = tl.where(i > 0, prev, h0)   # before the chunk's first step: its saved start
                decay = tl.exp(dtt[:, None] * A)
                dhn = dh + g[:, None] * Ct
                tl.atomic_add(dC_ptr + C_off + t * sC2, g[:, None] * h_t, mask=m2)
                w = dhn * prev * decay
                dA_acc += w * dtt[:, None]
                ddt = tl.sum(w * A + dhn * ut[:, None] * Bt, axis=1)
                du = tl.sum(dhn * Bt, axis=1) * dtt
                tl.atomic_add(dB_ptr + B_off + t * sB2, dhn * (dtt * ut)[:, None], mask=m2)
                tl.store(ddt_ptr + row + t, ddt, mask=md)
                tl.store(du_ptr + row + t, du, mask=md)
                dh = dhn * decay
            tl.debug_barrier()
        tl.atomic_add(dA_ptr + d[:, None] * N + n[None, :], dA_acc, mask=m2)
        if HAS_H0:   # after step 0, dh is the gradient of the state before it: the initial state's
            tl.store(dh0_ptr + (b * dim + d)[:, None] * N + n[None, :], dh, mask=m2)


def _strides(Xk: torch.Tensor, index: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """(batch stride, group stride, step stride, channels per group) of a kernel-layout B or C."""
    b_sel, t_sel, per_group = index
    return Xk.stride(0) * b_sel, Xk.stride(1), Xk.stride(2) * t_sel, per_group


class _TritonScan(torch.autograd.Function):
    """(u, dt, A, Bk, Ck, b_index, c_index, h0) -> (y, last_state); h0: the initial state or None."""

    @staticmethod
    def forward(ctx, u, dt, A, Bk, Ck, b_index, c_index, h0=None):
        batch, dim, L = u.shape
        N = A.shape[1]
        n_chunks = triton.cdiv(L, CHUNK)
        y = torch.empty_like(u)
        states = torch.empty(batch, dim, n_chunks, N, dtype=u.dtype, device=u.device)
        last = torch.empty(batch, dim, N, dtype=u.dtype, device=u.device)
        grid = (batch, triton.cdiv(dim, BLOCK_D))
        _forward_kernel[grid](u, dt, A, Bk, Ck, last if h0 is None else h0, y, states, last, dim, L, N,
                              n_chunks, *_strides(Bk, b_index), *_strides(Ck, c_index),
                              CHUNK=CHUNK, BLOCK_D=BLOCK_D, BLOCK_N=triton.next_power_of_2(N),
                              HAS_H0=h0 is not None)
        # h0 itself is not kept: it is states[:, :, 0], where the backward pass recomputes from.
        ctx.save_for_backward(u, dt, A, Bk, Ck, states)
        ctx.b_index, ctx.c_index, ctx.has_h0 = b_index, c_index, h0 is not None
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dlast):
        u, dt, A, Bk, Ck, states = ctx.saved_tensors
        batch, dim, L = u.shape
        N = A.shape[1]
        dy = torch.zeros_like(u) if dy is None else dy.contiguous().to(u.dtype)
        dlast = (torch.zeros(batch, dim, N, dtype=u.dtype, device=u.device) if dlast is None
                 else dlast.contiguous().to(u.dtype))
        scratch = torch.empty(batch, dim, CHUNK, N, dtype=u.dtype, device=u.device)
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dA, dB, dC = torch.zeros_like(A), torch.zeros_like(Bk), torch.zeros_like(Ck)
        dh0 = torch.empty_like(dlast) if ctx.has_h0 else None
        grid = (batch, triton.cdiv(dim, BLOCK_D))
        _backward_kernel[grid](u, dt, A, Bk, Ck, states, dy, dlast, scratch, du, ddt, dA, dB, dC,
                               dlast if dh0 is None else dh0, dim, L, N, states.shape[2],
                               *_strides(Bk, ctx.b_index), *_strides(Ck, ctx.c_index),
                               CHUNK=CHUNK, BLOCK_D=BLOCK_D, BLOCK_N=triton.next_power_of_2(N),
                               HAS_H0=ctx.has_h0)
        return du, ddt, dA, dB, dC, None, None, dh0


_triton_core = kernel_core(_TritonScan)


def selective_scan_triton(
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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fused Triton selective scan; arguments, results and gradients as :func:`selective_scan_ref`.

    Args:
        u, delta, z: (batch, dim, L) on a CUDA device (any device under the Triton interpreter); A: real
        (dim, N); B, C: (dim, N), (batch, N, L) or (batch, groups, N, L); D, delta_bias: (dim,);
        initial_state: (batch, dim, N) state to start from (default zeros).
        seq_idx: (batch, L) ids of packed sequences. The Triton kernels do not take sequence starts (yet):
            packed calls run the chunked torch core on the same device instead, with the same results.

    Raises:
        ConfigError: Triton is not installed.
    """
    if triton is None:
        raise ConfigError("backend: 'triton' needs the triton package (pip install triton), which is not "
                          "installed; use backend='auto', 'chunked' or 'cpu'")
    core = _triton_core if seq_idx is None else _chunked_core
    return run_real_scan(core, "triton", u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                         return_last_state, initial_state=initial_state, seq_idx=seq_idx)
