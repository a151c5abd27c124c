"""The readable forms of SSD (Mamba-2's scan; layouts and notation in :mod:`mambakit.ops.ssd`): the
recurrence :func:`ssd_ref`, its quadratic dual :func:`ssd_quadratic` (with the decay exponents of
:func:`segment_sum`) and the one-token step :func:`ssd_state_update`."""

from __future__ import annotations

import math

import torch

from ..._checks import check_same_device, check_same_real_dtype, check_shape, check_tensor, compute_dtype
from ...errors import ShapeError
from .common import NO_LIMIT, check_dt_limit, check_ssd_args, per_head, skip_and_gate, step_sizes

# ------------------------------------------------------------------------------------------
# 1. The recurrence (reference)
# ------------------------------------------------------------------------------------------

def ssd_ref(
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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference SSD: H_t = exp(Δ_t A) H_{t-1} + Δ_t x_t B_tᵀ, y_t = H_t C_t, one step at a time.

    Args:
        x: (batch, L, heads, headdim).  dt: (batch, L, heads), raw step sizes.  A: (heads,), negative.
        B, C: (batch, L, groups, N); groups divides heads.
        D: optional (heads,) or (heads, headdim) skip.  z: optional (batch, L, heads, headdim) gate.
        dt_bias: optional (heads,).  initial_states: optional (batch, heads, headdim, N), H_{-1}.
        seq_idx: optional (batch, L) non-decreasing integers marking packed sequences; the state restarts
            from zero where it changes (and ``initial_states`` belong to the sequence at position 0).
        dt_softplus, dt_limit: Δ = clamp(softplus(dt + dt_bias), *dt_limit) (clamped only if a limit is set).
        return_final_states: also return H_{L-1}.

    Returns:
        y (batch, L, heads, headdim) in x's dtype, and with ``return_final_states`` the final states
        (batch, heads, headdim, N) in float32 (float64 for float64 x).
    """
    dims = check_ssd_args(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx)
    check_dt_limit(dt_limit)
    dtype = compute_dtype(x)
    delta = step_sizes(dt, dt_bias, dt_softplus, dt_limit, dtype)
    xf, Af = x.to(dtype), A.to(dtype)
    Bh = per_head(B.to(dtype), dims.heads, 2)                      # (batch, L, heads, N)
    Ch = per_head(C.to(dtype), dims.heads, 2)
    H = (initial_states.to(dtype) if initial_states is not None
         else xf.new_zeros(dims.batch, dims.heads, dims.headdim, dims.state))
    ys = []
    for t in range(dims.length):
        if seq_idx is not None and t > 0:
            same = (seq_idx[:, t] == seq_idx[:, t - 1]).to(dtype)   # a new sequence starts from zero
            H = H * same[:, None, None, None]
        decay = torch.exp(delta[:, t] * Af)                          # (batch, heads)
        H = decay[..., None, None] * H + (delta[:, t, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(H @ Ch[:, t, :, :, None])                          # (batch, heads, headdim, 1)
    y = torch.stack(ys, dim=1).squeeze(-1) if ys else xf.new_zeros(x.shape)
    out = skip_and_gate(y, x, D, z)
    return (out, H) if return_final_states else out


# ------------------------------------------------------------------------------------------
# 2. The quadratic (dual, attention-like) form
# ------------------------------------------------------------------------------------------

def segment_sum(a: torch.Tensor) -> torch.Tensor:
    """Segment sums of ``a`` along its last axis: out[..., t, s] = a[s+1] + ... + a[t] for s <= t, -inf above.

    ``exp(segment_sum(Δ·A))`` is the 1-semiseparable decay mask L. Sums of masked copies (not differences of
    one running sum) keep every entry accurate even after a long stretch of strong decay.

    Args:
        a: (..., T).
    Returns:
        (..., T, T).
    """
    T = a.shape[-1]
    rows = a[..., :, None].expand(*a.shape, T)                       # rows[..., k, s] = a[k]
    strictly_lower = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    sums = rows.masked_fill(~strictly_lower, 0).cumsum(dim=-2)      # sum of a[k] for s < k <= t
    lower = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
    return sums.masked_fill(~lower, -math.inf)


def _same_sequence(seq_idx: torch.Tensor) -> torch.Tensor:
    """(batch, L, L) boolean: positions t and s belong to the same packed sequence."""
    return seq_idx[:, :, None] == seq_idx[:, None, :]


def ssd_quadratic(
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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SSD as one masked matrix product per head: y = (L ∘ C Bᵀ)(Δ·x), plus the initial state's decayed reach.

    Same arguments and results as :func:`ssd_ref`. Materialises (batch, heads, L, L): for short sequences,
    tests and pictures.
    """
    dims = check_ssd_args(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx)
    check_dt_limit(dt_limit)
    dtype = compute_dtype(x)
    delta = step_sizes(dt, dt_bias, dt_softplus, dt_limit, dtype)
    a = (delta * A.to(dtype)).transpose(1, 2)                       # (batch, heads, L) log-decays Δ·A
    Bh = per_head(B.to(dtype), dims.heads, 2).transpose(1, 2)      # (batch, heads, L, N)
    Ch = per_head(C.to(dtype), dims.heads, 2).transpose(1, 2)
    xdt = (x.to(dtype) * delta[..., None]).transpose(1, 2)          # (batch, heads, L, headdim)

    log_mask = segment_sum(a)                                        # (batch, heads, L, L)
    if seq_idx is not None:
        log_mask = log_mask.masked_fill(~_same_sequence(seq_idx)[:, None], -math.inf)
    M = torch.exp(log_mask) * (Ch @ Bh.transpose(-1, -2))           # L ∘ C Bᵀ
    y = M @ xdt

    # Reach of H_{-1}: exp(a_0 + ... + a_t) C_t H_{-1} for the sequence at position 0.
    from_start = torch.exp(a.cumsum(-1))                             # (batch, heads, L)
    if seq_idx is not None:
        from_start = from_start * (seq_idx == seq_idx[:, :1]).to(dtype)[:, None]
    if initial_states is not None:
        H0 = initial_states.to(dtype)
        y = y + from_start[..., None] * (Ch @ H0.transpose(-1, -2))
    y = y.transpose(1, 2)
    out = skip_and_gate(y, x, D, z)
    if not return_final_states:
        return out
    # H_{L-1} = sum_s L[L-1, s] Δ_s x_s B_sᵀ (+ decayed H_{-1}): the last row of the mask.
    if dims.length == 0:
        final = (initial_states.to(dtype) if initial_states is not None
                 else x.new_zeros(dims.batch, dims.heads, dims.headdim, dims.state, dtype=dtype))
        return out, final
    last_row = torch.exp(log_mask[..., -1, :])                       # (batch, heads, L)
    final = (xdt * last_row[..., None]).transpose(-1, -2) @ Bh      # (batch, heads, headdim, N)
    if initial_states is not None:
        final = final + from_start[..., -1, None, None] * initial_states.to(dtype)
    return out, final


def ssd_state_update_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = NO_LIMIT,
) -> torch.Tensor:
    """One SSD step for generation, the reference; updates ``state`` in place.

    Args:
        state: (batch, heads, headdim, N), H_{t-1}; overwritten with H_t (cast to its own dtype).
        x: (batch, heads, headdim).  dt: (batch, heads).  A: (heads,).  B, C: (batch, groups, N).
        D: optional (heads,) or (heads, headdim).  z: optional (batch, heads, headdim).
        dt_bias: optional (heads,).

    Returns:
        y_t (batch, heads, headdim) in x's dtype. Running it L times equals :func:`ssd_ref` on the sequence.
    """
    check_step_args(state, x, dt, A, B, C, D, z, dt_bias, dt_limit)
    heads = x.shape[1]
    dtype = compute_dtype(x)
    delta = step_sizes(dt, dt_bias, dt_softplus, dt_limit, dtype)  # (batch, heads)
    Bh = per_head(B.to(dtype), heads, 1)                           # (batch, heads, N)
    Ch = per_head(C.to(dtype), heads, 1)
    decay = torch.exp(delta * A.to(dtype))
    H = (decay[..., None, None] * state.to(dtype)
         + (delta[..., None] * x.to(dtype))[..., None] * Bh[:, :, None])
    state.copy_(H)
    y = (H @ Ch[..., None]).squeeze(-1)
    return skip_and_gate(y, x, D, z)


