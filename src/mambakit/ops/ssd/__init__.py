"""SSD, the state-space operation of Mamba-2, written three ways that compute the same thing.

Heads h with head dimension p, state size N, and groups g of heads sharing B and C (Mamba-2 paper,
"Transformers are SSMs", Dao & Gu 2024). A is one negative scalar per head, so for every head:

    Δ_t = softplus(dt_t + dt_bias)                       (bias, softplus and clamp optional)
    H_t = exp(Δ_t·A) · H_{t-1} + Δ_t · x_t B_tᵀ            H_t is (p, N)
    y_t = H_t C_t + D · x_t,   then  y_t · silu(z_t)       (D and gate optional)

- :func:`ssd_ref` (:mod:`.ref`) runs that recurrence step by step: the reference.
- :func:`ssd_quadratic` (:mod:`.ref`) is its dual, attention-like form y = (L ∘ C Bᵀ)(Δ·x), where the
  1-semiseparable mask L[t, s] = exp(Δ_{s+1}A + ... + Δ_t A) for s <= t (0 above the diagonal) comes from
  segment sums (:func:`segment_sum`).
- :func:`ssd_minimal` (:mod:`.minimal`) splits the sequence into chunks: the quadratic form inside each
  chunk, the recurrence over the chunks' end states between them, in plain torch that autograd
  differentiates; the readable chunked form.
- :func:`ssd_chunked` (:mod:`.chunked`) is the same decomposition tuned: batched matmuls per group, nothing
  larger than one chunk's (chunk, chunk) mask per head, and a hand-written backward.

:func:`ssd` takes the official argument layout and picks a form with ``backend`` (the official
``mamba_chunk_scan_combined``, with packed sequences too, is :mod:`mambakit.ops.official.ssd_combined`);
:func:`ssd_state_update` is one step of the recurrence, for generation: the reference
:func:`ssd_state_update_ref` (:mod:`.ref`) or one numba pass over the state (:mod:`.step_cpu`).
Shared checks and helpers live in :mod:`.common`.

Layouts (as ``mamba_ssm``): x (batch, L, heads, p), dt (batch, L, heads), A (heads,), B and C
(batch, L, groups, N), D (heads,) or (heads, p), z (batch, L, heads, p), dt_bias (heads,), states
(batch, heads, p, N). Head k uses the B and C of group k // (heads / groups). Internally everything runs in
float32 (float64 if x is float64); for bfloat16/float16 inputs the chunked form's matmuls run in that
precision where the hardware has fast half-precision matmuls (GPUs; CPUs with AVX-512 BF16 or AMX), with the
decays and the state recurrence kept in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..._checks import check_int
from ...errors import ConfigError
from .chunked import ssd_chunked
from .common import NO_LIMIT
from .minimal import ssd_minimal
from .ref import segment_sum, ssd_quadratic, ssd_ref, ssd_state_update_ref

__all__ = ["available_backends", "segment_sum", "ssd", "ssd_chunked",
           "ssd_minimal", "ssd_quadratic", "ssd_ref", "ssd_state_update", "ssd_state_update_ref"]

# name -> form; "auto" is "chunked". The chunked forms also take chunk_size (see ssd()).
_BACKENDS: dict[str, Callable] = {"chunked": ssd_chunked, "minimal": ssd_minimal, "quadratic": ssd_quadratic,
                                  "ref": ssd_ref}


def available_backends() -> list[str]:
    """Names accepted by ``ssd(..., backend=...)`` besides ``"auto"``."""
    return sorted(_BACKENDS)


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
    dt_limit: tuple[float, float] = NO_LIMIT,
    return_final_states: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SSD with the argument layout of ``mamba_ssm``'s ``mamba_chunk_scan_combined``.

    Args:
        x: (batch, L, heads, headdim).  dt: (batch, L, heads).  A: (heads,).  B, C: (batch, L, groups, N).
        chunk_size: chunk length of the chunked forms (>= 1; checked for every backend).
        D: optional (heads,) or (heads, headdim).  z: optional (batch, L, heads, headdim), y·silu(z).
        dt_bias: optional (heads,).  initial_states: optional (batch, heads, headdim, N).
        seq_idx: optional (batch, L) non-decreasing integer ids of packed sequences.
        dt_softplus, dt_limit: see :func:`ssd_ref`.  return_final_states: also return the last state.
        backend: "auto" (= "chunked"), "chunked" (the tuned chunked form), "minimal" (the readable chunked
            form), "quadratic" (materialises L x L) or "ref" (the recurrence); see :func:`available_backends`.

    Returns:
        y (batch, L, heads, headdim) in x's dtype; with ``return_final_states`` also
        (batch, heads, headdim, N) in float32 (float64 for float64 x).

    Raises:
        ConfigError: an unknown ``backend`` (the message lists the valid names) or a bad ``chunk_size``.
    """
    if not isinstance(backend, str) or (backend != "auto" and backend not in _BACKENDS):
        raise ConfigError(f"backend: expected 'auto' or one of {available_backends()}, got {backend!r}")
    check_int("chunk_size", chunk_size)
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, initial_states=initial_states, seq_idx=seq_idx,
                  dt_softplus=dt_softplus, dt_limit=dt_limit, return_final_states=return_final_states)
    name = "chunked" if backend == "auto" else backend
    if name == "chunked":
        return ssd_chunked(x, dt, A, B, C, chunk_size, **kwargs)
    if name == "minimal":
        return ssd_minimal(x, dt, A, B, C, chunk_size=chunk_size, **kwargs)
    return _BACKENDS[name](x, dt, A, B, C, **kwargs)


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
    dt_limit: tuple[float, float] = NO_LIMIT,
    backend: str = "auto",
) -> torch.Tensor:
    """One SSD step, arguments and result as :func:`ssd_state_update_ref` (``state`` updated in place);
    ``backend``: ``"ref"``, ``"cpu"`` (one numba pass over the state: CPU tensors, the state in x's
    precision, no autograd) or ``"auto"`` (``"cpu"`` wherever it applies)."""
    if backend not in ("auto", "ref", "cpu"):
        raise ConfigError(f"backend: expected one of ['auto', 'cpu', 'ref'], got {backend!r}")
    args = (state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
    if backend != "ref":
        from .step_cpu import ssd_state_update_cpu, step_kernel_applies  # numba loads on first use

        tensors_ok = all(isinstance(t, torch.Tensor) for t in (state, x, dt, A, B, C))
        if backend == "cpu" or (tensors_ok and step_kernel_applies(state, x, dt, A, B, C, D, z, dt_bias)):
            return ssd_state_update_cpu(*args)
    return ssd_state_update_ref(*args)
