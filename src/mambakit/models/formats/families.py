"""The hybrid model families whose Hugging Face checkpoints mambakit reads and writes, by ``model_type``.

Each module holds MODEL_TYPE, ARCHITECTURE, ``config_from_hf(raw) -> MambaConfig``,
``config_to_hf(config) -> dict``, ``weights_from_hf(tensors, config, raw)`` (raw: the config.json object)
and ``weights_to_hf(tensors, config)``; its quirks (multipliers, norms, RoPE variants, layouts) stay in it.
"""

from __future__ import annotations

from types import ModuleType

from ...errors import ConfigError
from . import bamba, falcon_h1, granite, jamba, nemotron_h, zamba2

FAMILIES: dict[str, ModuleType] = {m.MODEL_TYPE: m
                                   for m in (bamba, falcon_h1, granite, jamba, nemotron_h, zamba2)}


def family(model_type: str | None, field: str = "MambaConfig.hf_model_type") -> ModuleType:
    """The format module of ``model_type``; others raise :class:`ConfigError` naming ``field``."""
    if model_type not in FAMILIES:
        raise ConfigError(f"{field}: expected one of {sorted(FAMILIES)} (a hybrid family transformers "
                          f"loads), got {model_type!r}")
    return FAMILIES[model_type]
