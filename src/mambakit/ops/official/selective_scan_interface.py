"""Mirror of ``mamba_ssm.ops.selective_scan_interface``: ``selective_scan_fn``, ``selective_scan_ref``,
``mamba_inner_fn`` and ``mamba_inner_ref`` with the official arguments, on mambakit's CPU kernels."""

from __future__ import annotations

import torch

from ..selective_scan import selective_scan, selective_scan_ref
from .mamba_inner import mamba_inner_fn, mamba_inner_ref

__all__ = ["mamba_inner_fn", "mamba_inner_ref", "selective_scan_fn", "selective_scan_ref"]


def selective_scan_fn(
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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The selective scan with the official arguments: :func:`mambakit.ops.selective_scan` on its fastest
    backend (the fused numba kernels on the CPU, forward and backward).

    Args:
        u, delta, z: (batch, dim, L).  A: (dim, N), real or complex.  B, C: (dim, N), (batch, N, L) or
            (batch, groups, N, L) (for complex A interleaved re/im along L).  D, delta_bias: optional (dim,).
        delta_softplus: softplus on delta + delta_bias.  return_last_state: also return the last state.

    Returns:
        out (batch, dim, L) in u's dtype; with ``return_last_state`` ``(out, last_state)``, last_state
        (batch, dim, N) in float32 (float64 for float64 input). Unlike the official kernel, gradients flow
        through last_state too.
    """
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
