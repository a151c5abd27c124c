"""The Jamba format (transformers ``JambaForCausalLM``): config.json keys and weight names, both ways.

A Jamba layer is a mixer after ``input_layernorm`` then a feed-forward after ``pre_ff_layernorm``: HF layer
i is the model's layers 2i and 2i + 1. The mixer is an attention (``self_attn.q/k/v/o_proj``: grouped-query,
no positional encoding, no biases) on the layers i with ``i % attn_layer_period == attn_layer_offset``, and
elsewhere Jamba's Mamba (``mamba.*``: the Mamba-1 block with RMSNorms on Δ, B and C, kind
"mamba_bcdt_norm"). The feed-forward is a mixture of experts (``feed_forward.router.weight``,
``feed_forward.experts.{e}.gate_proj/up_proj/down_proj``: softmax over all experts, the top-k weights left
unnormalised) on the layers with ``i % expert_layer_period == expert_layer_offset`` when
``num_experts > 1``, and a gated MLP (``feed_forward.gate_proj/up_proj/down_proj``) elsewhere; experts and
MLP share ``intermediate_size`` and ``hidden_act``, which is also the Mamba convolution's activation (only
silu is implemented). Every norm, the Δ/B/C ones too, uses ``rms_norm_eps``.
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from ..config import MambaConfig
from . import hybrid as H
from . import hybrid_config as C

MODEL_TYPE = "jamba"
ARCHITECTURE = "JambaForCausalLM"
MAMBA = "mamba_bcdt_norm"
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 65536, "tie_word_embeddings": False, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
    "rms_norm_eps": 1e-6, "num_experts_per_tok": 2, "num_experts": 16, "expert_layer_period": 2,
    "expert_layer_offset": 1, "attn_layer_period": 8, "attn_layer_offset": 4, "mamba_d_state": 16,
    "mamba_d_conv": 4, "mamba_expand": 2, "mamba_dt_rank": "auto", "mamba_conv_bias": True,
    "mamba_proj_bias": False, "attention_dropout": 0.0, "use_mamba_kernels": True, "use_mambapy": False,
    "use_associative_scan": True,
}
_EXPERT_NAMES = ("up_proj", "gate_proj")  # the model's fc1 rows are [value | gate]: up is the value


def _every(n: int, period_key: str, offset_key: str, g: dict[str, Any]) -> list[bool]:
    for key, least in ((period_key, 1), (offset_key, 0)):
        if not isinstance(g[key], int) or isinstance(g[key], bool) or g[key] < least:
            raise ConfigError(f"config.{key}: expected an integer >= {least}, got {g[key]!r}")
    period, offset = g[period_key], g[offset_key]
    if offset >= period:
        raise ConfigError(f"config.{offset_key}: expected less than {period_key}={period}, got {offset}")
    return [i % period == offset for i in range(n)]


def config_from_hf(raw: dict[str, Any]) -> MambaConfig:
    """A Jamba config.json -> MambaConfig; values mambakit does not implement raise ConfigError."""
    g = H.read_config(raw, MODEL_TYPE, _DEFAULTS)
    H.require(g, "hidden_act", ("silu",), "the Mamba convolution's activation")
    n, heads = g["num_hidden_layers"], g["num_attention_heads"]
    if not isinstance(heads, int) or heads < 1 or g["hidden_size"] % heads:
        raise ConfigError(f"config.num_attention_heads: expected a divisor of hidden_size="
                          f"{g['hidden_size']}, got {heads!r}")
    attn = _every(n, "attn_layer_period", "attn_layer_offset", g)
    experts = g["num_experts"]
    if not isinstance(experts, int) or isinstance(experts, bool) or experts < 1:
        raise ConfigError(f"config.num_experts: expected a positive integer, got {experts!r}")
    moe = _every(n, "expert_layer_period", "expert_layer_offset", g) if experts > 1 else [False] * n
    kinds = [k for i in range(n) for k in ("attention" if attn[i] else MAMBA, "moe" if moe[i] else "mlp")]
    d_ff, act = g["intermediate_size"], H.activation(g, "hidden_act")
    layer_cfg = {
        "attention": C.attention_options(g, g["hidden_size"] // heads, 0, 10000.0, bias_key=None),
        "mlp": {"d_intermediate": d_ff, "activation": act},
        "moe": {"n_experts": experts, "top_k": g["num_experts_per_tok"], "d_intermediate": d_ff,
                "activation": act, "normalize": False},
    }
    mamba = {"mixer": MAMBA, "d_state": g["mamba_d_state"], "d_conv": g["mamba_d_conv"],
             "expand": g["mamba_expand"], "dt_rank": g["mamba_dt_rank"], "conv_bias": g["mamba_conv_bias"],
             "bias": g["mamba_proj_bias"], "mixer_cfg": {"norm_eps": g["rms_norm_eps"]}}
    return C.hybrid_config(g, MODEL_TYPE, kinds, layer_cfg, "rms_norm_eps", **mamba)


def _period(flags: list[bool], what: str) -> tuple[int, int]:
    """The (period, offset) with flags[i] == (i % period == offset), the smallest period; all False gives a
    period past the last layer."""
    n = len(flags)
    if not any(flags):
        return n + 1, n
    for period in range(1, n + 1):
        offset = flags.index(True)
        if offset < period and all(f == (i % period == offset) for i, f in enumerate(flags)):
            return period, offset
    raise ConfigError(f"MambaConfig.layer_types: the Jamba format places its {what} every period layers from "
                      f"an offset, got them on layers {[i for i, f in enumerate(flags) if f]}")


def config_to_hf(config: MambaConfig) -> dict[str, Any]:
    """The config.json of a ``JambaForCausalLM`` with ``config``'s hyper-parameters."""
    pairs = H.paired_layers(config, "Jamba", (MAMBA, "attention"), ("mlp", "moe"))
    if config.mixer != MAMBA:
        raise ConfigError(f"MambaConfig.mixer: the Jamba format holds {MAMBA!r} mixers, got {config.mixer!r}")
    eps = config.mixer_cfg.get("norm_eps", 1e-6)
    if eps != config.norm_epsilon:
        raise ConfigError(f"MambaConfig.mixer_cfg['norm_eps']: expected norm_epsilon={config.norm_epsilon} "
                          f"(one rms_norm_eps), got {eps}")
    attn = C.attention_keys(config, None)
    if attn.pop("attention_bias") or config.layer_cfg.get("attention", {}).get("softmax_scale"):
        raise ConfigError("MambaConfig.layer_cfg['attention']: Jamba attention has no biases and the default "
                          f"scale, got {config.layer_cfg['attention']!r}")
    mlp = C.mlp_keys(config) if "mlp" in config.layer_types else None
    moe = config.layer_cfg.get("moe")
    if mlp and mlp["bias"]:
        raise ConfigError("MambaConfig.layer_cfg['mlp']['bias']: the Jamba MLP has no biases")
    if moe:
        wanted = {"gated": True, "scoring": "softmax", "normalize": False, "routed_scaling": 1.0,
                  "d_shared": 0}
        if any(moe.get(k, v) != v for k, v in wanted.items()) or moe["n_experts"] < 2:
            raise ConfigError("MambaConfig.layer_cfg['moe']: the Jamba format holds 2 or more gated experts "
                              f"with unnormalised softmax routing and no shared expert, got {moe!r}")
    ffn = [(m["d_intermediate"], m.get("activation", "silu")) for m in (mlp, moe) if m]
    if len(set(ffn)) > 1:
        raise ConfigError("MambaConfig.layer_cfg: Jamba's experts and MLP share intermediate_size and "
                          f"hidden_act, got mlp {mlp!r} and moe {moe!r}")
    if ffn[0][1] != "silu":
        raise ConfigError(f"MambaConfig.layer_cfg: Jamba's hidden_act is also the Mamba convolution's "
                          f"activation (silu), got {ffn[0][1]!r}")
    attn_period, attn_offset = _period([k == "attention" for k, _ in pairs], "attention layers")
    expert_period, expert_offset = _period([f == "moe" for _, f in pairs], "expert layers")
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "num_hidden_layers": len(pairs), "intermediate_size": ffn[0][0],
        "hidden_act": "silu", "rms_norm_eps": config.norm_epsilon,
        "tie_word_embeddings": config.tie_embeddings,
        "attn_layer_period": attn_period, "attn_layer_offset": attn_offset,
        "expert_layer_period": expert_period, "expert_layer_offset": expert_offset,
        "num_experts": moe["n_experts"] if moe else 1, "num_experts_per_tok": moe["top_k"] if moe else 1,
        "mamba_d_state": config.d_state, "mamba_d_conv": config.d_conv, "mamba_expand": config.expand,
        "mamba_dt_rank": config.dt_rank_value, "mamba_conv_bias": config.conv_bias,
        "mamba_proj_bias": config.bias, "use_mamba_kernels": False, **attn,
    }


