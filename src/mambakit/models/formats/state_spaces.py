"""The official state-spaces (``mamba_ssm``) checkpoint format, which is mambakit's own: its config.json keys
and its weight names, both directions.

config.json: top-level d_model, n_layer, vocab_size, rms_norm, residual_in_fp32, fused_add_norm,
pad_vocab_size_multiple, tie_embeddings, with the block's own hyper-parameters under ``ssm_cfg``; Mamba-2 is
``ssm_cfg: {"layer": "Mamba2", ...}`` with the options as ``mamba_ssm``'s ``Mamba2`` names them, Mamba-3
``ssm_cfg: {"layer": "Mamba3", ...}`` with ``Mamba3``'s. Keys the
official code does not know (mixer, mixer_cfg, norm_epsilon) are written only when they differ from its
behaviour. Unknown keys are refused: the format is small and every key of it changes the model.

Weights: the model's own parameter names (backbone.embedding.weight, backbone.layers.{i}.norm.weight,
backbone.layers.{i}.mixer.*, backbone.norm_f.weight, lm_head.weight), the embedding rows padded to
pad_vocab_size_multiple, and ``lm_head.weight`` stored even when tied, as the official checkpoints do. Being
the model's own names, they load as they are.
"""

from __future__ import annotations

from typing import Any

import torch

from ..._checks import check_mapping
from ...errors import ConfigError
from ..config import MAMBA2_DEFAULTS, MAMBA2_PAIRS, REQUIRED_FIELDS, SHARED_BLOCK_FIELDS, MambaConfig
from ..mamba3_options import MAMBA3_DEFAULTS, MAMBA3_FIELDS, with_mamba3_defaults

EMBEDDING = "backbone.embedding.weight"
HEAD = "lm_head.weight"

_SSM_CFG_MAMBA1_KEYS = frozenset("dt_rank dt_init dt_scale use_fast_path".split())
# mamba_ssm Mamba2's constructor options (conv_init and use_mem_eff_path steer initialisation or the kernel)
_SSM_CFG_MAMBA2_KEYS = frozenset(MAMBA2_DEFAULTS) - {"norm_eps"} | {"conv_init", "use_mem_eff_path"}
# mamba_ssm Mamba3's options besides the shared fields (the last two steer the kernel or are absorbed)
_SSM_CFG_MAMBA3_KEYS = frozenset(MAMBA3_DEFAULTS) | {"fuse_pregate_headwise_norm", "dropout"}
_SSM_CFG_KEYS = (
    frozenset("d_state d_conv expand dt_min dt_max dt_init_floor conv_bias bias layer".split())
    | _SSM_CFG_MAMBA1_KEYS
    | _SSM_CFG_MAMBA2_KEYS
    | _SSM_CFG_MAMBA3_KEYS
)
_STATE_SPACES_KEYS = frozenset(
    "d_model d_intermediate n_layer vocab_size ssm_cfg attn_layer_idx attn_cfg rms_norm residual_in_fp32 "
    "fused_add_norm pad_vocab_size_multiple tie_embeddings".split()
) | {"mixer", "norm_epsilon", "mixer_cfg"}  # mambakit additions, written only when not the official behaviour
# mambakit's hybrid keys (MambaConfig fields of the same names), written only when not the default
_HYBRID_FIELDS = {"layer_types": None, "layer_cfg": {}, "embedding_multiplier": 1.0, "logits_multiplier": 1.0,
                  "hf_model_type": None, "shared_cfg": {}}
_STATE_SPACES_KEYS |= frozenset(_HYBRID_FIELDS)


