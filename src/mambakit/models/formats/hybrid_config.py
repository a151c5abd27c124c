"""Config pieces the hybrid families share: the Mamba-2 mixer's and the attention's config.json keys both
ways (Bamba's and Granite's Mamba-2 keys are the same; Nemotron-H names them its own way), and the gated
MLP's options."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from ..config import MambaConfig


def mamba2_fields(g: dict[str, Any], heads: str, head_dim: str, groups: str, d_state: str, d_conv: str,
                  expand: str, chunk: str, conv_bias: str, proj_bias: str, eps: str) -> dict[str, Any]:
    """The MambaConfig fields of a Mamba-2 mixer from the named config keys (Bamba's and Granite's names
    are the same; Nemotron-H's differ)."""
    d_inner = g[expand] * g["hidden_size"]
    p = d_inner // g[heads] if g[head_dim] == "auto" else g[head_dim]
    if g[heads] * p != d_inner:
        raise ConfigError(f"config.{heads}: expected {heads} · {head_dim} = {expand} · hidden_size = "
                          f"{d_inner}, got {g[heads]} · {p}")
    limit = tuple(g["time_step_limit"] or (0.0, float("inf")))
    return {
        "d_state": g[d_state], "d_conv": g[d_conv], "expand": g[expand], "conv_bias": g[conv_bias],
        "bias": g[proj_bias], "mixer": "mamba2",
        "mixer_cfg": {"headdim": p, "ngroups": g[groups], "chunk_size": g[chunk], "norm_eps": g[eps],
                      "dt_limit": limit},
    }


def attention_options(g: dict[str, Any], head_dim: int, rotary: int, rope_base: float,
                      bias_key: str | None = "attention_bias", **extra: Any) -> dict[str, Any]:
    """The ``layer_cfg['attention']`` of a family's attention layers."""
    return {"n_heads": g["num_attention_heads"], "n_kv_heads": g["num_key_value_heads"] or
            g["num_attention_heads"], "head_dim": head_dim, "rotary_dim": rotary, "rope_base": rope_base,
            "bias": bool(g[bias_key]) if bias_key else False, **extra}


def drop_unused(kinds: list[str], layer_cfg: dict[str, dict]) -> dict[str, dict]:
    """``layer_cfg`` without the kinds no layer has."""
    return {k: v for k, v in layer_cfg.items() if k in kinds}


def mamba2_keys(config: MambaConfig) -> dict[str, Any]:
    """Bamba's and Granite's config.json keys of the Mamba-2 mixer."""
    if config.mixer != "mamba2":
        raise ConfigError(f"MambaConfig.mixer: the {config.hf_model_type} format holds Mamba-2 mixers, "
                          f"got {config.mixer!r}")
    o = config.mamba2_options
    plain = o["d_ssm"] in (None, config.d_inner) and o["rmsnorm"]
    if not plain or o["D_has_hdim"] or o["norm_before_gate"]:
        raise ConfigError("MambaConfig.mixer_cfg: the format holds the plain Mamba-2 block (d_ssm = d_inner, "
                          f"rmsnorm, norm after gate, D per head), got {config.mixer_cfg!r}")
    if o["norm_eps"] != config.norm_epsilon:
        raise ConfigError(f"MambaConfig.mixer_cfg['norm_eps']: expected norm_epsilon={config.norm_epsilon} "
                          f"(one rms_norm_eps), got {o['norm_eps']}")
    return {
        "mamba_n_heads": config.d_inner // o["headdim"], "mamba_d_head": o["headdim"],
        "mamba_n_groups": o["ngroups"], "mamba_d_state": config.d_state, "mamba_d_conv": config.d_conv,
        "mamba_expand": config.expand, "mamba_chunk_size": o["chunk_size"],
        "mamba_conv_bias": config.conv_bias, "mamba_proj_bias": config.bias,
        "time_step_limit": list(o["dt_limit"]), "rms_norm_eps": config.norm_epsilon,
    }


def attention_keys(config: MambaConfig, partial: float | None) -> dict[str, Any]:
    """The attention keys (heads, bias, RoPE) of ``layer_cfg['attention']``; ``partial`` is the family's
    fixed partial_rotary_factor (None: no RoPE)."""
    a = config.layer_cfg.get("attention", {})
    heads = a.get("n_heads", max(1, config.d_model // 16))
    if a.get("head_dim", config.d_model // heads) * heads != config.d_model or a.get("sliding_window"):
        raise ConfigError("MambaConfig.layer_cfg['attention']: the format holds head_dim = d_model / n_heads "
                          f"and no sliding window, got {a!r}")
    head_dim = config.d_model // heads
    want = 0 if partial is None else int(head_dim * partial)
    if a.get("rotary_dim", head_dim) != want:
        raise ConfigError(f"MambaConfig.layer_cfg['attention']['rotary_dim']: the format turns {want} "
                          f"channels of each head, got {a.get('rotary_dim', head_dim)}")
    keys = {"num_attention_heads": heads, "num_key_value_heads": a.get("n_kv_heads", heads),
            "attention_bias": a.get("bias", False)}
    if partial is not None:
        keys["rope_parameters"] = {"rope_type": "default", "rope_theta": a.get("rope_base", 10000.0)}
    return keys


def mlp_keys(config: MambaConfig, kind: str = "mlp") -> dict[str, Any]:
    """``layer_cfg[kind]`` of a gated MLP as (d_intermediate, activation, bias)."""
    m = config.layer_cfg.get(kind, {})
    if not m.get("gated", True):
        raise ConfigError(f"MambaConfig.layer_cfg[{kind!r}]['gated']: the format holds gated MLPs, got False")
    return {"d_intermediate": m.get("d_intermediate", 4 * config.d_model),
            "activation": m.get("activation", "silu"), "bias": m.get("bias", False)}




#: Bamba's and Granite's config.json keys of the Mamba-2 mixer, in :func:`mamba2_fields`' order.
MAMBA_KEYS = ("mamba_n_heads", "mamba_d_head", "mamba_n_groups", "mamba_d_state", "mamba_d_conv",
              "mamba_expand", "mamba_chunk_size", "mamba_conv_bias", "mamba_proj_bias", "rms_norm_eps")


def hybrid_config(g: dict[str, Any], model_type: str, kinds: list[str], layer_cfg: dict[str, dict],
                  eps_key: str, **fields: Any) -> MambaConfig:
    """The MambaConfig of a transformers hybrid: RMSNorm with ``g[eps_key]``, an unpadded vocabulary, the
    residual in the model's dtype, ``layer_cfg`` of the kinds present; ``fields``: the mixer's and others."""
    return MambaConfig(
        d_model=g["hidden_size"], n_layer=len(kinds), vocab_size=g["vocab_size"], rms_norm=True,
        residual_in_fp32=False, pad_vocab_size_multiple=1, tie_embeddings=g["tie_word_embeddings"],
        norm_epsilon=g[eps_key], layer_types=kinds, layer_cfg=drop_unused(kinds, layer_cfg),
        hf_model_type=model_type, **fields,
    )
