"""The Granite 4.0 hybrid format (transformers ``GraniteMoeHybridForCausalLM``, dense and MoE): config.json
keys and weight names, both ways.

A layer is a Mamba-2 mixer (``mamba.*``) or an attention (``self_attn.*``, RoPE when
``position_embedding_type == "rope"``, none otherwise; its scale is ``attention_multiplier``) after
``input_layernorm``, then after ``post_attention_layernorm`` a gated MLP (``shared_mlp.input_linear`` =
[gate | up], ``output_linear``) plus, when ``num_local_experts > 0``, top-k routed experts
(``block_sparse_moe.router.layer``, ``input_linear`` (E, 2I, d), ``output_linear`` (E, d, I)): the model's
layers 2i and 2i + 1, the second an "mlp" or a "moe" whose shared expert is ``shared_mlp``.

Multipliers: ``embedding_multiplier`` and 1 / ``logits_scaling`` are the config's; ``residual_multiplier``
(which scales every sublayer's output) is folded into the output projections on loading, and a model is
written with ``residual_multiplier`` 1 (the same function).
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from ..config import MambaConfig
from . import hybrid as H
from . import hybrid_config as C

MODEL_TYPE = "granitemoehybrid"
ARCHITECTURE = "GraniteMoeHybridForCausalLM"
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": None, "hidden_act": "silu", "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False, "rope_parameters": None, "rope_theta": 10000.0, "attention_bias": False,
    "attention_dropout": 0.0, "embedding_multiplier": 1.0, "logits_scaling": 1.0, "residual_multiplier": 1.0,
    "attention_multiplier": 1.0, "num_local_experts": 8, "num_experts_per_tok": 2,
    "shared_intermediate_size": 1024, "position_embedding_type": None, "layer_types": None,
    "mamba_n_heads": 128, "mamba_n_groups": 1, "mamba_d_state": 256, "mamba_d_head": "auto",
    "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256, "mamba_conv_bias": True,
    "mamba_proj_bias": False,
    "time_step_limit": (0.0, float("inf")),
}
_KINDS = {"mamba": "mamba2", "linear_attention": "mamba2", "attention": "attention",
          "full_attention": "attention"}
_OUTPUTS = ("mixer.out_proj.weight", "mixer.out_proj.bias", "mixer.fc2", "mixer.fc2.weight",
            "mixer.fc2.bias", "mixer.shared.fc2.weight")


def config_from_hf(raw: dict[str, Any]) -> MambaConfig:
    """A GraniteMoeHybrid config.json -> MambaConfig (``residual_multiplier`` is applied to the weights by
    :func:`weights_from_hf`)."""
    g = H.read_config(raw, MODEL_TYPE, _DEFAULTS)
    H.require(g, "hidden_act", ("silu",), "the Mamba-2 convolution's activation")
    kinds_hf = g["layer_types"] or ["mamba"] * g["num_hidden_layers"]
    if len(kinds_hf) != g["num_hidden_layers"] or any(k not in _KINDS for k in kinds_hf):
        raise ConfigError(f"config.layer_types: expected num_hidden_layers={g['num_hidden_layers']} entries "
                          f"of {sorted(_KINDS)}, got {kinds_hf!r}")
    H.require(g, "position_embedding_type", ("rope", "nope", None))
    rope = g["position_embedding_type"] == "rope"
    theta, partial = H.rope(g) if rope else (10000.0, 0.0)
    head_dim = g["hidden_size"] // g["num_attention_heads"]
    experts = g["num_local_experts"]
    ffn = "moe" if experts else "mlp"
    kinds = [k for kind in kinds_hf for k in (_KINDS[kind], ffn)]
    mlp = {"d_intermediate": g["shared_intermediate_size"], "activation": H.activation(g, "hidden_act")}
    moe = {"n_experts": experts, "top_k": g["num_experts_per_tok"], "d_intermediate": g["intermediate_size"],
           "activation": g["hidden_act"], "d_shared": g["shared_intermediate_size"]}
    attn = C.attention_options(g, head_dim, H.rotary_dim(head_dim, partial) if rope else 0, theta,
                             softmax_scale=float(g["attention_multiplier"]))
    return C.hybrid_config(g, MODEL_TYPE, kinds, {"attention": attn, "mlp": mlp, "moe": moe}, "rms_norm_eps",
                         **C.mamba2_fields(g, *C.MAMBA_KEYS),
                         embedding_multiplier=float(g["embedding_multiplier"]),
                         logits_multiplier=1.0 / g["logits_scaling"])


def config_to_hf(config: MambaConfig) -> dict[str, Any]:
    """The config.json of a ``GraniteMoeHybridForCausalLM`` with ``config``'s hyper-parameters."""
    pairs = H.paired_layers(config, "Granite 4.0", ("mamba2", "attention"), ("mlp", "moe"))
    ffns = {ffn for _, ffn in pairs}
    if len(ffns) > 1:
        raise ConfigError("MambaConfig.layer_types: the Granite 4.0 format has the same feed-forward in "
                          "every layer (all 'mlp' or all 'moe'), got both")
    a = config.layer_cfg.get("attention", {})
    rope = a.get("rotary_dim", 1) != 0
    attn = C.attention_keys(config, 1.0 if rope else None)
    head_dim = config.d_model // attn["num_attention_heads"]
    keys = {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "num_hidden_layers": len(pairs),
        "layer_types": ["mamba" if kind == "mamba2" else "attention" for kind, _ in pairs],
        "tie_word_embeddings": config.tie_embeddings, "position_embedding_type": "rope" if rope else "nope",
        "attention_multiplier": a.get("softmax_scale", head_dim**-0.5), "residual_multiplier": 1.0,
        "embedding_multiplier": config.embedding_multiplier, "logits_scaling": 1.0 / config.logits_multiplier,
        **C.mamba2_keys(config), **attn,
    }
    if "moe" in ffns:
        m = config.layer_cfg.get("moe", {})
        wanted = {"gated": True, "scoring": "softmax", "normalize": True, "routed_scaling": 1.0}
        if any(m.get(k, v) != v for k, v in wanted.items()) or not m.get("d_shared"):
            raise ConfigError("MambaConfig.layer_cfg['moe']: the Granite 4.0 format holds gated experts with "
                              f"normalised softmax routing and a shared expert, got {m!r}")
        keys.update(num_local_experts=m["n_experts"], num_experts_per_tok=m["top_k"],
                    intermediate_size=m["d_intermediate"], shared_intermediate_size=m["d_shared"],
                    hidden_act=m.get("activation", "silu"))
    else:
        mlp = C.mlp_keys(config)
        if mlp["bias"]:
            raise ConfigError("MambaConfig.layer_cfg['mlp']['bias']: the Granite 4.0 MLP has no biases")
        keys.update(num_local_experts=0, shared_intermediate_size=mlp["d_intermediate"],
                    hidden_act=mlp["activation"])
    return keys