def config_to_state_spaces(config: MambaConfig) -> dict[str, Any]:
    """The official ``config.json`` dict of ``config`` (loadable by ``mamba_ssm``'s MambaConfig when mixer is
    "mamba" or "mamba2" and norm_epsilon is the default)."""
    ssm_cfg: dict[str, Any] = config.shared_block_options
    # Keys the official code does not know are written only when they differ from its behaviour.
    extra: dict[str, Any] = {}
    if config.mixer == "mamba3":
        ssm_cfg = {"layer": "Mamba3", **{k: getattr(config, k) for k in MAMBA3_FIELDS},
                   **with_mamba3_defaults(config.mixer_cfg)}
    elif config.mixer == "mamba2":
        options = config.mamba2_options
        norm_eps = options.pop("norm_eps")  # mamba_ssm hard-codes 1e-5: any other value is a mambakit key
        ssm_cfg.update({k: list(v) if k in MAMBA2_PAIRS else v for k, v in options.items()})
        ssm_cfg["layer"] = "Mamba2"
        if norm_eps != MAMBA2_DEFAULTS["norm_eps"]:
            extra["mixer_cfg"] = {"norm_eps": norm_eps}
    else:
        ssm_cfg["dt_rank"] = config.dt_rank
        if config.mixer == "mamba":
            ssm_cfg["layer"] = "Mamba1"
        else:
            extra["mixer"] = config.mixer
            if config.mixer_cfg:
                extra["mixer_cfg"] = dict(config.mixer_cfg)
    if config.norm_epsilon != 1e-5:
        extra["norm_epsilon"] = config.norm_epsilon
    for key, default in _HYBRID_FIELDS.items():
        if getattr(config, key) != default:
            extra[key] = getattr(config, key)
    return {
        "d_model": config.d_model,
        "d_intermediate": 0,
        "n_layer": config.n_layer,
        "vocab_size": config.vocab_size,
        "ssm_cfg": ssm_cfg,
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": config.rms_norm,
        "residual_in_fp32": config.residual_in_fp32,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": config.pad_vocab_size_multiple,
        "tie_embeddings": config.tie_embeddings,
        **extra,
    }


def config_from_state_spaces(d: dict[str, Any]) -> MambaConfig:
    """Read an official state-spaces ``config.json`` dict. Raises :class:`ConfigError` naming the key."""
    check_mapping("config", d)
    unknown = sorted(set(d) - _STATE_SPACES_KEYS)
    if unknown:
        raise ConfigError(
            f"config: unknown key(s) {unknown} for a state-spaces config; "
            f"expected a subset of {sorted(_STATE_SPACES_KEYS)}"
        )
    missing = [k for k in REQUIRED_FIELDS if k not in d]
    if missing:
        raise ConfigError(f"config: missing required key(s) {missing} in a state-spaces config")
    if d.get("d_intermediate", 0) not in (0, None):
        raise ConfigError(
            f"config.d_intermediate: expected 0 (no MLP after the mixer; mambakit does not "
            f"implement it), got {d['d_intermediate']!r}"
        )
    if d.get("attn_layer_idx"):
        raise ConfigError(
            f"config.attn_layer_idx: expected [] (hybrid attention layers are not supported), "
            f"got {d['attn_layer_idx']!r}"
        )
    ssm_cfg = d.get("ssm_cfg") or {}
    check_mapping("config.ssm_cfg", ssm_cfg)
    unknown = sorted(set(ssm_cfg) - _SSM_CFG_KEYS)
    if unknown:
        raise ConfigError(
            f"config.ssm_cfg: unknown key(s) {unknown}; expected a subset of {sorted(_SSM_CFG_KEYS)}"
        )
    layer = ssm_cfg.get("layer", "Mamba1")
    if layer not in ("Mamba1", "Mamba2", "Mamba3"):
        raise ConfigError(f"config.ssm_cfg.layer: expected 'Mamba1', 'Mamba2' or 'Mamba3', got {layer!r}")
    if layer == "Mamba3" or d.get("mixer") == "mamba3":
        return _mamba3_config_from_state_spaces(d, ssm_cfg, layer)
    mixer = d.get("mixer", "mamba2" if layer == "Mamba2" else "mamba")
    if layer == "Mamba2" and mixer != "mamba2":
        raise ConfigError(
            f"config.mixer: expected 'mamba2' (or no 'mixer' key) with ssm_cfg.layer 'Mamba2', "
            f"got {mixer!r}"
        )
    if mixer == "mamba2" and layer != "Mamba2":
        raise ConfigError(
            f"config.ssm_cfg.layer: expected 'Mamba2' for mixer 'mamba2', got {layer!r}"
        )
    own, other = (
        (_SSM_CFG_MAMBA2_KEYS, _SSM_CFG_MAMBA1_KEYS)
        if mixer == "mamba2"
        else (_SSM_CFG_MAMBA1_KEYS, _SSM_CFG_MAMBA2_KEYS)
    )
    foreign = sorted(set(ssm_cfg) & other)
    if foreign:
        kind = "Mamba-1" if mixer == "mamba2" else "Mamba-2"
        raise ConfigError(
            f"config.ssm_cfg: key(s) {foreign} are {kind} options, not accepted with ssm_cfg.layer "
            f"{layer!r}"
        )
    # initialisation-only options: only the defaults are reproduced
    for key, default in (("dt_init", "random"), ("dt_scale", 1.0), ("conv_init", None)):
        if key in ssm_cfg and ssm_cfg[key] != default:
            raise ConfigError(
                f"config.ssm_cfg.{key}: only {default!r} is supported, got {ssm_cfg[key]!r}"
            )
    kwargs: dict[str, Any] = {
        "d_model": d["d_model"],
        "n_layer": d["n_layer"],
        "vocab_size": d["vocab_size"],
        "mixer": mixer,
    }
    for key in (*SHARED_BLOCK_FIELDS, "dt_rank"):
        if key in ssm_cfg:
            kwargs[key] = ssm_cfg[key]
    for key in (
        "rms_norm",
        "residual_in_fp32",
        "pad_vocab_size_multiple",
        "tie_embeddings",
        "norm_epsilon",
        "mixer_cfg",
        *_HYBRID_FIELDS,
    ):
        if key in d:
            kwargs[key] = d[key]
    if mixer == "mamba2":
        extra = kwargs.get("mixer_cfg", {})
        check_mapping("config.mixer_cfg", extra)
        kwargs["mixer_cfg"] = {
            **{k: ssm_cfg[k] for k in MAMBA2_DEFAULTS if k in ssm_cfg},
            **extra,
        }
    return MambaConfig(**kwargs)


