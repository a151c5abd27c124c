"""SSD, the state-space operation of Mamba-2, written three ways that compute the same thing.

Heads h with head dimension p, state size N, and groups g of heads sharing B and C (Mamba-2 paper,
"Transformers are SSMs", Dao & Gu 2024). A is one negative scalar per head, so for every head:

    Δ_t = softplus(dt_t + dt_bias)                       (bias, softplus and clamp optional)
    H_t = exp(Δ_t·A) · H_{t-1} + Δ_t · x_t B_tᵀ            H_t is (p, N)
    y_t = H_t C_t + D · x_t,   then  y_t · silu(z_t)       (D and gate optional)

- :func:`ssd_ref` runs that recurrence step by step: the reference.
- :func:`ssd_quadratic` is its dual, attention-like form y = (L ∘ C Bᵀ)(Δ·x), where the 1-semiseparable
  mask L[t, s] = exp(Δ_{s+1}A + ... + Δ_t A) for s <= t (0 above the diagonal) comes from segment sums.
- :func:`ssd_chunked` splits the sequence into chunks: the quadratic form inside each chunk, the recurrence
  over the chunks' end states between them. Its heavy parts are batched matmuls, and nothing larger than
  one chunk's (chunk, chunk) mask per head is ever materialised. It runs in
  :mod:`mambakit.ops.ssd_chunked`, an autograd function with a hand-written backward.

:func:`ssd` (alias :func:`mamba_chunk_scan_combined`) takes the official argument layout and picks a form;
:func:`ssd_state_update` is one step of the recurrence, for generation.

Layouts (as ``mamba_ssm``): x (batch, L, heads, p), dt (batch, L, heads), A (heads,), B and C
(batch, L, groups, N), D (heads,) or (heads, p), z (batch, L, heads, p), dt_bias (heads,), states
(batch, heads, p, N). Head k uses the B and C of group k // (heads / groups). Internally everything runs in
float32 (float64 if x is float64); for bfloat16/float16 inputs the chunked form's matmuls run in that
precision where the hardware has fast half-precision matmuls (GPUs; CPUs with AVX-512 BF16 or AMX), with the
decays and the state recurrence kept in float32.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import check_same_device, check_same_real_dtype, check_shape, check_tensor
from ..errors import ConfigError, DTypeError, ShapeError
from .ssd_chunked import chunked_ssd

_NO_LIMIT = (0.0, math.inf)
_METHODS = ("chunked", "quadratic", "ref")


# ------------------------------------------------------------------------------------------
# Argument checks and the shared pre- and post-processing
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Dims:
    batch: int
    length: int
    heads: int
    headdim: int
    groups: int
    state: int


def _check_args(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx) -> _Dims:
    """Validate the arguments shared by every form; raises a mambakit error naming the argument."""
    check_tensor("x", x, ndim=4)
    batch, length, heads, headdim = x.shape
    check_tensor("dt", dt, ndim=3)
    check_shape("dt", dt, (batch, length, heads), "(batch, L, heads) of x")
    check_tensor("A", A, ndim=1)
    check_shape("A", A, (heads,), "one scalar per head")
    check_tensor("B", B, ndim=4)
    groups, state = B.shape[2], B.shape[3]
    if groups < 1 or heads % groups != 0:
        raise ShapeError(f"B: groups (dim 2) must divide heads={heads}, got groups={groups}")
    check_shape("B", B, (batch, length, groups, state), "(batch, L, groups, N)")
    check_tensor("C", C, ndim=4)
    check_shape("C", C, (batch, length, groups, state), "same as B")
    if D is not None:
        check_tensor("D", D, ndim=(1, 2))
        check_shape("D", D, (heads,) if D.dim() == 1 else (heads, headdim), "(heads,) or (heads, headdim)")
    if z is not None:
        check_tensor("z", z, ndim=4)
        check_shape("z", z, (batch, length, heads, headdim), "same as x")
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, ndim=1)
        check_shape("dt_bias", dt_bias, (heads,))
    if initial_states is not None:
        check_tensor("initial_states", initial_states, ndim=4)
        check_shape("initial_states", initial_states, (batch, heads, headdim, state),
                    "(batch, heads, headdim, N)")
    if seq_idx is not None:
        check_tensor("seq_idx", seq_idx, ndim=2, floating=False)
        if seq_idx.is_floating_point() or seq_idx.is_complex() or seq_idx.dtype == torch.bool:
            raise DTypeError(f"seq_idx: expected an integer tensor, got {seq_idx.dtype}")
        check_shape("seq_idx", seq_idx, (batch, length), "(batch, L)")
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                      seq_idx=seq_idx)
    check_same_real_dtype(x=x, B=B, C=C, z=z)
    return _Dims(batch, length, heads, headdim, groups, state)


def _check_dt_limit(dt_limit: tuple[float, float]) -> None:
    if len(dt_limit) != 2 or not dt_limit[0] <= dt_limit[1]:
        raise ConfigError(f"dt_limit: expected (low, high) with low <= high, got {dt_limit!r}")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=1)
def _cpu_has_fast_bf16_matmul() -> bool:
    """Whether oneDNN has native bf16 matmuls on this CPU (AVX-512 BF16 / AMX); emulated ones are slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """Precision of the chunked form's matmuls: half-precision inputs keep theirs (as the official kernels do)
    on GPUs and on CPUs with native bf16 matmuls; elsewhere float32 (float64 for float64 input)."""
    if x.dtype == torch.bfloat16 and (x.device.type != "cpu" or _cpu_has_fast_bf16_matmul()):
        return x.dtype
    if x.dtype == torch.float16 and x.device.type != "cpu":
        return x.dtype
    return _compute_dtype(x)


