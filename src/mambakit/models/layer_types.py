"""Per-layer block kinds of a hybrid stack (``MambaConfig.layer_types``) and the options of each kind.

A hybrid is one pre-norm residual stack whose layer ``i`` is a block of kind ``layer_types[i]``: any
registered mixer (mamba, mamba2, s4d, s4, lru, attention, ...), a feed-forward "mlp" or a mixture-of-experts
"moe" (:mod:`mambakit.models.mixers`). A model whose layers carry a mixer *and* a feed-forward sublayer
(Jamba, Bamba, Granite 4.0) is the same stack with the two sublayers as consecutive layers.

The options of the kind named by ``MambaConfig.mixer`` are that config's fields and ``mixer_cfg``, as for a
pure model; those of every other kind are ``layer_cfg[kind]`` (a dict of the kind's keyword options).
A pattern string (Nemotron-H's ``hybrid_override_pattern``) gives one character per layer: see
:data:`PATTERN_KINDS`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from .config import MambaConfig

#: One character per layer in a pattern string, as Nemotron-H writes it.
PATTERN_KINDS = {"M": "mamba2", "*": "attention", "-": "mlp", "E": "moe"}


def parse_layer_types(value: object) -> list[str] | None:
    """``layer_types`` as a list of kind names: a pattern string is expanded, a list is checked."""
    if value is None:
        return None
    if isinstance(value, str):
        bad = sorted(set(value) - set(PATTERN_KINDS))
        if bad or not value:
            raise ConfigError(f"MambaConfig.layer_types: expected a pattern of {sorted(PATTERN_KINDS)} "
                              f"(one character a layer) or a list of kinds, got {value!r}")
        return [PATTERN_KINDS[c] for c in value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(k, str) and k for k in value):
        raise ConfigError(f"MambaConfig.layer_types: expected a non-empty list of layer kinds (e.g. "
                          f"['mamba2', 'attention', 'mlp']) or a pattern string, got {value!r}")
    return list(value)


def validate_layer_types(config: MambaConfig) -> None:
    """Raise :class:`ConfigError` naming ``layer_types`` or ``layer_cfg`` when they do not fit together."""
    if config.layer_types is None:
        if config.layer_cfg:
            raise ConfigError(f"MambaConfig.layer_cfg: expected {{}} without layer_types, "
                              f"got keys {sorted(config.layer_cfg)}")
        return
    if len(config.layer_types) != config.n_layer:
        raise ConfigError(f"MambaConfig.layer_types: expected n_layer={config.n_layer} entries, "
                          f"got {len(config.layer_types)}")
    if not isinstance(config.layer_cfg, dict):
        raise ConfigError(f"MambaConfig.layer_cfg: expected a dict kind -> options, got {config.layer_cfg!r}")
    for kind, options in config.layer_cfg.items():
        if kind == config.mixer:
            raise ConfigError(f"MambaConfig.layer_cfg: the options of {kind!r} (MambaConfig.mixer) are the "
                              "config's fields and mixer_cfg; expected no layer_cfg entry for it")
        if kind not in config.layer_types:
            raise ConfigError(f"MambaConfig.layer_cfg: key {kind!r} is no kind of layer_types "
                              f"{sorted(set(config.layer_types))}")
        if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
            raise ConfigError(f"MambaConfig.layer_cfg[{kind!r}]: expected a dict of keyword options, "
                              f"got {options!r}")


def layer_kind(config: MambaConfig, layer_idx: int) -> str:
    """The kind of block of layer ``layer_idx``."""
    return config.mixer if config.layer_types is None else config.layer_types[layer_idx]


def kind_config(config: MambaConfig, kind: str) -> MambaConfig:
    """The config a block of ``kind`` is built from: ``config`` itself for ``config.mixer``, else a copy
    whose mixer is ``kind`` and whose mixer_cfg is ``layer_cfg[kind]`` (a pure model of that kind)."""
    if kind == config.mixer:
        return config
    options: dict[str, Any] = dict(config.layer_cfg.get(kind, {}))
    changes: dict[str, Any] = {"mixer": kind, "mixer_cfg": options, "layer_types": None, "layer_cfg": {}}
    if kind == "mamba2":
        changes["dt_rank"] = "auto"
    try:
        return dataclasses.replace(config, **changes)
    except ConfigError as e:
        raise ConfigError(f"MambaConfig.layer_cfg[{kind!r}]: {e}") from e