def _mamba3_config_from_state_spaces(d: dict[str, Any], ssm_cfg: dict[str, Any], layer: str) -> MambaConfig:
    """The Mamba-3 part of :func:`config_from_state_spaces` (``ssm_cfg.layer == "Mamba3"``)."""
    if layer != "Mamba3" or d.get("mixer", "mamba3") != "mamba3":
        raise ConfigError(f"config.mixer: expected 'mamba3' (or no 'mixer' key) with ssm_cfg.layer 'Mamba3', "
                          f"got mixer {d.get('mixer')!r} with layer {layer!r}")
    foreign = sorted(set(ssm_cfg) - _SSM_CFG_MAMBA3_KEYS - set(MAMBA3_FIELDS) - {"layer"})
    if foreign:
        raise ConfigError(f"config.ssm_cfg: key(s) {foreign} are not Mamba3 options "
                          f"(ssm_cfg.layer 'Mamba3')")
    kwargs: dict[str, Any] = {k: d[k] for k in (*REQUIRED_FIELDS, "rms_norm", "residual_in_fp32",
                                               "pad_vocab_size_multiple", "tie_embeddings", "norm_epsilon")
                              if k in d}
    kwargs.update({k: ssm_cfg[k] for k in MAMBA3_FIELDS if k in ssm_cfg})
    extra = d.get("mixer_cfg", {})
    check_mapping("config.mixer_cfg", extra)
    kwargs["mixer_cfg"] = {**{k: ssm_cfg[k] for k in MAMBA3_DEFAULTS if k in ssm_cfg}, **extra}
    return MambaConfig(mixer="mamba3", **kwargs)


def weights_to_state_spaces(tensors: dict[str, torch.Tensor], config: MambaConfig) -> dict[str, torch.Tensor]:
    """The model's state dict (name -> tensor, on the CPU) as the official checkpoint stores it: the same
    names, with a tied head stored as its own copy (safetensors keeps no shared storage)."""
    out = dict(tensors)
    if config.tie_embeddings:
        out[HEAD] = out[HEAD].clone()
    return out

