"""RMSNorm (Zhang & Sennrich, "Root Mean Square Layer Normalization"), the norm of the Mamba residual
stack."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_tensor
from ..errors import ShapeError


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
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(compute)
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.to(compute)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
