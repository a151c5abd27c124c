"""RMSNorm (Zhang & Sennrich, "Root Mean Square Layer Normalization"), the norm of the Mamba residual
stack, and its grouped, gated form at the output of the Mamba-2 block."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_tensor
from ..errors import ConfigError, ShapeError
from ..ops.rmsnorm import rms_norm, rms_norm_gated


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dimension, computed in float32 (or float64).

    Parameter ``weight`` (d_model,), initialised to ones, as in ``mamba_ssm`` and transformers.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_model) -> same shape and dtype."""
        check_tensor("x", x)
        if x.dim() < 1 or x.shape[-1] != self.weight.shape[0]:
            raise ShapeError(
                f"x: expected last dimension {self.weight.shape[0]} (d_model), got shape {tuple(x.shape)}"
            )
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class RMSNormGated(nn.Module):
    """RMSNorm over groups of channels, gated by silu(z) (the Mamba-2 output norm).

    With ``norm_before_gate=False`` (Mamba-2's choice): out = rmsnorm(x · silu(z)) · weight; with True:
    out = rmsnorm(x) · weight · silu(z). The mean square is taken over each of the ``dim / group_size`` groups
    of consecutive channels separately. Computed in float32 (float64 for float64 input).
    """

    def __init__(self, dim: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        group_size = dim if group_size is None else group_size
        if group_size < 1 or dim % group_size != 0:
            raise ConfigError(f"group_size: expected a divisor of dim={dim}, got {group_size}")
        self.dim, self.eps, self.group_size, self.norm_before_gate = dim, eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """x, z: (..., dim) -> (..., dim) in x's dtype."""
        return rms_norm_gated(x, z, self.weight, self.eps, self.group_size, self.norm_before_gate)

    def extra_repr(self) -> str:
        return (f"{self.dim}, eps={self.eps}, group_size={self.group_size}, "
                f"norm_before_gate={self.norm_before_gate}")
