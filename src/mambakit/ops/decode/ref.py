"""The reference of the fused decoding step: the Mamba block's one-token ops, one after another."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..conv1d import causal_conv1d_update
from ..selective_scan import selective_state_update


def mamba_decode_step_ref(
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
) -> torch.Tensor:
    """One token through a Mamba block between its two projections; updates both states in place.

    Args:
        xz: (batch, 2·d_inner), in_proj's output: x then the gate z.
        conv_state: (batch, d_inner, d_conv), the last inputs of the convolution (shifted in place).
        ssm_state: (batch, d_inner, N), the SSM state (overwritten with the new one).
        conv_weight: (d_inner, d_conv); conv_bias: (d_inner,) or None.
        x_proj_weight: (dt_rank + 2N, d_inner); dt_proj_weight: (d_inner, dt_rank); dt_proj_bias: (d_inner,).
        A: (d_inner, N) real (``-exp(A_log)``); D: (d_inner,) or None.

    Returns:
        y (batch, d_inner) = (C·h + D·x) · silu(z), in xz's dtype: out_proj's input.
    """
    x, z = xz.chunk(2, dim=-1)
    x = causal_conv1d_update(x, conv_state, conv_weight, conv_bias, activation="silu")
    dt_rank = dt_proj_weight.shape[1]
    N = A.shape[1]
    dt, B, C = torch.split(F.linear(x, x_proj_weight), [dt_rank, N, N], dim=-1)
    dt = F.linear(dt, dt_proj_weight)
    return selective_state_update(ssm_state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_proj_bias, dt_softplus=True)
