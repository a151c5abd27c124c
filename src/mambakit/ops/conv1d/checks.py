"""Argument checks shared by the reference and the fused causal convolution."""

from __future__ import annotations

import torch

from ..._checks import check_shape, check_tensor
from ...errors import ConfigError, ShapeError

_ACTIVATIONS = (None, "silu", "swish")


def check_conv_params(weight: torch.Tensor, bias: torch.Tensor | None, dim: int,
                      activation: str | None) -> None:
    """Validate the convolution's parameters for ``dim`` channels: weight (dim, width >= 1), bias (dim,) or
    None, activation None, "silu" or "swish"; raises a mambakit error naming the argument."""
    check_tensor("weight", weight, ndim=2)
    check_shape("weight", weight, (dim, None), "(dim, width)")
    if weight.shape[1] < 1:
        raise ShapeError(f"weight: width (dim 1) must be >= 1, got {weight.shape[1]}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        check_shape("bias", bias, (dim,))
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"activation: expected None, 'silu' or 'swish', got {activation!r}")
