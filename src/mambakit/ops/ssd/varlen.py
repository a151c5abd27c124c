"""The final state of each packed sequence of an SSD row, for the ``cu_seqlens`` of ``mamba_ssm``
(cumulative lengths of the sequences packed into one row; :mod:`mambakit.ops.packing` turns them into
``seq_idx``).

A row of length L holds sequences s = 0..n-1 at positions cu_seqlens[s] .. cu_seqlens[s+1] - 1, with
cu_seqlens[0] = 0 and cu_seqlens[n] = L. The state of sequence s after its last position is

    H_s = Σ_{t in s} exp(Σ_{t < k in s} Δ_k A) · Δ_t x_t B_tᵀ   (+ exp(Σ_{k in s} Δ_k A) · H_{-1} for s = 0),

the final state that SSD on that sequence alone returns (the initial state belongs to the first sequence,
as in :func:`~mambakit.ops.ssd.ref.ssd_ref` with ``seq_idx``). The decays are sums over the sequence's own
positions only (suffix sums, not differences of a running sum), so they stay accurate in long packed rows.
"""

from __future__ import annotations

import torch

from ..._checks import compute_dtype
from ...errors import ShapeError
from ..packing import seq_idx_from_cu_seqlens
from .common import NO_LIMIT, per_head, step_sizes


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
    seq_idx_from_cu_seqlens(cu_seqlens, x.shape[1])   # checks the offsets
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
