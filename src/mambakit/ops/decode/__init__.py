"""One decoding step of the whole Mamba block's middle, from in_proj's output to out_proj's input:
:func:`mamba_decode_step` chooses between the reference (:mod:`.ref`, the composition of the one-step ops)
and the fused numba kernel (:mod:`.cpu`), which does it in one call per layer instead of some thirty small
torch operations (their dispatch, not their arithmetic, is what a batch-1 decode step pays for)."""

from __future__ import annotations

import torch

from ...errors import ConfigError
from .ref import mamba_decode_step_ref

__all__ = ["fused_step_applies", "mamba_decode_step", "mamba_decode_step_ref"]

_BACKENDS = ("auto", "ref", "cpu")


def fused_step_applies(xz, conv_state, ssm_state, *params) -> bool:
    """Whether the fused kernel can run these arguments: CPU tensors, all float32 or all float64, and
    nothing that autograd would need to differentiate."""
    tensors = [xz, conv_state, ssm_state, *(p for p in params if p is not None)]
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return False
    dtype = xz.dtype
    if dtype not in (torch.float32, torch.float64) or any(t.dtype != dtype for t in tensors):
        return False
    if any(t.device.type != "cpu" for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def mamba_decode_step(
    xz: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_proj_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor | None,
    backend: str = "auto",
) -> torch.Tensor:
    """Arguments and result as :func:`~.ref.mamba_decode_step_ref`; ``backend``: ``"ref"``, ``"cpu"`` (the
    fused kernel: CPU tensors of one dtype, float32 or float64, no autograd) or ``"auto"`` (``"cpu"``
    wherever it applies, else ``"ref"``)."""
    if backend not in _BACKENDS:
        raise ConfigError(f"backend: expected one of {list(_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = "cpu" if fused_step_applies(xz, conv_state, ssm_state, conv_weight, conv_bias,
                                               x_proj_weight, dt_proj_weight, dt_proj_bias, A, D) else "ref"
    if backend == "cpu":
        from .cpu import mamba_decode_step_cpu

        return mamba_decode_step_cpu(xz, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
                                     dt_proj_weight, dt_proj_bias, A, D)
    return mamba_decode_step_ref(xz, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight,
                                 dt_proj_weight, dt_proj_bias, A, D)