def _step_sizes(dt, dt_bias, dt_softplus: bool, dt_limit, dtype: torch.dtype) -> torch.Tensor:
    """Δ from the raw dt: add the bias, softplus, then clamp (only if a limit other than (0, inf) is set)."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != _NO_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _skip_and_gate(y: torch.Tensor, x: torch.Tensor, D, z) -> torch.Tensor:
    """y + D·x, then gated by silu(z); all in y's (compute) dtype, returned in x's dtype."""
    if D is not None:
        Df = D.to(y.dtype)
        y = y + x.to(y.dtype) * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(x.dtype)


def _per_head(X: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """Repeat a per-group tensor along ``dim`` so that head k sees group k // (heads / groups)."""
    return X.repeat_interleave(heads // X.shape[dim], dim=dim)


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
    dt_limit: tuple[float, float] = _NO_LIMIT,
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
    dims = _check_args(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx)
    _check_dt_limit(dt_limit)
    dtype = _compute_dtype(x)
    delta = _step_sizes(dt, dt_bias, dt_softplus, dt_limit, dtype)
    xf, Af = x.to(dtype), A.to(dtype)
    Bh = _per_head(B.to(dtype), dims.heads, 2)                      # (batch, L, heads, N)
    Ch = _per_head(C.to(dtype), dims.heads, 2)
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
    out = _skip_and_gate(y, x, D, z)
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
    dt_limit: tuple[float, float] = _NO_LIMIT,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SSD as one masked matrix product per head: y = (L ∘ C Bᵀ)(Δ·x), plus the initial state's decayed reach.

    Same arguments and results as :func:`ssd_ref`. Materialises (batch, heads, L, L): for short sequences,
    tests and pictures.
    """
    dims = _check_args(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx)
    _check_dt_limit(dt_limit)
    dtype = _compute_dtype(x)
    delta = _step_sizes(dt, dt_bias, dt_softplus, dt_limit, dtype)
    a = (delta * A.to(dtype)).transpose(1, 2)                       # (batch, heads, L) log-decays Δ·A
    Bh = _per_head(B.to(dtype), dims.heads, 2).transpose(1, 2)      # (batch, heads, L, N)
    Ch = _per_head(C.to(dtype), dims.heads, 2).transpose(1, 2)
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
    out = _skip_and_gate(y, x, D, z)
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


# ------------------------------------------------------------------------------------------
# 3. The chunked form
# ------------------------------------------------------------------------------------------

def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = _NO_LIMIT,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD: the quadratic form inside chunks of ``chunk_size`` steps, the recurrence between chunks.

    Same arguments and results as :func:`ssd_ref`, plus ``chunk_size`` (>= 1; L need not be a multiple).
    The result does not depend on the chunk size (up to rounding); on CPU, chunks longer than 64 steps run
    as chunks of 64, which costs least there (see :mod:`mambakit.ops.ssd_chunked`).
    Per chunk and head: the output inside the chunk (a (Q, Q) masked matmul), the chunk's contribution to
    the state at its end, a recurrence carrying states from chunk to chunk, and each chunk's output from the
    state it starts with. Heads of one group share their C Bᵀ and their B/C matmuls.

    The work is done by :class:`mambakit.ops.ssd_chunked.ChunkedSSD`, whose backward is written by hand
    (batched matmuls, recomputing from the inputs, the chunk start states and the output before the gate);
    Δ's bias, softplus and clamp stay outside it, so autograd differentiates them exactly as it would here.
    """
    dims = _check_args(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx)
    _check_dt_limit(dt_limit)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
    dtype = _compute_dtype(x)
    mm_dtype = _matmul_dtype(x)
    b, length, h, p, n = dims.batch, dims.length, dims.heads, dims.headdim, dims.state
    delta = _step_sizes(dt, dt_bias, dt_softplus, dt_limit, dtype)  # (b, L, h)
    if length == 0:
        final = (initial_states.to(dtype) if initial_states is not None
                 else x.new_zeros(b, h, p, n, dtype=dtype))
        out = x.new_zeros(x.shape)
        return (out, final) if return_final_states else out

    out, final = chunked_ssd(x, delta, A, B, C, chunk_size, D, z, initial_states, seq_idx, mm_dtype)
    return (out, final) if return_final_states else out


# ------------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------------

def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = _NO_LIMIT,
    return_final_states: bool = False,
    method: str = "chunked",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SSD with the argument layout of ``mamba_ssm``'s ``mamba_chunk_scan_combined``.

    Args:
        x: (batch, L, heads, headdim).  dt: (batch, L, heads).  A: (heads,).  B, C: (batch, L, groups, N).
        chunk_size: chunk length of the chunked form (>= 1; checked for every method).
        D: optional (heads,) or (heads, headdim).  z: optional (batch, L, heads, headdim), y·silu(z).
        dt_bias: optional (heads,).  initial_states: optional (batch, heads, headdim, N).
        seq_idx: optional (batch, L) non-decreasing integer ids of packed sequences.
        dt_softplus, dt_limit: see :func:`ssd_ref`.  return_final_states: also return the last state.
        method: "chunked" (default, fast), "quadratic" (materialises L x L) or "ref" (the recurrence).

    Returns:
        y (batch, L, heads, headdim) in x's dtype; with ``return_final_states`` also
        (batch, heads, headdim, N) in float32 (float64 for float64 x).
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, initial_states=initial_states, seq_idx=seq_idx,
                  dt_softplus=dt_softplus, dt_limit=dt_limit, return_final_states=return_final_states)
    if method == "chunked":
        return ssd_chunked(x, dt, A, B, C, chunk_size, **kwargs)
    if method == "quadratic":
        return ssd_quadratic(x, dt, A, B, C, **kwargs)
    if method == "ref":
        return ssd_ref(x, dt, A, B, C, **kwargs)
    raise ConfigError(f"method: expected one of {list(_METHODS)}, got {method!r}")


