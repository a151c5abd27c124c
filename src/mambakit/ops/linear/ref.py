"""Weight-only low-precision linear maps: bfloat16 weights, or int8 weights with one float32 scale per
output channel, always multiplied and accumulated in float32. The reference dequantizes and calls
``F.linear``; the fused kernel (:mod:`.cpu`) never builds the float32 weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._checks import check_shape, check_tensor
from ...errors import DTypeError

WEIGHT_DTYPES = {"bf16": torch.bfloat16, "int8": torch.int8}


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: weight (out, in) float -> (qweight (out, in) int8, scales (out,)
    float32) with weight ≈ qweight · scales[:, None] and |qweight| <= 127 (an all-zero row gets scale 1)."""
    check_tensor("weight", weight, ndim=2)
    w = weight.detach().float()
    scales = w.abs().amax(dim=1) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    return torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


def dequantize(weight: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 weight (out, in) that a bf16 or an int8 (with ``scales``) weight stands for."""
    if weight.dtype == torch.int8:
        if scales is None:
            raise DTypeError("scales: an int8 weight needs its per-channel scales, got None")
        return weight.float() * scales.float()[:, None]
    if weight.dtype != torch.bfloat16:
        raise DTypeError(f"weight: expected a bfloat16 or int8 weight, got {weight.dtype}")
    return weight.float()


def check_lowp_args(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None,
                    bias: torch.Tensor | None) -> None:
    """x (..., in) float; weight (out, in) bf16 or int8; scales (out,) for int8 only; bias (out,)."""
    check_tensor("x", x)
    check_tensor("weight", weight, ndim=2, floating=False)
    if weight.dtype not in WEIGHT_DTYPES.values():
        raise DTypeError(f"weight: expected a bfloat16 or int8 weight, got {weight.dtype}")
    out_features, in_features = weight.shape
    check_shape("x", x, (*x.shape[:-1], in_features), "(..., in_features)")
    if weight.dtype == torch.int8:
        if scales is None:
            raise DTypeError("scales: an int8 weight needs its per-channel scales, got None")
        check_tensor("scales", scales, ndim=1)
        check_shape("scales", scales, (out_features,), "(out_features,)")
    elif scales is not None:
        raise DTypeError("scales: only an int8 weight has scales; got scales with a bfloat16 weight")
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        check_shape("bias", bias, (out_features,), "(out_features,)")


def linear_lowp_ref(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) -> (..., out) = x · dequantize(weight)ᵀ + bias, computed in float32 (float64 x stays
    float64), returned in x's dtype; differentiable in x and bias."""
    check_lowp_args(x, weight, scales, bias)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = dequantize(weight, scales).to(compute)
    y = F.linear(x.to(compute), w, None if bias is None else bias.to(compute))
    return y.to(x.dtype)
