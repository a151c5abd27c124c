"""The readable Mamba-3 forms: the recurrence :func:`mamba3_ref`, one position at a time, and the one-token
:func:`mamba3_step` for generation. Both run the same per-position update (:func:`_advance`), written as the
paper states it (Lahoti et al., "Mamba-3", 2026, the exponential-trapezoidal recurrence with a rotated,
rank-R input)."""

from __future__ import annotations

import torch

from ..._checks import compute_dtype
from .common import (
    Mamba3Dims,
    Mamba3State,
    angle_increment,
    check_mamba3_args,
    check_state,
    finish,
    keys_queries,
    resolve_pairing,
    trapezoid_weights,
    values,
    wrap_angle,
)


def zero_state(dims: Mamba3Dims, like: torch.Tensor, dtype: torch.dtype) -> Mamba3State:
    """The state before any input: zero angles, state, previous keys and values."""
    b, h, p, r, n = dims.batch, dims.heads, dims.headdim, dims.rank, dims.state
    return Mamba3State(like.new_zeros(b, h, dims.angles, dtype=dtype),
                       like.new_zeros(b, h, p, n, dtype=dtype),
                       like.new_zeros(b, r, h, n, dtype=dtype), like.new_zeros(b, h, p, dtype=dtype))


def start_state(dims: Mamba3Dims, x: torch.Tensor, initial_state: Mamba3State | None,
                dtype: torch.dtype) -> Mamba3State:
    """The checked ``initial_state`` in the compute dtype, or the zero state."""
    if initial_state is None:
        return zero_state(dims, x, dtype)
    return Mamba3State(*(s.to(dtype) for s in check_state("initial_state", initial_state, dims)))


def empty_output(dims: Mamba3Dims, x: torch.Tensor, per_rank: bool) -> torch.Tensor:
    """The output of a length-0 call: (batch, 0, [rank,] heads, p)."""
    lead = (dims.batch, 0, dims.rank) if per_rank else (dims.batch, 0)
    return x.new_zeros(*lead, dims.heads, dims.headdim)


def _advance(state: Mamba3State, x, dt, A, B, C, trap, angles, B_bias, C_bias, mimo_x, pairwise, dtype):
    """One position: returns the per-rank outputs y, values v (batch, rank, heads, p) and the new state.

    θ_t = θ_{t-1} + π tanh(angles_t) Δ_t;  k_t, q_t = R(θ_t)(B_t + B_bias), R(θ_t)(C_t + C_bias);
    v_t = x_t · mimo_x;  H_t = α_t H_{t-1} + β_t Σ_r v_{t-1,r} k_{t-1,r}ᵀ + γ_t Σ_r v_{t,r} k_{t,r}ᵀ with
    α = exp(AΔ), β = (1 - λ)Δα, γ = λΔ, λ = σ(trap);  y_{t,r} = H_t q_{t,r}.
    """
    heads = x.shape[-2]
    delta, a = dt.to(dtype), A.to(dtype)
    theta = wrap_angle(state.angle.to(dtype) + angle_increment(angles.to(dtype), delta))
    k, q = keys_queries(B, C, B_bias, C_bias, theta, heads, pairwise, dtype)
    xf = x.to(dtype)
    v = values(xf, mimo_x)
    v_prev = values(state.v.to(dtype), mimo_x)
    alpha = torch.exp(a * delta)
    gamma, before = trapezoid_weights(delta, trap.to(dtype))
    beta = before * alpha
    H = (alpha[..., None, None] * state.ssm.to(dtype)
         + beta[..., None, None] * torch.einsum("brhp,brhn->bhpn", v_prev, state.k.to(dtype))
         + gamma[..., None, None] * torch.einsum("brhp,brhn->bhpn", v, k))
    y = torch.einsum("bhpn,brhn->brhp", H, q)
    return y, v, Mamba3State(theta, H, k, xf)


