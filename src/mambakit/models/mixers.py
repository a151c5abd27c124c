"""Which sequence mixer a language model layer uses, by name (``MambaConfig.mixer``).

A factory takes ``(config, layer_idx, device, dtype)`` and returns an ``nn.Module`` following the mixer
protocol: ``forward(hidden_states (batch, L, d_model), state=None)``, ``allocate_state(batch_size, device,
dtype)`` and ``step(hidden_states (batch, d_model), state)``. Other mixers (S4D, LRU, attention, ...) register
themselves here, and so do the feed-forward kinds of hybrid stacks ("mlp", "moe"; stateless: their state is
an empty dict), Jamba's Mamba ("mamba_bcdt_norm") and Falcon-H1's attention beside Mamba-2
("parallel_hybrid"). A hybrid's layer kinds come from
``MambaConfig.layer_types`` (:mod:`.layer_types`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from ..errors import ConfigError
from ..layers.attention import CausalSelfAttention
from ..layers.lru import LRU
from ..layers.mamba import MambaBlock
from ..layers.mamba2 import Mamba2Block
from ..layers.mamba3 import Mamba3Block
from ..layers.mamba_normed import MambaBlockNormedSSM
from ..layers.mlp import GatedMLP
from ..layers.moe import MoE
from ..layers.parallel_hybrid import ParallelAttentionMamba2
from ..layers.s4 import S4
from ..layers.s4d import S4D
from .layer_types import kind_config, layer_kind
from .mamba3_options import mamba3_block_options

if TYPE_CHECKING:
    from .config import MambaConfig

MixerFactory = Callable[["MambaConfig", int, object, object], nn.Module]


def _build_mamba(config: MambaConfig, layer_idx: int, device=None, dtype=None) -> nn.Module:
    return MambaBlock(config.d_model, dt_rank=config.dt_rank, **config.shared_block_options,
                      layer_idx=layer_idx, device=device, dtype=dtype)


def _build_mamba2(config: MambaConfig, layer_idx: int, device=None, dtype=None) -> nn.Module:
    """The Mamba-2 block: shared options from the config's fields, the others from ``mixer_cfg``."""
    return Mamba2Block(config.d_model, **config.shared_block_options, **config.mamba2_options,
                       layer_idx=layer_idx, device=device, dtype=dtype)


def _build_mamba3(config: MambaConfig, layer_idx: int, device=None, dtype=None) -> nn.Module:
    """The Mamba-3 block: d_state, expand, dt_min/max/init_floor from the fields, the rest from mixer_cfg."""
    return Mamba3Block(config.d_model, **mamba3_block_options(config), layer_idx=layer_idx, device=device,
                       dtype=dtype)


def _build_mamba_normed(config: MambaConfig, layer_idx: int, device=None, dtype=None) -> nn.Module:
    """Jamba's Mamba block (RMSNorms on Δ, B, C); ``mixer_cfg`` may hold their ``norm_eps``."""
    options = dict(config.mixer_cfg)
    unknown = sorted(set(options) - {"norm_eps"})
    if unknown:
        raise ConfigError(f"MambaConfig.mixer_cfg: unknown key(s) {unknown} for 'mamba_bcdt_norm'; "
                          "expected some of ['norm_eps']")
    return MambaBlockNormedSSM(config.d_model, dt_rank=config.dt_rank, **config.shared_block_options,
                               **options, layer_idx=layer_idx, device=device, dtype=dtype)


_MIXERS: dict[str, MixerFactory] = {
    "mamba": _build_mamba,
    "mamba2": _build_mamba2,
    "mamba3": _build_mamba3,
    "s4d": S4D.from_config,
    "s4": S4.from_config,
    "lru": LRU.from_config,
    "attention": CausalSelfAttention.from_config,
    "mamba_bcdt_norm": _build_mamba_normed,
    "mlp": GatedMLP.from_config,
    "moe": MoE.from_config,
    "parallel_hybrid": ParallelAttentionMamba2.from_config,
}


def register_mixer(name: str, factory: MixerFactory) -> None:
    """Make ``MambaConfig(mixer=name)`` build its layers with ``factory(config, layer_idx, device, dtype)``.

    A mixer registered under an existing name replaces it."""
    _MIXERS[name] = factory


def available_mixers() -> list[str]:
    """Names accepted by ``MambaConfig.mixer``."""
    return sorted(_MIXERS)


def build_mixer(config: MambaConfig, layer_idx: int, device=None, dtype=None) -> nn.Module:
    """The block of layer ``layer_idx`` for ``config`` (its kind from ``layer_types``, else ``mixer``);
    unknown names raise :class:`ConfigError`."""
    kind = layer_kind(config, layer_idx)
    if kind not in _MIXERS:
        field = "mixer" if config.layer_types is None else f"layer_types[{layer_idx}]"
        raise ConfigError(f"MambaConfig.{field}: expected one of {available_mixers()}, got {kind!r}")
    return _MIXERS[kind](kind_config(config, kind), layer_idx, device, dtype)
