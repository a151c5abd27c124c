"""Packed variable-length sequences for SSD: the ``cu_seqlens`` of ``mamba_ssm`` (cumulative lengths of the
sequences packed into one row), the ``seq_idx`` they mark, and the final state of each packed sequence.

A row of length L holds sequences s = 0..n-1 at positions cu_seqlens[s] .. cu_seqlens[s+1] - 1, with
cu_seqlens[0] = 0 and cu_seqlens[n] = L. The state of sequence s after its last position is

    H_s = Σ_{t in s} exp(Σ_{t < k in s} Δ_k A) · Δ_t x_t B_tᵀ   (+ exp(Σ_{k in s} Δ_k A) · H_{-1} for s = 0),

the final state that SSD on that sequence alone returns (the initial state belongs to the first sequence,
as in :func:`~mambakit.ops.ssd.ref.ssd_ref` with ``seq_idx``). The decays are sums over the sequence's own
positions only (suffix sums, not differences of a running sum), so they stay accurate in long packed rows.
"""

from __future__ import annotations

import torch

from ..._checks import check_tensor, compute_dtype
from ...errors import ConfigError, DTypeError, ShapeError
from .common import NO_LIMIT, per_head, step_sizes


def check_cu_seqlens(cu_seqlens: torch.Tensor, length: int) -> None:
    """(n + 1,) integers, non-decreasing, from 0 to ``length``; raises a mambakit error otherwise."""
    check_tensor("cu_seqlens", cu_seqlens, ndim=1, floating=False)
    if cu_seqlens.is_floating_point() or cu_seqlens.is_complex() or cu_seqlens.dtype == torch.bool:
        raise DTypeError(f"cu_seqlens: expected an integer tensor, got {cu_seqlens.dtype}")
    if cu_seqlens.numel() < 2:
        raise ShapeError(f"cu_seqlens: expected (n_seqs + 1,) with n_seqs >= 1, "
                         f"got shape {tuple(cu_seqlens.shape)}")
    values = cu_seqlens.tolist()
    if values[0] != 0 or values[-1] != length or any(b < a for a, b in zip(values, values[1:], strict=False)):
        raise ConfigError(f"cu_seqlens: expected non-decreasing cumulative lengths from 0 to L={length}, "
                          f"got {values}")


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """The (1, L) int32 ``seq_idx`` of the packed row: position t gets the index of its sequence."""
    check_cu_seqlens(cu_seqlens, length)
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    ids = torch.arange(lengths.numel(), device=cu_seqlens.device, dtype=torch.int32)
    return ids.repeat_interleave(lengths.long()).unsqueeze(0)


def varlen_states(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    cu_seqlens: torch.Tensor,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = NO_LIMIT,
) -> torch.Tensor:
    """Final state of each packed sequence (see the module's docstring); differentiable.

    Args:
        x: (1, L, heads, headdim).  dt: (1, L, heads).  A: (heads,).  B: (1, L, groups, N) (C: unused, taken
            for the official argument order).  cu_seqlens: (n + 1,).  dt_bias, dt_softplus, dt_limit: as in
            :func:`~mambakit.ops.ssd.ref.ssd_ref`.  initial_states: optional (1, heads, headdim, N).

    Returns:
        (n, heads, headdim, N) in float32 (float64 for float64 x).
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ShapeError(f"x: the packed sequences of cu_seqlens need batch 1, got shape {tuple(x.shape)}")
    check_cu_seqlens(cu_seqlens, x.shape[1])
    dtype = compute_dtype(x)
    heads = x.shape[2]
    delta = step_sizes(dt[0], dt_bias, dt_softplus, dt_limit, dtype)     # (L, heads)
    log_decay = delta * A.to(dtype)
    xdt = x[0].to(dtype) * delta[..., None]                                 # (L, heads, headdim)
    Bh = per_head(B[0].to(dtype), heads, 1)                                 # (L, heads, N)
    bounds = cu_seqlens.tolist()
    states = []
    for s, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        a = log_decay[start:end]
        after = a.flip(0).cumsum(0).flip(0)                                 # Σ_{k >= t} a_k
        after = torch.cat([after[1:], a.new_zeros(min(1, end - start), heads)])   # Σ_{k > t} a_k
        H = torch.einsum("th,thp,thn->hpn", torch.exp(after), xdt[start:end], Bh[start:end])
        if s == 0 and initial_states is not None:
            H = H + torch.exp(a.sum(0))[:, None, None] * initial_states[0].to(dtype)
        states.append(H)
    return torch.stack(states)