def check_step_args(state, x, dt, A, B, C, D, z, dt_bias, dt_limit) -> None:
    """Validate the arguments of an SSD step (see :func:`ssd_state_update_ref`); raises a mambakit error
    naming the argument."""
    check_tensor("x", x, ndim=3)
    batch, heads, headdim = x.shape
    check_tensor("dt", dt, ndim=2)
    check_shape("dt", dt, (batch, heads), "(batch, heads) of x")
    check_tensor("A", A, ndim=1)
    check_shape("A", A, (heads,), "one scalar per head")
    check_tensor("B", B, ndim=3)
    groups, n = B.shape[1], B.shape[2]
    if groups < 1 or heads % groups != 0:
        raise ShapeError(f"B: groups (dim 1) must divide heads={heads}, got groups={groups}")
    check_tensor("C", C, ndim=3)
    check_shape("C", C, (batch, groups, n), "same as B")
    check_tensor("state", state, ndim=4)
    check_shape("state", state, (batch, heads, headdim, n), "(batch, heads, headdim, N)")
    if D is not None:
        check_tensor("D", D, ndim=(1, 2))
        check_shape("D", D, (heads,) if D.dim() == 1 else (heads, headdim), "(heads,) or (heads, headdim)")
    if z is not None:
        check_tensor("z", z, ndim=3)
        check_shape("z", z, (batch, heads, headdim), "same as x")
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, ndim=1)
        check_shape("dt_bias", dt_bias, (heads,))
    check_dt_limit(dt_limit)
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    check_same_real_dtype(x=x, B=B, C=C, z=z)
