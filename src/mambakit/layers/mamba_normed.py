"""Jamba's Mamba block: the Mamba block with an RMSNorm on each of Δ (low rank), B and C after ``x_proj``
(Lieber et al., "Jamba: A Hybrid Transformer-Mamba Language Model", 2024, for stable training at scale).

    Δ, B, C = x_proj(x).split;  Δ, B, C = dt_layernorm(Δ), b_layernorm(B), c_layernorm(C);  then as Mamba.

Everything else (parameters, state, step) is :class:`~mambakit.layers.mamba.MambaBlock`'s.
"""

from __future__ import annotations

import torch

from .mamba import MambaBlock
from .norm import RMSNorm


class MambaBlockNormedSSM(MambaBlock):
    """:class:`MambaBlock` with RMSNorms (epsilon ``norm_eps``) on Δ, B and C: (batch, L, d_model) -> same.

    Extra parameters: dt_layernorm.weight (dt_rank,), b_layernorm.weight and c_layernorm.weight (d_state,).
    """

    fused_decode = False  # the fused decoding kernel does not apply the norms

    def __init__(self, d_model: int, *args, norm_eps: float = 1e-6, device=None, dtype=None,
                 **kwargs) -> None:
        super().__init__(d_model, *args, device=device, dtype=dtype, **kwargs)
        factory = {"device": device, "dtype": dtype}
        self.dt_layernorm = RMSNorm(self.dt_rank, eps=norm_eps, **factory)
        self.b_layernorm = RMSNorm(self.d_state, eps=norm_eps, **factory)
        self.c_layernorm = RMSNorm(self.d_state, eps=norm_eps, **factory)

    def _ssm_params(self, x_dbl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_proj's output (..., dt_rank + 2N) -> the normalised Δ-low-rank, B and C."""
        dt, B, C = super()._ssm_params(x_dbl)
        return self.dt_layernorm(dt), self.b_layernorm(B), self.c_layernorm(C)
