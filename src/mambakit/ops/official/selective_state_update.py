"""Mirror of ``mamba_ssm.ops.triton.selective_state_update``: ``selective_state_update`` (mambakit's one
implementation, :mod:`mambakit.ops.selective_scan.step`, which takes both official layouts and
``state_batch_indices``) and the plain reference ``selective_state_update_ref``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._checks import compute_dtype
from ..selective_scan.step import selective_state_update

__all__ = ["selective_state_update", "selective_state_update_ref"]


def selective_state_update_ref(
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
) -> torch.Tensor:
    """Reference step for real A, in the official layouts (see :func:`selective_state_update`); updates
    ``state`` in place and returns y in x's shape and dtype. A per-channel call is read as one head of
    ``dim`` channels with one group of B and C, as officially; checks are left to the implementation."""
    per_channel = state.dim() == 3
    if per_channel:   # one head: (batch, dim, ...) -> (batch, 1, dim, ...)
        state, x, dt, A = state.unsqueeze(1), x.unsqueeze(1), dt.unsqueeze(1), A.unsqueeze(0)
        z = None if z is None else z.unsqueeze(1)
        D = None if D is None else D.unsqueeze(0)
        dt_bias = None if dt_bias is None else dt_bias.unsqueeze(0)
    B = B.unsqueeze(1) if B.dim() == 2 else B                        # (batch, groups, N)
    C = C.unsqueeze(1) if C.dim() == 2 else C
    dtype = compute_dtype(state, x, dt, A, B, C)
    heads = state.shape[1]
    step = dt.to(dtype) + (0 if dt_bias is None else dt_bias.to(dtype))
    step = F.softplus(step) if dt_softplus else step                 # (batch, heads, headdim)
    Bh = B.to(dtype).repeat_interleave(heads // B.shape[1], dim=1)   # (batch, heads, N)
    Ch = C.to(dtype).repeat_interleave(heads // C.shape[1], dim=1)
    # a copy: autograd keeps h_{t-1}, which copy_ below overwrites
    new = (state.to(dtype, copy=True) * torch.exp(step[..., None] * A.to(dtype))
           + step[..., None] * Bh[:, :, None, :] * x.to(dtype)[..., None])
    state.copy_(new)
    y = torch.einsum("bhpn,bhn->bhp", new, Ch)
    if D is not None:
        y = y + D.to(dtype) * x.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(x.dtype)
    return y.squeeze(1) if per_channel else y
