"""Mamba-3's state-space operation (Lahoti et al., "Mamba-3: Improved Sequence Modeling using State Space
Principles", ICLR 2026), written two ways that compute the same thing.

Heads h with head dimension p, state size N, rank R (R = 1: SISO), groups of heads sharing B and C. Per
head and position t, with Δ_t > 0 and A_t < 0 data-dependent (the caller applies softplus and the floor):

    θ_t = θ_{t-1} + π·tanh(angles_t)·Δ_t                     cumulative angles: the complex state as RoPE
    k_{t,r} = R(θ_t)(B_{t,r} + B_bias_r),  q_{t,r} = R(θ_t)(C_{t,r} + C_bias_r),  v_{t,r} = x_t ⊙ mimo_x_r
    H_t = α_t H_{t-1} + β_t Σ_r v_{t-1,r} k_{t-1,r}ᵀ + γ_t Σ_r v_{t,r} k_{t,r}ᵀ     (exponential-trapezoidal)
          α_t = exp(A_t Δ_t),  λ_t = σ(trap_t),  β_t = (1 - λ_t) Δ_t α_t,  γ_t = λ_t Δ_t
    y_{t,r} = (H_t q_{t,r} + D v_{t,r}) ⊙ silu(z_t ⊙ mimo_z_r),   out_t = Σ_r y_{t,r} ⊙ mimo_o_r

R(θ) rotates pairs of the N axis: (2i, 2i+1) in the SISO kernels, (i, i + N/2) in the MIMO kernels
(``rotate_pairwise``; the default is the official choice); pairs past the number of angles stay as they are.
SISO has no mimo_* tensors (all ones, R = 1).

- :func:`mamba3_ref` (:mod:`.ref`) runs the recurrence one position at a time: the reference.
- :func:`mamba3_step` (:mod:`.ref`) is one position, updating a :class:`Mamba3State` (angle, ssm, k, v) in
  place, for generation.
- :func:`mamba3_chunked` (:mod:`.chunked`) is the SSD block decomposition with the trapezoid folded into
  the chunk mask, differentiated by autograd.
- :func:`mamba3_fused` (:mod:`.fused`) is the same decomposition as one autograd function with a
  hand-written backward that keeps only the inputs and the chunk start states: the training path.

:func:`mamba3` picks a form with ``backend``. Layouts: x, z (batch, L, heads, p); dt, A, trap (batch, L,
heads); B, C (batch, L, R, groups, N); angles (batch, L, heads, n_angles); B_bias, C_bias (heads, R, N); D
(heads,); mimo_x, mimo_z, mimo_o (heads, R, p). Computed in float32 (float64 for float64 x).
"""

from __future__ import annotations

import torch

from ..._checks import check_int
from ...errors import ConfigError
from .chunked import mamba3_chunked
from .common import Mamba3State
from .fused import mamba3_fused
from .ref import mamba3_ref, mamba3_step

__all__ = ["Mamba3State", "available_backends", "mamba3", "mamba3_chunked", "mamba3_fused", "mamba3_ref",
           "mamba3_step"]

_BACKENDS = ("chunked", "fused", "ref")


def available_backends() -> list[str]:
    """Names accepted by ``mamba3(..., backend=...)`` besides ``"auto"``."""
    return list(_BACKENDS)


def mamba3(
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
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, Mamba3State]:
    """Mamba-3 with a chosen form: "fused", "chunked", "ref" or "auto" ("fused" on CPU, where it measured
    faster than "chunked" for SISO and MIMO, see docs/benchmarks.md; "chunked" elsewhere, not measured);
    arguments as :func:`mamba3_ref`, plus ``chunk_size`` (checked for every backend). "fused" is not twice
    differentiable; "chunked" is.

    Raises:
        ConfigError: an unknown ``backend`` (the message lists the valid names) or a bad ``chunk_size``.
    """
    if not isinstance(backend, str) or (backend != "auto" and backend not in _BACKENDS):
        raise ConfigError(f"backend: expected 'auto' or one of {available_backends()}, got {backend!r}")
    check_int("chunk_size", chunk_size)
    args = (x, dt, A, B, C, trap, angles, B_bias, C_bias)
    kwargs = dict(D=D, z=z, mimo_x=mimo_x, mimo_z=mimo_z, mimo_o=mimo_o, initial_state=initial_state,
                  seq_idx=seq_idx, rotate_pairwise=rotate_pairwise, return_final_state=return_final_state)
    if backend == "ref":
        return mamba3_ref(*args, **kwargs)
    if backend == "chunked" or (backend == "auto" and x.device.type != "cpu"):
        return mamba3_chunked(*args, **kwargs, chunk_size=chunk_size)
    return mamba3_fused(*args, **kwargs, chunk_size=chunk_size)