def weights_from_hf(tensors: H.Tensors, config: MambaConfig, raw: dict[str, Any]) -> H.Tensors:
    """GraniteMoeHybrid tensors (the hub layout) -> the model's names, ``raw['residual_multiplier']`` folded
    into every sublayer's output projection."""
    residual_multiplier = float(raw.get("residual_multiplier", 1.0))
    t = dict(tensors)
    out = H.ends(t, config, "model.embed_tokens.weight", "model.norm.weight")
    for i in range(config.n_layer // 2):
        hf, ffn = f"model.layers.{i}.", H.layer(2 * i + 1)
        H.mixer_from_hf(t, out, i)
        out[ffn + "norm.weight"] = t.pop(hf + "post_attention_layernorm.weight")
        shared = H.take(t, hf + "shared_mlp.")
        dense = {"fc1.weight": H.swap_halves(shared.pop("input_linear.weight")),
                 "fc2.weight": shared.pop("output_linear.weight"), **shared}
        moe = H.take(t, hf + "block_sparse_moe.")
        if config.layer_types[2 * i + 1] == "moe":
            H.put(out, ffn + "mixer.", {"fc1": H.swap_halves(moe.pop("input_linear.weight")),
                                        "fc2": moe.pop("output_linear.weight"),
                                        "router.weight": moe.pop("router.layer.weight"), **moe})
            H.put(out, ffn + "mixer.shared.", dense)
        else:
            H.put(out, ffn + "mixer.", {**dense, **moe})
    if residual_multiplier != 1:
        for name in out:
            if name.startswith("backbone.layers.") and name.split(".", 3)[3] in _OUTPUTS:
                out[name] = out[name] * residual_multiplier
    return {**t, **out}


def weights_to_hf(tensors: H.Tensors, config: MambaConfig) -> H.Tensors:
    """The model's state dict -> GraniteMoeHybrid's hub tensor names (written with residual_multiplier 1)."""
    t = dict(tensors)
    out = H.ends_to_hf(t, config, "model.embed_tokens.weight", "model.norm.weight")
    rope = config.layer_cfg.get("attention", {}).get("rotary_dim") != 0
    attn = C.attention_keys(config, 1.0 if rope else None)
    heads, kv = attn["num_attention_heads"], attn["num_key_value_heads"]
    for i, (kind, ffn_kind) in enumerate(H.paired_layers(config, "Granite 4.0", ("mamba2", "attention"),
                                                         ("mlp", "moe"))):
        hf = f"model.layers.{i}."
        H.mixer_to_hf(t, out, i, (heads, kv, config.d_model // heads) if kind == "attention" else None)
        out[hf + "post_attention_layernorm.weight"] = t.pop(H.layer(2 * i + 1) + "norm.weight")
        ffn = H.take(t, H.layer(2 * i + 1) + "mixer.")
        if ffn_kind == "moe":
            out[hf + "block_sparse_moe.input_linear.weight"] = H.swap_halves(ffn.pop("fc1"))
            out[hf + "block_sparse_moe.output_linear.weight"] = ffn.pop("fc2")
            out[hf + "block_sparse_moe.router.layer.weight"] = ffn.pop("router.weight")
            ffn = {n.removeprefix("shared."): w for n, w in ffn.items()}
        out[hf + "shared_mlp.input_linear.weight"] = H.swap_halves(ffn.pop("fc1.weight"))
        out[hf + "shared_mlp.output_linear.weight"] = ffn.pop("fc2.weight")
        H.put(out, hf + "shared_mlp.", ffn)
    return {**t, **out}
