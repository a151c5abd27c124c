"""The Hugging Face (transformers ``MambaForCausalLM`` / ``Mamba2ForCausalLM``) checkpoint format: its
config.json keys and its weight names, both directions.

config.json: model_type "mamba", hidden_size, state_size, num_hidden_layers, conv_kernel, time_step_rank,
use_bias, use_conv_bias, ...; or, for Mamba-2 (``mixer="mamba2"``), model_type "mamba2", num_heads, head_dim,
n_groups, chunk_size, time_step_limit, ...

Weights: the model's names except ``backbone.embeddings.weight`` for the embedding, no ``lm_head.weight``
when tied, and an unpadded vocabulary: HF's ``vocab_size`` is the number of embedding rows. Exporting keeps
only the first ``vocab_size`` rows (the padded rows are never looked up and their logits are never sampled);
importing keeps HF's ``vocab_size`` and pads with zero rows. Logits over the real vocabulary are identical
either way.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import torch

from ..._checks import check_int, check_mapping
from ...errors import CheckpointError, ConfigError
from ..config import MambaConfig, as_pair
from .state_spaces import EMBEDDING, HEAD

HF_EMBEDDING = "backbone.embeddings.weight"

# transformers' MambaConfig defaults (transformers 4.x/5.x), used for keys a config.json leaves out.
_HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50280,
    "hidden_size": 768,
    "state_size": 16,
    "num_hidden_layers": 32,
    "layer_norm_epsilon": 1e-5,
    "expand": 2,
    "conv_kernel": 4,
    "use_bias": False,
    "use_conv_bias": True,
    "hidden_act": "silu",
    "residual_in_fp32": True,
    "time_step_rank": "auto",
    "time_step_min": 0.001,
    "time_step_max": 0.1,
    "time_step_floor": 1e-4,
    "tie_word_embeddings": True,
}

# transformers' Mamba2Config defaults (transformers 5.x), used for keys a config.json leaves out.
_HF2_DEFAULTS: dict[str, Any] = {
    "num_heads": 128,
    "head_dim": 64,
    "vocab_size": 32768,
    "hidden_size": 4096,
    "state_size": 128,
    "num_hidden_layers": 64,
    "layer_norm_epsilon": 1e-5,
    "expand": 2,
    "conv_kernel": 4,
    "n_groups": 8,
    "use_bias": False,
    "use_conv_bias": True,
    "hidden_act": "silu",
    "residual_in_fp32": True,
    "time_step_min": 0.001,
    "time_step_max": 0.1,
    "time_step_floor": 1e-4,
    "time_step_limit": (0.0, math.inf),
    "chunk_size": 256,
    "tie_word_embeddings": False,
}

# The keys each reader reads ("d_model"/"n_layer": state-spaces names converted checkpoints also carry;
# rms_norm/norm_before_gate: Mamba-2 keys of older transformers, checked for the one value we implement).
_READ = {
    "mamba": frozenset(_HF_DEFAULTS) | {"intermediate_size", "pad_vocab_size_multiple", "d_model", "n_layer"},
    "mamba2": frozenset(_HF2_DEFAULTS)
    | {"pad_vocab_size_multiple", "d_model", "n_layer", "rms_norm", "norm_before_gate"},
}
# Keys the other kind's reader reads that mean nothing to this kind (Mamba-2 has no Δ projection whose rank
# to set; Mamba-1 configs converted from state-spaces carry rms_norm).
_OWN_UNUSED = {"mamba": frozenset({"rms_norm"}), "mamba2": frozenset({"time_step_rank"})}
# MambaConfig field -> the key transformers' Mamba and Mamba-2 configs both give it (read and written).
_SHARED_KEYS = {
    "vocab_size": "vocab_size",
    "d_model": "hidden_size",
    "d_state": "state_size",
    "n_layer": "num_hidden_layers",
    "norm_epsilon": "layer_norm_epsilon",
    "expand": "expand",
    "d_conv": "conv_kernel",
    "bias": "use_bias",
    "conv_bias": "use_conv_bias",
    "residual_in_fp32": "residual_in_fp32",
    "dt_min": "time_step_min",
    "dt_max": "time_step_max",
    "dt_init_floor": "time_step_floor",
    "tie_embeddings": "tie_word_embeddings",
}
_TYPO_CUTOFF = 0.85  # difflib ratio above which an unknown key is taken for a misspelt key we read


def _check_keys(d: dict[str, Any], kind: str) -> None:
    """Refuse the keys whose value we could not honour: the other kind's keys, and near-misses of ours."""
    other = "mamba" if kind == "mamba2" else "mamba2"
    own = _READ[kind] | _OWN_UNUSED[kind] | {"model_type"}
    label = f"a Hugging Face Mamba{'-2' if kind == 'mamba2' else ''} config (model_type {kind!r})"
    foreign = sorted((_READ[other] - own) & set(d))
    if foreign:
        raise ConfigError(
            f"config: unknown key(s) {foreign} for {label}; they are keys of model_type {other!r}"
        )
    for key in sorted(set(d) - own):
        near = difflib.get_close_matches(key, sorted(_READ[kind]), n=1, cutoff=_TYPO_CUTOFF)
        if near:
            raise ConfigError(f"config: unknown key(s) [{key!r}] for {label}; did you mean {near[0]!r}?")