mamba_chunk_scan_combined = ssd


def ssd_state_update(
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
    dt_limit: tuple[float, float] = _NO_LIMIT,
) -> torch.Tensor:
    """One SSD step for generation; updates ``state`` in place.

    Args:
        state: (batch, heads, headdim, N), H_{t-1}; overwritten with H_t (cast to its own dtype).
        x: (batch, heads, headdim).  dt: (batch, heads).  A: (heads,).  B, C: (batch, groups, N).
        D: optional (heads,) or (heads, headdim).  z: optional (batch, heads, headdim).
        dt_bias: optional (heads,).

    Returns:
        y_t (batch, heads, headdim) in x's dtype. Running it L times equals :func:`ssd_ref` on the sequence.
    """
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
    _check_dt_limit(dt_limit)
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    check_same_real_dtype(x=x, B=B, C=C, z=z)
    dtype = _compute_dtype(x)
    delta = _step_sizes(dt, dt_bias, dt_softplus, dt_limit, dtype)  # (batch, heads)
    Bh = _per_head(B.to(dtype), heads, 1)                           # (batch, heads, N)
    Ch = _per_head(C.to(dtype), heads, 1)
    decay = torch.exp(delta * A.to(dtype))
    H = (decay[..., None, None] * state.to(dtype)
         + (delta[..., None] * x.to(dtype))[..., None] * Bh[:, :, None])
    state.copy_(H)
    y = (H @ Ch[..., None]).squeeze(-1)
    return _skip_and_gate(y, x, D, z)
