"""Attention and Mamba-2 side by side in one layer (Falcon-H1's mixer): both read the same normalised input
and their outputs are added,

    out = attention(x) + mamba(x)

so that a stack of (norm, parallel mixer) then (norm, MLP) layers is Falcon-H1's decoder. Any per-branch
scaling a checkpoint applies to the inputs or outputs of the branches is linear and is folded into the
branches' projections by its format (:mod:`mambakit.models.formats.falcon_h1`).

The state of the block is one flat dict holding both branches' states (the Mamba-2 conv_state and
ssm_state, the attention's key_cache, value_cache and length), so that it is an ordinary layer state of an
:class:`~mambakit.models.cache.InferenceCache`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .._checks import check_tensor
from ..errors import ConfigError
from .attention import _OPTIONS as _ATTENTION_OPTIONS
from .attention import CausalSelfAttention
from .mamba2 import Mamba2Block

_MAMBA2_OPTIONS = ("headdim", "ngroups", "d_inner", "chunk_size", "rmsnorm", "norm_before_gate", "norm_eps",
                   "D_has_hdim", "A_init_range", "dt_limit")


class ParallelAttentionMamba2(nn.Module):
    """attention(x) + mamba(x): (batch, L, d_model) -> (batch, L, d_model).

    Args:
        d_model: model width.
        attention: keyword options of :class:`~mambakit.layers.attention.CausalSelfAttention`.
        mamba2: keyword options of :class:`~mambakit.layers.mamba2.Mamba2Block`.
    Submodules ``attention`` and ``mamba``.
    """

    def __init__(self, d_model: int, attention: dict[str, Any] | None = None,
                 mamba2: dict[str, Any] | None = None, layer_idx: int | None = None, device=None,
                 dtype=None) -> None:
        super().__init__()
        factory = {"layer_idx": layer_idx, "device": device, "dtype": dtype}
        self.layer_idx = layer_idx
        self.attention = CausalSelfAttention(d_model, **(attention or {}), **factory)
        self.mamba = Mamba2Block(d_model, **(mamba2 or {}), **factory)

    @classmethod
    def from_config(cls, config, layer_idx: int, device=None, dtype=None) -> ParallelAttentionMamba2:
        """Build from a MambaConfig: the Mamba-2 branch takes the config's shared block fields (d_state,
        d_conv, expand, dt_min/max/init_floor, conv_bias, bias) and ``mixer_cfg['mamba2']``; the attention
        takes ``mixer_cfg['attention']``."""
        options = dict(getattr(config, "mixer_cfg", None) or {})
        unknown = sorted(set(options) - {"attention", "mamba2"})
        if unknown:
            raise ConfigError(f"MambaConfig.mixer_cfg: unknown key(s) {unknown} for 'parallel_hybrid'; "
                              "expected some of ['attention', 'mamba2']")
        mamba2 = dict(options.get("mamba2", {}))
        bad = sorted(set(mamba2) - set(_MAMBA2_OPTIONS))
        if bad:
            raise ConfigError(f"MambaConfig.mixer_cfg['mamba2']: unknown key(s) {bad}; expected some of "
                              f"{sorted(_MAMBA2_OPTIONS)}")
        attention = dict(options.get("attention", {}))
        bad = sorted(set(attention) - set(_ATTENTION_OPTIONS))
        if bad:
            raise ConfigError(f"MambaConfig.mixer_cfg['attention']: unknown key(s) {bad}; expected some of "
                              f"{sorted(_ATTENTION_OPTIONS)}")
        return cls(config.d_model, attention, {**config.shared_block_options, **mamba2},
                   layer_idx=layer_idx, device=device, dtype=dtype)

    def forward(self, hidden_states: Tensor, state: dict[str, Tensor] | None = None,
                seq_idx: Tensor | None = None) -> Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_model); with ``state`` both branches continue
        from it and leave it holding their states after the last position; ``seq_idx`` (batch, L): packed
        sequences, each on its own in both branches."""
        check_tensor("hidden_states", hidden_states, ndim=3)
        return (self.attention(hidden_states, state=state, seq_idx=seq_idx)
                + self.mamba(hidden_states, state=state, seq_idx=seq_idx))

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> dict[str, Tensor]:
        """Both branches' zero states in one dict: conv_state, ssm_state, key_cache, value_cache, length."""
        return {**self.mamba.allocate_state(batch_size, device, dtype),
                **self.attention.allocate_state(batch_size, device, dtype)}

    def step(self, hidden_states: Tensor, state: dict[str, Tensor]) -> Tensor:
        """One token: (batch, d_model) -> (batch, d_model); advances both branches' states."""
        return self.attention.step(hidden_states, state) + self.mamba.step(hidden_states, state)