def config_to_hf(config: MambaConfig) -> dict[str, Any]:
    """The ``config.json`` dict of a transformers ``MambaForCausalLM`` with ``config``'s hyper-parameters.

    For ``mixer="mamba2"``, the ``config.json`` of a transformers ``Mamba2ForCausalLM``; ``A_init_range``
    only steers initialisation and is not stored there.

    Raises :class:`ConfigError` for what transformers' Mamba cannot express (LayerNorm, other mixers).
    """
    if config.mixer not in ("mamba", "mamba2"):
        raise ConfigError(
            "MambaConfig.mixer: the Hugging Face format holds only 'mamba' or 'mamba2', "
            f"got {config.mixer!r}"
        )
    if not config.rms_norm:
        raise ConfigError("MambaConfig.rms_norm: the Hugging Face Mamba uses RMSNorm only, got False")
    if config.mixer == "mamba2":
        return _config_to_hf_mamba2(config)
    return {
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        **_shared_keys(config),
        "intermediate_size": config.d_inner,
        "hidden_act": "silu",
        "time_step_rank": config.dt_rank,
        "time_step_scale": 1.0,
        "time_step_init_scheme": "random",
        # Init-only in transformers, but transformers 5.x applies the out_proj rescale again to weights it
        # has just loaded, so a true value here would corrupt the model on load.
        "rescale_prenorm_residual": False,
        "pad_vocab_size_multiple": config.pad_vocab_size_multiple,
        "dtype": "float32",
    }


def _shared_keys(config: MambaConfig) -> dict[str, Any]:
    """The keys of :data:`_SHARED_KEYS` with ``config``'s values."""
    return {key: getattr(config, field) for field, key in _SHARED_KEYS.items()}


def _config_to_hf_mamba2(config: MambaConfig) -> dict[str, Any]:
    o = config.mamba2_options

    def refuse(key: str, expected: str) -> None:
        raise ConfigError(
            f"MambaConfig.mixer_cfg['{key}']: the Hugging Face Mamba-2 holds only {expected}, "
            f"got {o[key]!r}"
        )

    if o["d_ssm"] not in (None, config.d_inner):
        refuse("d_ssm", f"None (= d_inner = {config.d_inner}; no gated-MLP channels)")
    for key, value in (("rmsnorm", True), ("norm_before_gate", False), ("D_has_hdim", False)):
        if o[key] is not value:
            refuse(key, repr(value))
    if o["norm_eps"] != config.norm_epsilon:
        refuse("norm_eps", f"norm_epsilon = {config.norm_epsilon} (layer_norm_epsilon serves both norms)")
    return {
        "architectures": ["Mamba2ForCausalLM"],
        "model_type": "mamba2",
        **_shared_keys(config),
        "num_heads": config.d_inner // o["headdim"],
        "head_dim": o["headdim"],
        "n_groups": o["ngroups"],
        "chunk_size": o["chunk_size"],
        "hidden_act": "silu",
        "time_step_limit": list(o["dt_limit"]),
        "rescale_prenorm_residual": False,  # see config_to_hf: init-only, and harmful on load if true
        "pad_vocab_size_multiple": config.pad_vocab_size_multiple,
        # mambakit models know no special tokens; transformers' defaults (eos 2...) would stop generation
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "dtype": "float32",
    }


def config_from_hf(d: dict[str, Any]) -> MambaConfig:
    """Read a transformers ``MambaConfig`` ``config.json`` dict (model_type "mamba"), or a
    ``Mamba2Config`` one (model_type "mamba2", giving ``mixer="mamba2"``).

    Missing keys take transformers' defaults, as transformers itself does. The keys that mean something to
    mambakit are read and checked; the others (transformers' generic ones, and those that only steer its
    initialisation or implementation: time_step_scale, initializer_range, use_mambapy, ...) are ignored,
    except a key of the other Mamba kind (a relabelled config) or a near-miss of a key we read (a typo,
    whose value would silently give way to the default): those raise :class:`ConfigError` naming the key.
    ``pad_vocab_size_multiple`` is read when present (older HF exports carry it).
    """
    check_mapping("config", d)
    if d.get("model_type") not in ("mamba", "mamba2"):
        raise ConfigError(f"config.model_type: expected 'mamba' or 'mamba2', got {d.get('model_type')!r}")
    _check_keys(d, d["model_type"])
    mamba2 = d["model_type"] == "mamba2"
    d = _decode_special_floats(dict(d))
    # Converted checkpoints also carry the state-spaces names; they must agree with the HF ones.
    for ours, theirs in (("d_model", "hidden_size"), ("n_layer", "num_hidden_layers")):
        if ours in d:
            if theirs in d and d[theirs] != d[ours]:
                raise ConfigError(
                    f"config.{ours}: expected the same value as {theirs}={d[theirs]!r}, got {d[ours]!r}"
                )
            d.setdefault(theirs, d[ours])
    g = {**(_HF2_DEFAULTS if mamba2 else _HF_DEFAULTS), **d}
    if g["hidden_act"] not in ("silu", "swish"):
        raise ConfigError(f"config.hidden_act: expected 'silu', got {g['hidden_act']!r}")
    if mamba2:
        return _config_from_hf_mamba2(g)
    cfg = MambaConfig(**_shared_fields(g), dt_rank=g["time_step_rank"])
    if "intermediate_size" in d and d["intermediate_size"] != cfg.d_inner:
        raise ConfigError(
            f"config.intermediate_size: expected expand * hidden_size = {cfg.d_inner}, "
            f"got {d['intermediate_size']!r}"
        )
    return cfg