def weights_from_hf(tensors: H.Tensors, config: MambaConfig, raw: dict[str, Any]) -> H.Tensors:
    """Jamba tensors (the hub layout, one tensor per expert) -> the model's names."""
    t = dict(tensors)
    out = H.ends(t, config, "model.embed_tokens.weight", "model.final_layernorm.weight")
    for i in range(config.n_layer // 2):
        hf, ffn = f"model.layers.{i}.", H.layer(2 * i + 1)
        H.mixer_from_hf(t, out, i)
        out[ffn + "norm.weight"] = t.pop(hf + "pre_ff_layernorm.weight")
        sub = H.take(t, hf + "feed_forward.")
        if config.layer_types[2 * i + 1] == "moe":
            n = config.layer_cfg["moe"]["n_experts"]
            sub = {"fc1": H.stack_experts(sub, n, _EXPERT_NAMES),
                   "fc2": H.stack_experts(sub, n, ("down_proj",)), **sub}
        else:
            sub = H.mlp_from_hf(sub)
        H.put(out, ffn + "mixer.", sub)
    return {**t, **out}


def weights_to_hf(tensors: H.Tensors, config: MambaConfig) -> H.Tensors:
    """The model's state dict -> Jamba's hub tensor names."""
    t = dict(tensors)
    out = H.ends_to_hf(t, config, "model.embed_tokens.weight", "model.final_layernorm.weight")
    attn = C.attention_keys(config, None)
    heads, kv = attn["num_attention_heads"], attn["num_key_value_heads"]
    for i, (kind, ffn_kind) in enumerate(H.paired_layers(config, "Jamba", (MAMBA, "attention"),
                                                         ("mlp", "moe"))):
        hf = f"model.layers.{i}."
        H.mixer_to_hf(t, out, i, (heads, kv, config.d_model // heads) if kind == "attention" else None)
        out[hf + "pre_ff_layernorm.weight"] = t.pop(H.layer(2 * i + 1) + "norm.weight")
        sub = H.take(t, H.layer(2 * i + 1) + "mixer.")
        if ffn_kind == "moe":
            experts: H.Tensors = {}
            H.unstack_experts(sub.pop("fc1"), _EXPERT_NAMES, experts)
            H.unstack_experts(sub.pop("fc2"), ("down_proj",), experts)
            sub = {**experts, **sub}
        else:
            sub = H.mlp_to_hf(sub, gated=True)
        H.put(out, hf + "feed_forward.", sub)
    return {**t, **out}