def mamba3_ref(
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
) -> torch.Tensor | tuple[torch.Tensor, Mamba3State]:
    """Reference Mamba-3: the recurrence of :func:`_advance`, one position at a time.

    Args:
        x: (batch, L, heads, p).  dt: (batch, L, heads), the step sizes Δ (> 0, after the softplus).
        A: (batch, L, heads), the data-dependent A (< 0, floored by the caller).
        B, C: (batch, L, rank, groups, N), normalised keys and queries (bias added here); rank 1 for SISO.
        trap: (batch, L, heads), λ = σ(trap).  angles: (batch, L, heads, n_angles), 2·n_angles <= N.
        B_bias, C_bias: (heads, rank, N).  D: optional (heads,).  z: optional gate (batch, L, heads, p).
        mimo_x, mimo_z, mimo_o: (heads, rank, p) for MIMO (None for SISO); without mimo_o the per-rank
            outputs are returned.
        initial_state: optional :class:`Mamba3State` before position 0.
        seq_idx: optional (batch, L) integer ids of packed sequences; the state restarts at every change.
        rotate_pairwise: RoPE pairs (2i, 2i+1) if True, (i, i + N/2) if False; default: the official
            choice (True for SISO, False for MIMO).
        return_final_state: also return the state after position L-1.

    Returns:
        y (batch, L, heads, p) in x's dtype ((batch, L, rank, heads, p) for MIMO without mimo_o), and with
        ``return_final_state`` the :class:`Mamba3State` (float32, float64 for float64 x).
    """
    dims = check_mamba3_args(x, dt, A, B, C, trap, angles, B_bias, C_bias, D, z, mimo_x, mimo_z, mimo_o,
                             seq_idx)
    mimo = mimo_x is not None
    pairwise = resolve_pairing(rotate_pairwise, mimo)
    dtype = compute_dtype(x)
    state = start_state(dims, x, initial_state, dtype)
    ys = []
    for t in range(dims.length):
        if seq_idx is not None and t > 0:
            same = (seq_idx[:, t] == seq_idx[:, t - 1]).to(dtype)    # a new sequence starts from zero
            state = Mamba3State(*(s * same.view(-1, *[1] * (s.dim() - 1)) for s in state))
        y, v, state = _advance(state, x[:, t], dt[:, t], A[:, t], B[:, t], C[:, t], trap[:, t], angles[:, t],
                               B_bias, C_bias, mimo_x, pairwise, dtype)
        ys.append(finish(y, v, D, z[:, t] if z is not None else None, mimo_z, mimo_o, mimo))
    out = torch.stack(ys, dim=1).to(x.dtype) if ys else empty_output(dims, x, mimo and mimo_o is None)
    return (out, state) if return_final_state else out


def mamba3_step(
    state: Mamba3State,
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
    rotate_pairwise: bool | None = None,
) -> torch.Tensor:
    """One Mamba-3 position for generation; updates the four tensors of ``state`` in place.

    Args:
        state: :class:`Mamba3State` (angle (batch, heads, n_angles), ssm (batch, heads, p, N), k (batch,
            rank, heads, N), v (batch, heads, p)); each is overwritten, cast to its own dtype.
        x: (batch, heads, p).  dt, A, trap: (batch, heads).  B, C: (batch, rank, groups, N).
        angles: (batch, heads, n_angles).  The rest as for :func:`mamba3_ref`.

    Returns:
        y (batch, heads, p) in x's dtype ((batch, rank, heads, p) for MIMO without mimo_o). Running it L
        times equals :func:`mamba3_ref` on the sequence.
    """
    dims = check_mamba3_args(x, dt, A, B, C, trap, angles, B_bias, C_bias, D, z, mimo_x, mimo_z, mimo_o,
                             step=True)
    state = check_state("state", state, dims)
    mimo = mimo_x is not None
    dtype = compute_dtype(x)
    y, v, new = _advance(state, x, dt, A, B, C, trap, angles, B_bias, C_bias, mimo_x,
                         resolve_pairing(rotate_pairwise, mimo), dtype)
    for old, value in zip(state, new, strict=True):
        old.copy_(value)
    return finish(y, v, D, z, mimo_z, mimo_o, mimo).to(x.dtype)