def _shared_fields(g: dict[str, Any]) -> dict[str, Any]:
    """The MambaConfig fields of :data:`_SHARED_KEYS` from ``g`` (a config dict with the defaults filled in);
    older HF exports carry ``pad_vocab_size_multiple``, newer ones do not (then the official 8)."""
    fields = {field: g[key] for field, key in _SHARED_KEYS.items()}
    return {**fields, "rms_norm": True, "pad_vocab_size_multiple": g.get("pad_vocab_size_multiple", 8)}


def _config_from_hf_mamba2(g: dict[str, Any]) -> MambaConfig:
    """``g``: a transformers Mamba2Config dict with the defaults filled in."""
    for key, value in (("rms_norm", True), ("norm_before_gate", False)):  # keys of older transformers
        if key in g and g[key] is not value:
            raise ConfigError(f"config.{key}: expected {value} (the HF Mamba-2 variant), got {g[key]!r}")
    heads, head_dim, groups = g["num_heads"], g["head_dim"], g["n_groups"]
    for key in ("num_heads", "head_dim", "n_groups", "hidden_size", "expand"):
        check_int(f"config.{key}", g[key])
    d_inner = g["expand"] * g["hidden_size"]
    if heads * head_dim != d_inner:
        raise ConfigError(
            f"config.num_heads: expected num_heads * head_dim = expand * hidden_size = {d_inner}, "
            f"got num_heads={heads} with head_dim={head_dim} (headdim mismatch)"
        )
    if heads % groups != 0:
        raise ConfigError(f"config.n_groups: expected a divisor of num_heads={heads}, got {groups!r}")
    limit = as_pair(g["time_step_limit"])
    if limit is None:
        raise ConfigError(
            f"config.time_step_limit: expected a pair [low, high], got {g['time_step_limit']!r}"
        )
    return MambaConfig(
        **_shared_fields(g),
        mixer="mamba2",
        mixer_cfg={
            "headdim": head_dim,
            "ngroups": groups,
            "chunk_size": g["chunk_size"],
            "dt_limit": limit,
            "norm_eps": g["layer_norm_epsilon"],  # transformers' gated norm uses it too
        },
    )


def _decode_special_floats(obj: Any) -> Any:
    """transformers 5 writes inf/nan in config.json as {"__float__": "Infinity"}; turn those into floats."""
    if isinstance(obj, dict):
        if set(obj) == {"__float__"} and obj["__float__"] in ("Infinity", "-Infinity", "NaN"):
            return float(obj["__float__"].replace("Infinity", "inf"))
        return {k: _decode_special_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_special_floats(v) for v in obj]
    return obj


def weights_to_hf(tensors: dict[str, torch.Tensor], config: MambaConfig) -> dict[str, torch.Tensor]:
    """The model's state dict (name -> tensor, on the CPU) as transformers stores it: the embedding renamed
    and cut to ``vocab_size`` rows, the tied head left out (an untied one cut to ``vocab_size`` rows too)."""
    out = dict(tensors)
    out[HF_EMBEDDING] = out.pop(EMBEDDING)[: config.vocab_size].clone()
    if config.tie_embeddings:
        del out[HEAD]
    else:
        out[HEAD] = out[HEAD][: config.vocab_size].clone()
    return out


def weights_from_hf(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Checkpoint tensors with transformers' embedding name -> the model's names (the others are the same).
    Unpadded rows are padded where the tensors meet the model (:mod:`mambakit.models.pretrained`)."""
    out = dict(tensors)
    if HF_EMBEDDING in out:
        if EMBEDDING in out:
            raise CheckpointError(f"{source}: holds both {HF_EMBEDDING!r} and {EMBEDDING!r}; expected one")
        out[EMBEDDING] = out.pop(HF_EMBEDDING)
    return out
