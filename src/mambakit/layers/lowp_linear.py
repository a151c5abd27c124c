"""A linear layer with low-precision weights for inference: bfloat16, or int8 with a float32 scale per
output channel; float32 arithmetic (:mod:`mambakit.ops.linear`)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, ShapeError
from ..ops.linear import WEIGHT_DTYPES, dequantize, linear_lowp, quantize_int8


class LowPrecisionLinear(nn.Module):
    """(..., in_features) -> (..., out_features) with weights stored in ``weights`` precision ("bf16" or
    "int8"); the bias (if any) stays float32. Built from a trained ``nn.Linear`` by :meth:`from_linear`;
    for inference (its weight is a buffer, not a parameter)."""

    def __init__(self, in_features: int, out_features: int, weights: str, bias: bool = False,
                 device=None) -> None:
        super().__init__()
        if weights not in WEIGHT_DTYPES:
            raise ConfigError(f"weights: expected one of {sorted(WEIGHT_DTYPES)}, got {weights!r}")
        self.in_features, self.out_features, self.weights = in_features, out_features, weights
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=WEIGHT_DTYPES[weights],
                                                   device=device))
        self.register_buffer("scales", torch.ones(out_features, device=device) if weights == "int8" else None)
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, weights: str) -> LowPrecisionLinear:
        """The same map with ``linear``'s weight rounded to bf16, or quantized to int8 per output channel."""
        layer = cls(linear.in_features, linear.out_features, weights, bias=linear.bias is not None,
                    device=linear.weight.device)
        with torch.no_grad():
            if weights == "int8":
                qweight, scales = quantize_int8(linear.weight)
                layer.weight.copy_(qweight)
                layer.scales.copy_(scales)
            else:
                layer.weight.copy_(linear.weight.detach().to(torch.bfloat16))
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach().float())
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 (out_features, in_features) weight this layer multiplies by."""
        return dequantize(self.weight, self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features) in x's dtype."""
        if x.shape[-1] != self.in_features:
            raise ShapeError(f"x: expected last dimension in_features={self.in_features}, got shape "
                             f"{tuple(x.shape)}")
        if x.device.type == "cpu" and self.weight.device.type == "cpu":
            from ..ops.linear import cpu

            if cpu.kernel_applies(x, self.weight):  # decoding: the kernel, on arrays made once
                key = (self.weight.data_ptr(), self.weight._version)
                if getattr(self, "_arrays_key", None) != key:
                    self._arrays = cpu.kernel_arrays(self.weight, self.scales, self.bias)
                    self._arrays_key = key
                return cpu.run_kernel(x, *self._arrays)
        return linear_lowp(x, self.weight, self.scales, self.bias, backend="ref")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, weights={self.weights}, "
                f"bias={self.bias is not None}")
