"""Mirror of ``mamba_ssm.ops.triton.ssd_combined``: ``mamba_chunk_scan_combined`` (mambakit's chunked SSD
plus the packed sequences of ``cu_seqlens``), ``mamba_split_conv1d_scan_combined`` and
``mamba_split_conv1d_scan_ref``."""

from __future__ import annotations

import math

import torch

from ...errors import ConfigError, ShapeError
from ..packing import seq_idx_from_cu_seqlens
from ..ssd import ssd
from ..ssd.varlen import varlen_states
from .split_conv1d import mamba_split_conv1d_scan_combined, mamba_split_conv1d_scan_ref

__all__ = ["mamba_chunk_scan_combined", "mamba_split_conv1d_scan_combined", "mamba_split_conv1d_scan_ref"]


def mamba_chunk_scan_combined(
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
    cu_seqlens: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    return_final_states: bool = False,
    return_varlen_states: bool = False,
    state_dtype: torch.dtype | None = None,
):
    """SSD with the official arguments: :func:`mambakit.ops.ssd.ssd` (chunked, hand-written backward), plus
    packed variable-length sequences.

    Args:
        x: (batch, L, heads, headdim).  dt: (batch, L, heads).  A: (heads,).  B, C: (batch, L, groups, N).
        chunk_size: chunk length (>= 1).  D: optional (heads,) or (heads, headdim).
        z: optional (batch, L, heads, headdim).  dt_bias: optional (heads,).
        initial_states: optional (batch, heads, headdim, N).  seq_idx: optional (batch, L) int.
        cu_seqlens: optional (n_seqs + 1,) cumulative lengths of the sequences packed in a batch of 1. The
            official kernel uses it for ``return_varlen_states`` only and leaves the outputs to ``seq_idx``;
            here a missing ``seq_idx`` is derived from it (so no state crosses a boundary) and a given one
            must mark the same boundaries.
        dt_softplus, dt_limit: Δ = clamp(softplus(dt + dt_bias), *dt_limit).
        return_final_states: also return the state after the last position (batch, heads, headdim, N).
        return_varlen_states: also return each packed sequence's final state (n_seqs, heads, headdim, N).
        state_dtype: dtype of the returned states (default float32, float64 for float64 x).

    Returns:
        out (batch, L, heads, headdim) in x's dtype; ``(out, final)``, ``(out, varlen)`` or
        ``(out, final, varlen)`` as officially. Gradients flow through every returned tensor (the official
        backward refuses varlen states).

    Raises:
        ConfigError: ``return_varlen_states`` without ``cu_seqlens``, a ``seq_idx`` that disagrees with it,
            or bad cumulative lengths. ShapeError: ``cu_seqlens`` with batch > 1.
    """
    if return_varlen_states and cu_seqlens is None:
        raise ConfigError("cu_seqlens: required with return_varlen_states=True, got None")
    if cu_seqlens is not None:
        if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[0] == 1):
            raise ShapeError("x: cu_seqlens packs sequences into a batch of 1, got shape "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        derived = seq_idx_from_cu_seqlens(cu_seqlens, x.shape[1]).to(x.device)
        if seq_idx is None:
            seq_idx = derived
        elif seq_idx.shape == derived.shape and not torch.equal(seq_idx.diff(dim=1) != 0,
                                                                  derived.diff(dim=1) != 0):
            raise ConfigError("seq_idx: expected the sequence boundaries of cu_seqlens "
                              f"{cu_seqlens.tolist()}, got seq_idx changing elsewhere")
    result = ssd(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                 seq_idx=seq_idx, dt_softplus=dt_softplus, dt_limit=dt_limit,
                 return_final_states=return_final_states)
    outs = list(result) if return_final_states else [result]
    if return_varlen_states:
        outs.append(varlen_states(x, dt, A, B, C, cu_seqlens, dt_bias=dt_bias, initial_states=initial_states,
                                  dt_softplus=dt_softplus, dt_limit=dt_limit))
    if state_dtype is not None:
        outs[1:] = [s.to(state_dtype) for s in outs[1:]]
    return outs[0] if len(outs) == 1 else tuple(outs)
