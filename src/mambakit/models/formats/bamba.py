"""The Bamba format (transformers ``BambaForCausalLM``): config.json keys and weight names, both ways.

A Bamba layer is a Mamba-2 mixer (``mamba.*``, the model's own Mamba-2 names) or an attention
(``self_attn.q_proj/k_proj/v_proj/o_proj``: grouped-query, RoPE on half of each head) after
``input_layernorm``, then a gated MLP (``feed_forward.gate_proj/up_proj/down_proj``) after
``pre_ff_layernorm``: HF layer i is layers 2i and 2i + 1 of the model. Attention layers are listed by
``attn_layer_indices``. The gated output norm of Mamba-2 uses ``rms_norm_eps``; the conv activation is
``hidden_act`` (only silu is implemented).
"""

from __future__ import annotations

from typing import Any

from ..config import MambaConfig
from . import hybrid as H
from . import hybrid_config as C

MODEL_TYPE = "bamba"
ARCHITECTURE = "BambaForCausalLM"
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 128000, "tie_word_embeddings": False, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
    "rms_norm_eps": 1e-5, "attn_layer_indices": None, "mamba_n_heads": 128, "mamba_d_head": "auto",
    "mamba_n_groups": 1, "mamba_d_state": 256, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256,
    "mamba_conv_bias": True, "mamba_proj_bias": False, "time_step_limit": (0.0, float("inf")),
    "rope_parameters": None, "rope_theta": 10000.0, "attention_bias": False, "mlp_bias": False,
    "attention_dropout": 0.0,
}
_PARTIAL_ROTARY = 0.5  # transformers hard-codes it for Bamba


def config_from_hf(raw: dict[str, Any]) -> MambaConfig:
    """A Bamba config.json -> MambaConfig; values mambakit does not implement raise ConfigError."""
    g = H.read_config(raw, MODEL_TYPE, _DEFAULTS)
    H.require(g, "hidden_act", ("silu",), "the Mamba-2 convolution's activation")
    theta, partial = H.rope(g, _PARTIAL_ROTARY)
    head_dim = g["hidden_size"] // g["num_attention_heads"]
    attn = set(g["attn_layer_indices"] or [])
    kinds = []
    for i in range(g["num_hidden_layers"]):
        kinds += ["attention" if i in attn else "mamba2", "mlp"]
    layer_cfg = {
        "attention": C.attention_options(g, head_dim, H.rotary_dim(head_dim, partial), theta),
        "mlp": {"d_intermediate": g["intermediate_size"], "activation": H.activation(g, "hidden_act"),
                "bias": g["mlp_bias"]},
    }
    mamba = C.mamba2_fields(g, *C.MAMBA_KEYS)
    return C.hybrid_config(g, MODEL_TYPE, kinds, layer_cfg, "rms_norm_eps", **mamba)


def config_to_hf(config: MambaConfig) -> dict[str, Any]:
    """The config.json of a ``BambaForCausalLM`` with ``config``'s hyper-parameters."""
    pairs = H.paired_layers(config, "Bamba", ("mamba2", "attention"), ("mlp",))
    mlp = C.mlp_keys(config)
    attn = C.attention_keys(config, _PARTIAL_ROTARY)
    attn["rope_parameters"]["partial_rotary_factor"] = _PARTIAL_ROTARY
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "num_hidden_layers": len(pairs),
        "attn_layer_indices": [i for i, (kind, _) in enumerate(pairs) if kind == "attention"],
        "intermediate_size": mlp["d_intermediate"], "hidden_act": mlp["activation"], "mlp_bias": mlp["bias"],
        "tie_word_embeddings": config.tie_embeddings, **C.mamba2_keys(config), **attn,
    }


def weights_from_hf(tensors: H.Tensors, config: MambaConfig, raw: dict[str, Any]) -> H.Tensors:
    """Bamba tensors -> the model's names (names not recognised pass through, to be reported)."""
    t = dict(tensors)
    out = H.ends(t, config, "model.embed_tokens.weight", "model.final_layernorm.weight")
    for i in range(config.n_layer // 2):
        hf = f"model.layers.{i}."
        H.mixer_from_hf(t, out, i)
        out[H.layer(2 * i + 1) + "norm.weight"] = t.pop(hf + "pre_ff_layernorm.weight")
        H.put(out, H.layer(2 * i + 1) + "mixer.", H.mlp_from_hf(H.take(t, hf + "feed_forward.")))
    return {**t, **out}


def weights_to_hf(tensors: H.Tensors, config: MambaConfig) -> H.Tensors:
    """The model's state dict -> Bamba's tensor names."""
    t = dict(tensors)
    out = H.ends_to_hf(t, config, "model.embed_tokens.weight", "model.final_layernorm.weight")
    a = config.layer_cfg.get("attention", {})
    for i, (kind, _) in enumerate(H.paired_layers(config, "Bamba", ("mamba2", "attention"), ("mlp",))):
        hf = f"model.layers.{i}."
        heads = a.get("n_heads", max(1, config.d_model // 16))
        attention = (heads, a.get("n_kv_heads", heads), config.d_model // heads)
        H.mixer_to_hf(t, out, i, attention if kind == "attention" else None)
        out[hf + "pre_ff_layernorm.weight"] = t.pop(H.layer(2 * i + 1) + "norm.weight")
        H.put(out, hf + "feed_forward.", H.mlp_to_hf(H.take(t, H.layer(2 * i + 1) + "mixer."), gated=True))
    return {**t, **out}
