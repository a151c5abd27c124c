"""The chunked Mamba-3 (:func:`mamba3_chunked`): the SSD block decomposition (Dao & Gu 2024, section 6)
with the trapezoid folded into the weights, for every rank at once. The training path; autograd
differentiates it, and no per-position state (batch, L, heads, p, N) is formed, only one per chunk.

The trapezoid as an SSD. With S_t = H_t + (1 - λ_{t+1})Δ_{t+1} Σ_r v_{t,r} k_{t,r}ᵀ (the state plus the
part of the next step's update that already is known), the recurrence of :mod:`.ref` becomes

    S_t = α_t S_{t-1} + w_t Σ_r v_{t,r} k_{t,r}ᵀ,   w_t = λ_t Δ_t + (1 - λ_{t+1})Δ_{t+1}
    y_{t,R} = S_t q_{t,R} - (1 - λ_{t+1})Δ_{t+1} Σ_r (q_{t,R}·k_{t,r}) v_{t,r}

(λ_{t+1}Δ_{t+1} is 0 past the end and across a change of sequence). Inside a chunk, with the log-decays
c_t = Σ_{u<=t} A_u Δ_u from the chunk's start:

    y_{t,R} = Σ_{s<=t, r} W[t, s] (q_{t,R}·k_{s,r}) v_{s,r} + exp(c_t) S_start q_{t,R}
    W[t, s] = exp(c_t - c_s) w_s for s < t,  λ_t Δ_t for s = t (the correction), 0 above,

so all R·R rank pairs of two positions share W[t, s] (the Kronecker mask of the official MIMO kernel).
Each chunk adds Σ_s exp(c_end - c_s) w_s v_s k_sᵀ to the state it passes on, and a short recurrence over
the chunks carries S from one chunk to the next. The result does not depend on the chunk length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._checks import check_int, compute_dtype
from ..packing import sequence_start_index
from .common import (
    Mamba3State,
    angle_increment,
    check_mamba3_args,
    finish,
    resolve_pairing,
    rotate,
    trapezoid_weights,
    values,
    wrap_angle,
)
from .ref import empty_output, start_state


def _segmented_cumsum(inc: torch.Tensor, theta0: torch.Tensor, seq_idx: torch.Tensor | None) -> torch.Tensor:
    """θ_t = θ_{-1} + Σ_{u<=t} inc_u, restarting from 0 where ``seq_idx`` changes: inc (batch, L, heads, m),
    theta0 (batch, heads, m)."""
    total = inc.cumsum(1) + theta0[:, None]
    if seq_idx is None:
        return total
    start = sequence_start_index(seq_idx)                                        # start of each t's sequence
    before = (start - 1).clamp(min=0)[..., None, None].expand_as(total)
    offset = torch.where((start > 0)[..., None, None], total.gather(1, before), torch.zeros_like(total))
    return total - offset


def prologue(x, dt, A, B, C, trap, angles, B_bias, C_bias, D, z, mimo_x, mimo_z, mimo_o, initial_state,
             seq_idx, rotate_pairwise, chunk_size):
    """What the chunked forms do first: check the arguments; returns the sizes, the RoPE pairing, the
    compute dtype, the start state and, for L = 0, the (empty) output (else None)."""
    dims = check_mamba3_args(x, dt, A, B, C, trap, angles, B_bias, C_bias, D, z, mimo_x, mimo_z, mimo_o,
                             seq_idx)
    check_int("chunk_size", chunk_size)
    mimo = mimo_x is not None
    dtype = compute_dtype(x)
    state = start_state(dims, x, initial_state, dtype)
    empty = empty_output(dims, x, mimo and mimo_o is None) if dims.length == 0 else None
    return dims, resolve_pairing(rotate_pairwise, mimo), dtype, state, empty


def per_position(dt, A, trap, angles, state: Mamba3State, seq_idx, mimo_x, dtype):
    """The per-position quantities of the SSD form: the log-decays AΔ, the wrapped angles θ (b, L, h, m),
    γ = λΔ and w_t = λ_tΔ_t + (1 - λ_{t+1})Δ_{t+1} (b, L, h), and the start value S_{-1} = H_{-1} +
    (1 - λ_0)Δ_0 Σ_r v_{-1,r} k_{-1,r}ᵀ (b, h, p, N)."""
    delta, a = dt.to(dtype), A.to(dtype) * dt.to(dtype)
    theta = wrap_angle(_segmented_cumsum(angle_increment(angles.to(dtype), delta), state.angle, seq_idx))
    gamma, before = trapezoid_weights(delta, trap.to(dtype))
    nxt = F.pad(before[:, 1:], (0, 0, 0, 1))                        # (1 - λ_{t+1})Δ_{t+1}
    if seq_idx is not None:
        nxt = nxt * F.pad(seq_idx[:, 1:] == seq_idx[:, :-1], (0, 1)).to(dtype)[..., None]
    S = state.ssm + before[:, 0, :, None, None] * torch.einsum(
        "brhp,brhn->bhpn", values(state.v, mimo_x), state.k)
    return a, theta, gamma, gamma + nxt, S


def mamba3_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    trap: torch.Tensor,
    angles: torch.Tensor,
    B_bias: torch.Tensor,
    C_bias: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    mimo_x: torch.Tensor | None = None,
    mimo_z: torch.Tensor | None = None,
    mimo_o: torch.Tensor | None = None,
    initial_state: Mamba3State | None = None,
    seq_idx: torch.Tensor | None = None,
    rotate_pairwise: bool | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
) -> torch.Tensor | tuple[torch.Tensor, Mamba3State]:
    """Chunked Mamba-3; arguments and results as :func:`~mambakit.ops.mamba3.ref.mamba3_ref`, plus
    ``chunk_size`` (positions per chunk, >= 1; L need not be a multiple of it)."""
    dims, pairwise, dtype, state, empty = prologue(x, dt, A, B, C, trap, angles, B_bias, C_bias, D, z, mimo_x,
                                                   mimo_z, mimo_o, initial_state, seq_idx, rotate_pairwise,
                                                   chunk_size)
    if empty is not None:
        return (empty, state) if return_final_state else empty
    mimo = mimo_x is not None
    b, length, h, p, R = dims.batch, dims.length, dims.heads, dims.headdim, dims.rank

    a, theta, gamma, w, S = per_position(dt, A, trap, angles, state, seq_idx, mimo_x, dtype)

    # Head-major from here on: keys, queries, values (b, h, L, R, d), written once in that layout.
    th = theta.transpose(1, 2).unsqueeze(3)                           # (b, h, L, 1, m)

    def head_major(X, bias):                                          # (b, L, R, g, N) -> (b, h, L, R, N)
        X = X.to(dtype).permute(0, 3, 1, 2, 4).repeat_interleave(h // dims.groups, dim=1)
        return rotate(X + bias.to(dtype)[:, None], th, pairwise)

    k, q = head_major(B, B_bias), head_major(C, C_bias)
    xf = x.to(dtype)
    v = xf.transpose(1, 2).unsqueeze(3)                              # (b, h, L, R, p): x · mimo_x per rank
    v = v * mimo_x.to(dtype)[:, None] if mimo else v

    # Pad to whole chunks: padded positions have no decay and no input.
    T = min(chunk_size, length)
    pad = -length % T
    nc = (length + pad) // T

    def chunks(t: torch.Tensor) -> torch.Tensor:    # (b, h, L, ...) -> (b, h, nc, T·..., ...)
        t = F.pad(t, (0, 0) * (t.dim() - 3) + (0, pad)) if pad else t
        return t.reshape(b, h, nc, T * (t.shape[3] if t.dim() > 4 else 1), t.shape[-1])

    kc, qc, vc = chunks(k), chunks(q), chunks(v)                     # (b, h, nc, T·R, d)
    ac, wc, gc = (F.pad(t.transpose(1, 2), (0, pad)).reshape(b, h, nc, T) for t in (a, w, gamma))
    from_start = ac.cumsum(-1)                                       # c_t
    log_L = from_start[..., :, None] - from_start[..., None, :]      # (b, h, nc, T, T) [t, s]: c_t - c_s
    to_end = log_L[..., -1, :]                                       # c_end - c_s
    chunk_decay = from_start[..., -1]
    below = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    if seq_idx is not None:   # no decay reaches across a change of sequence; padding continues the last one
        seq = F.pad(seq_idx, (0, pad), value=0)
        if pad:
            seq[:, length:] = seq_idx[:, -1:]
        seq = seq.view(b, 1, nc, T)
        seq_start = torch.cat([seq[:, :, :1, 0], seq[:, :, :-1, -1]], dim=2)
        below = below & (seq[..., :, None] == seq[..., None, :])
        to_end = to_end.masked_fill(seq != seq[..., -1:], float("-inf"))
        from_start = from_start.masked_fill(seq != seq_start[..., None], float("-inf"))
        chunk_decay = chunk_decay.masked_fill(seq[..., -1] != seq_start, float("-inf"))
    W = torch.exp(log_L.masked_fill(~below, float("-inf"))) * wc[..., None, :]   # (b, h, nc, T, T)
    W.diagonal(dim1=-2, dim2=-1).copy_(gc)                           # s = t: the correction leaves λ_tΔ_t

    # 1. Inside each chunk: every rank pair of positions t, s weighted by W[t, s].
    scores = qc @ kc.transpose(-1, -2)                               # (b, h, nc, T·R, T·R) [(t, R), (s, r)]
    if R == 1:
        scores = scores * W
    else:
        scores = (scores.unflatten(-1, (T, R)).unflatten(-3, (T, R)) * W[..., :, None, :, None])
        scores = scores.flatten(-2).flatten(-3, -2)
    y = scores @ vc                                                  # (b, h, nc, T·R, p)
    # 2. Each chunk's contribution to the state it passes on.
    reach = torch.exp(to_end) * wc                                   # (b, h, nc, T)
    reach = reach if R == 1 else reach.repeat_interleave(R, dim=-1)
    increments = (vc * reach[..., None]).transpose(-1, -2) @ kc      # (b, h, nc, p, N)
    # 3. The recurrence over chunks, from S_{-1}.
    starts = []
    for decay, increment in zip(torch.exp(chunk_decay).unbind(2), increments.unbind(2), strict=True):
        starts.append(S)                                             # (unbind: one backward for all chunks)
        S = decay[..., None, None] * S + increment
    # 4. Each chunk's output from the state it starts with.
    reach_in = torch.exp(from_start)                                 # (b, h, nc, T)
    reach_in = reach_in if R == 1 else reach_in.repeat_interleave(R, dim=-1)
    y = y + (qc * reach_in[..., None]) @ torch.stack(starts, dim=2).transpose(-1, -2)
    y = y.view(b, h, nc * T, R, p)[:, :, :length].permute(0, 2, 3, 1, 4)   # (b, L, R, h, p)

    out = finish(y, values(xf, mimo_x), D, z, mimo_z, mimo_o, mimo).to(x.dtype)
    if not return_final_state:
        return out
    return out, Mamba3State(theta[:, -1], S, k[:, :, -1].transpose(1, 2), xf[:, -1])
