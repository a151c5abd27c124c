"""Causal depthwise 1-D convolution, the short convolution in front of the Mamba scan.

Each channel is convolved with its own kernel of width W over the W-1 previous inputs and the current one
(zero left padding), so output t never sees input t+1. With packed sequences (``seq_idx``), nor an input of
another sequence: each sequence is convolved as if it stood alone. ``causal_conv1d_update`` is the same map
one step at a time, over a rolling window of the last W inputs (the conv state). Both are the readable
references (torch's grouped conv1d and a windowed sum) that the fused kernel of :mod:`.cpu` is tested
against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._checks import check_same_device, check_same_real_dtype, check_shape, check_tensor
from ..packing import check_seq_idx
from .checks import check_conv_params


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal depthwise convolution over the whole sequence.

    Args:
        x: (batch, dim, L).
        weight: (dim, width); ``weight[:, -1]`` multiplies the current input.
        bias: optional (dim,).
        activation: None, or "silu"/"swish" applied to the output.
        seq_idx: optional (batch, L) integer ids of packed sequences: output t reads only inputs of t's
            own sequence.

    Returns:
        (batch, dim, L) in x's dtype.
    """
    check_tensor("x", x, ndim=3)
    dim = x.shape[1]
    check_conv_params(weight, bias, dim, activation)
    if seq_idx is not None:
        check_seq_idx(seq_idx, x.shape[0], x.shape[2])
    check_same_device(x=x, weight=weight, bias=bias, seq_idx=seq_idx)
    check_same_real_dtype(x=x, weight=weight, bias=bias)
    width = weight.shape[1]
    if seq_idx is None:
        out = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1), bias, groups=dim)
    else:  # one shifted copy of x per tap, each kept only where it comes from the same sequence
        L = x.shape[2]
        x_pad = F.pad(x, (width - 1, 0))
        seq_pad = F.pad(seq_idx, (width - 1, 0))  # the padded inputs are zeros: their id does not matter
        out = x.new_zeros(x.shape) if bias is None else bias[:, None].expand(x.shape).clone()
        for k in range(width):
            same = (seq_pad[:, k : k + L] == seq_idx)[:, None, :]
            out = out + weight[:, k, None] * x_pad[:, :, k : k + L] * same
    return F.silu(out) if activation is not None else out


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """One step of :func:`causal_conv1d_ref`; shifts ``x`` into ``conv_state`` in place.

    Args:
        x: (batch, dim), the input at the new position.
        conv_state: (batch, dim, width), the last ``width`` inputs, oldest first (zeros before the start).
        weight, bias, activation: as in :func:`causal_conv1d_ref`.

    Returns:
        (batch, dim), equal to the column of the full-sequence convolution at this position.
    """
    check_tensor("x", x, ndim=2)
    batch, dim = x.shape
    check_conv_params(weight, bias, dim, activation)
    check_tensor("conv_state", conv_state, ndim=3)
    check_shape("conv_state", conv_state, (batch, dim, weight.shape[1]), "(batch, dim, width)")
    check_same_device(x=x, conv_state=conv_state, weight=weight, bias=bias)
    check_same_real_dtype(x=x, weight=weight, bias=bias)
    window = torch.cat([conv_state[:, :, 1:], x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)
    conv_state.copy_(window)
    # Use `window`, not conv_state: the next step overwrites conv_state, so autograd must not save it.
    out = (window.to(weight.dtype) * weight).sum(-1)
    if bias is not None:
        out = out + bias
    out = out.to(x.dtype)
    return F.silu(out) if activation is not None else out
