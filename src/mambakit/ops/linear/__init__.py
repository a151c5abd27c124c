"""Weight-only low-precision linear maps (bfloat16, or int8 with per-channel scales), float32 arithmetic:
:func:`linear_lowp` picks the fused kernel (:mod:`.cpu`) for the few-row products of decoding and the
reference (:mod:`.ref`: dequantize, then one matmul) for everything else (prefill, training, GPUs)."""

from __future__ import annotations

import torch

from ...errors import ConfigError
from .ref import WEIGHT_DTYPES, dequantize, linear_lowp_ref, quantize_int8

__all__ = ["WEIGHT_DTYPES", "dequantize", "linear_lowp", "linear_lowp_ref", "quantize_int8"]


def linear_lowp(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """x (..., in) -> (..., out), as :func:`~.ref.linear_lowp_ref`; ``backend``: ``"ref"``, ``"cpu"`` or
    ``"auto"`` (the kernel for at most ``cpu.MAX_ROWS`` rows on the CPU outside autograd, else the
    reference)."""
    if backend not in ("auto", "ref", "cpu"):
        raise ConfigError(f"backend: expected one of ['auto', 'cpu', 'ref'], got {backend!r}")
    if backend != "ref":
        from .cpu import kernel_applies, linear_lowp_cpu  # numba loads with the first fused call

        if backend == "cpu" or (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)
                                and kernel_applies(x, weight)):
            return linear_lowp_cpu(x, weight, scales, bias)
    return linear_lowp_ref(x, weight, scales, bias)
