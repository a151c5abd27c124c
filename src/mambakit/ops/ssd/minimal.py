"""A readable chunked SSD: the block decomposition of the Mamba-2 paper (section 6) in plain torch.

The sequence is cut into chunks of Q steps. With the log-decays a_t = Δ_t·A of one head, the (L, L) matrix
M = L ∘ C Bᵀ of :func:`~mambakit.ops.ssd.ref.ssd_quadratic` splits into (Q, Q) blocks:

1. diagonal blocks: the quadratic form inside each chunk,
   y_t += Σ_{s<=t in the chunk} L[t, s] (C_t·B_s) Δ_s x_s;
2. each chunk's own contribution to the state at its end, Σ_s L[end, s] Δ_s x_s B_sᵀ;
3. a recurrence over the chunks carrying the state from one chunk's start to the next's,
   H_{k+1} = exp(a summed over chunk k) H_k + (2. of chunk k), from the initial state (or zeros);
4. off-diagonal blocks: each chunk's output from the state it starts with,
   y_t += exp(a_0 + ... + a_t) C_t H_k.

Every step is exact (no approximation), so the result equals :func:`~mambakit.ops.ssd.ref.ssd_ref` up to
rounding for any chunk length; autograd differentiates it. Packed sequences (``seq_idx``) zero every decay
that crosses a change of sequence. :mod:`.chunked` runs the same decomposition tuned for speed and memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._checks import check_int, compute_dtype
from .common import NO_LIMIT, check_dt_limit, check_ssd_args, per_head, skip_and_gate, step_sizes
from .ref import segment_sum


def ssd_minimal(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = NO_LIMIT,
    return_final_states: bool = False,
    *,
    chunk_size: int = 64,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD in plain torch; arguments and results as :func:`~mambakit.ops.ssd.ref.ssd_ref`.

    Args:
        x: (batch, L, heads, headdim).  dt: (batch, L, heads).  A: (heads,).  B, C: (batch, L, groups, N).
        D, z, dt_bias, initial_states (batch, heads, headdim, N), seq_idx (batch, L), dt_softplus, dt_limit,
            return_final_states: as for ``ssd_ref``.
        chunk_size: steps per chunk (>= 1; L need not be a multiple of it).

    Returns:
        y (batch, L, heads, headdim) in x's dtype, and with ``return_final_states`` the final states
        (batch, heads, headdim, N) in float32 (float64 for float64 x).
    """
    dims = check_ssd_args(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx)
    check_dt_limit(dt_limit)
    check_int("chunk_size", chunk_size)
    dtype = compute_dtype(x)
    batch, length, heads, headdim, state = dims.batch, dims.length, dims.heads, dims.headdim, dims.state
    H = (initial_states.to(dtype) if initial_states is not None
         else x.new_zeros(batch, heads, headdim, state, dtype=dtype))
    if length == 0:
        out = x.new_zeros(x.shape)
        return (out, H) if return_final_states else out

    # Pad L to whole chunks: padded steps have Δ = 0 (decay 1, no input), so they change nothing.
    Q = min(chunk_size, length)
    pad = -length % Q
    n_chunks = (length + pad) // Q

    def chunks(t: torch.Tensor) -> torch.Tensor:   # (batch, L, ...) -> (batch, n_chunks, Q, ...)
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(batch, n_chunks, Q, *t.shape[2:])

    delta = step_sizes(dt, dt_bias, dt_softplus, dt_limit, dtype)
    a = chunks(delta * A.to(dtype)).permute(0, 3, 1, 2)             # (batch, heads, n_chunks, Q)
    xdt = chunks(x.to(dtype) * delta[..., None])                    # (batch, n_chunks, Q, heads, headdim)
    Bh = chunks(per_head(B.to(dtype), heads, 2))                    # (batch, n_chunks, Q, heads, N)
    Ch = chunks(per_head(C.to(dtype), heads, 2))
    L_mask = torch.exp(segment_sum(a))                              # (batch, heads, n_chunks, Q, Q) [t, s]
    to_end = L_mask[..., -1, :]                                     # reach of step s to the chunk's end
    from_start = torch.exp(a.cumsum(-1))                            # reach of the start state to step t
    chunk_decay = torch.exp(a.sum(-1))                              # (batch, heads, n_chunks)
    if seq_idx is not None:   # a decay reaches only within one sequence; padded steps continue the last one
        seq = torch.cat([seq_idx, seq_idx[:, -1:].expand(batch, pad)], dim=1).view(batch, 1, n_chunks, Q)
        seq_start = torch.cat([seq[:, :, :1, 0], seq[:, :, :-1, -1]], dim=2)   # sequence of each start state
        L_mask = L_mask * (seq[..., :, None] == seq[..., None, :])
        to_end = to_end * (seq == seq[..., -1:])
        from_start = from_start * (seq == seq_start[..., None])
        chunk_decay = chunk_decay * (seq[..., -1] == seq_start)

    # 1. Inside each chunk: (L ∘ C Bᵀ) Δx.
    y = torch.einsum("bcthn,bcshn,bhcts,bcshp->bcthp", Ch, Bh, L_mask, xdt)
    # 2. Each chunk's contribution to the state at its end.
    increments = torch.einsum("bcshn,bhcs,bcshp->bchpn", Bh, to_end, xdt)   # (batch, n_chunks, heads, p, N)
    # 3. The recurrence over chunks: starts[k] is the state before chunk k.
    starts = []
    for k in range(n_chunks):
        starts.append(H)
        H = chunk_decay[:, :, k, None, None] * H + increments[:, k]
    # 4. Each chunk's output from its start state.
    y = y + torch.einsum("bcthn,bchpn,bhct->bcthp", Ch, torch.stack(starts, dim=1), from_start)
    y = y.reshape(batch, n_chunks * Q, heads, headdim)[:, :length]
    out = skip_and_gate(y, x, D, z)
    return (out, H) if return_final_states else out

