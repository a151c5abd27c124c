"""Causal depthwise 1-D convolution: :func:`causal_conv1d` chooses between the reference (:mod:`.ref`, with
the one-step ``causal_conv1d_update``) and the fused numba kernel (:mod:`.cpu`);
:func:`causal_conv1d_with_state` continues a sequence from a conv state (prefill in pieces)."""

from __future__ import annotations

import torch

from ...errors import ConfigError
from .ref import causal_conv1d_ref, causal_conv1d_update

__all__ = ["available_backends", "causal_conv1d", "causal_conv1d_ref", "causal_conv1d_update",
           "causal_conv1d_with_state"]

_CONV_BACKENDS = ("auto", "ref", "cpu")


def available_backends() -> list[str]:
    """Names accepted by ``causal_conv1d(..., backend=...)`` besides ``"auto"``."""
    return sorted(b for b in _CONV_BACKENDS if b != "auto")


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    backend: str = "auto",
    *,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal depthwise convolution, choosing its implementation; same results as :func:`causal_conv1d_ref`.

    Args:
        x: (batch, dim, L).  weight: (dim, width).  bias: optional (dim,).  activation: None, "silu" or
            "swish".
        backend: ``"auto"`` (the fused numba kernel for CPU tensors, else the reference), ``"cpu"`` or
            ``"ref"``.
        seq_idx: optional (batch, L) integer ids of packed sequences (no tap crosses into another).

    Returns:
        (batch, dim, L) in x's dtype.

    Raises:
        ConfigError: an unknown ``backend`` (the message lists the valid names).
    """
    if backend not in _CONV_BACKENDS:
        raise ConfigError(f"backend: expected one of {list(_CONV_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = "cpu" if isinstance(x, torch.Tensor) and x.device.type == "cpu" else "ref"
    if backend == "cpu":
        from .cpu import causal_conv1d_cpu  # numba loads only when the fused kernel is used

        return causal_conv1d_cpu(x, weight, bias, activation, seq_idx=seq_idx)
    return causal_conv1d_ref(x, weight, bias, activation, seq_idx=seq_idx)


def causal_conv1d_with_state(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    *,
    seq_idx: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`causal_conv1d` of x continuing the sequence ``conv_state`` summarises; updates it in place.

    Args:
        x: (batch, dim, L).  weight, bias, activation: as :func:`causal_conv1d`.
        conv_state: (batch, dim, width), the last ``width`` inputs before x, oldest first (zeros for a fresh
            sequence), as :func:`causal_conv1d_update` keeps it. On return: the last ``width`` inputs of
            x's last sequence (entries before that sequence's start are zeros).
        seq_idx: optional (batch, L) ids of packed sequences; the state belongs to the first one.

    Returns:
        (batch, dim, L): feeding a sequence in pieces through this equals one :func:`causal_conv1d` call.
    """
    W = weight.shape[1]
    x_ext = torch.cat([conv_state[:, :, 1:].to(x.dtype), x], dim=2)
    seq_ext = None
    if seq_idx is not None:
        seq_ext = torch.cat([seq_idx[:, :1].expand(-1, W - 1), seq_idx], dim=1)
    out = causal_conv1d(x_ext, weight, bias, activation, backend, seq_idx=seq_ext)[:, :, W - 1:]
    window = x_ext[:, :, -W:]
    if seq_ext is not None:  # the next token continues the last sequence only
        window = window * (seq_ext[:, -W:] == seq_idx[:, -1:])[:, None, :]
    conv_state.copy_(window)
    return out
