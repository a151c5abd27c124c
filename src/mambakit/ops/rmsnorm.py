"""RMSNorm as functions, the plain one and the grouped, gated one of Mamba-2; the modules of
:mod:`mambakit.layers.norm` and the official fused operations (:mod:`mambakit.ops.official`) use these.
Computed in float32 (float64 for float64 input), returned in x's dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import compute_dtype


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x², last axis) + eps) · weight; x (..., d), weight (d,)."""
    dtype = compute_dtype(x)
    xf = x.to(dtype)
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(dtype)).to(x.dtype)


def rms_norm_gated(x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor, eps: float,
                   group_size: int, norm_before_gate: bool) -> torch.Tensor:
    """RMSNorm over each group of ``group_size`` consecutive channels, gated by silu(z).

    ``norm_before_gate``: rmsnorm(x)·weight·silu(z); otherwise rmsnorm(x·silu(z))·weight. x, z (..., d),
    weight (d,); without z, the plain grouped norm.
    """
    dtype = compute_dtype(x)
    xf = x.to(dtype)
    gate = F.silu(z.to(dtype)) if z is not None else None
    if gate is not None and not norm_before_gate:
        xf = xf * gate
    grouped = xf.unflatten(-1, (-1, group_size))
    xf = (grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2) * weight.to(dtype)
    if gate is not None and norm_before_gate:
        xf = xf * gate
    return xf.to(x.dtype)
