"""The Nemotron-H format (transformers ``NemotronHForCausalLM``): config.json keys and weight names, both
ways.

One block per layer, norm then mixer, as the model itself: ``layers_block_type`` (or the older
``hybrid_override_pattern``, "M" Mamba-2, "*" attention, "-" MLP, "E" MoE) gives each layer's kind.
Quirks: the Mamba-2 Δ is clamped below at ``time_step_min`` (its ``dt_limit``); attention has no positional
encoding and no biases; the MLP is not gated (``mlp_hidden_act``, relu² by default); the MoE routes by
sigmoid scores steered by ``e_score_correction_bias``, with non-gated experts and one shared expert.
transformers never ties its head, so a tied model is written with a copy of the embedding as lm_head.
Weights are the model's names (``backbone.layers.{i}.mixer.*``) except the embedding
(``backbone.embeddings``), the attention and MLP projections and the per-expert tensors.
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from ..config import MambaConfig
from ..layer_types import PATTERN_KINDS
from . import hybrid as H
from . import hybrid_config as C

MODEL_TYPE = "nemotron_h"
ARCHITECTURE = "NemotronHForCausalLM"
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 131072, "hidden_size": 4096, "layers_block_type": None, "hybrid_override_pattern": None,
    "tie_word_embeddings": False, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "attention_bias": False, "sliding_window": None, "intermediate_size": 21504, "mlp_hidden_act": "relu2",
    "mlp_bias": False, "ssm_state_size": 128, "mamba_num_heads": 128, "mamba_head_dim": 64,
    "mamba_hidden_act": "silu", "n_groups": 8, "conv_kernel": 4, "expand": 2, "time_step_min": 0.001,
    "chunk_size": 128, "use_conv_bias": True, "use_bias": False, "n_routed_experts": 8,
    "n_shared_experts": 1, "moe_intermediate_size": 7688, "moe_shared_expert_intermediate_size": 7688,
    "moe_latent_size": None, "num_experts_per_tok": 2, "routed_scaling_factor": 1.0, "n_group": 1,
    "topk_group": 1, "norm_topk_prob": True, "layer_norm_epsilon": 1e-5, "num_nextn_predict_layers": 0,
    "mtp_layers_block_type": None,  # multi-token-prediction layers: none without num_nextn_predict_layers
    "time_step_limit": None, "time_step_max": 0.1, "time_step_floor": 1e-4,  # transformers ignores the limit
}
_KINDS = {"linear_attention": "mamba2", "mamba": "mamba2", "full_attention": "attention",
          "attention": "attention", "mlp": "mlp", "moe": "moe"}
_HF_KIND = {"mamba2": "linear_attention", "attention": "full_attention", "mlp": "mlp", "moe": "moe"}


def _kinds(g: dict[str, Any]) -> list[str]:
    if g["layers_block_type"] is None and g["hybrid_override_pattern"]:
        pattern = g["hybrid_override_pattern"]
        if set(pattern) - set(PATTERN_KINDS):
            raise ConfigError(f"config.hybrid_override_pattern: expected characters of "
                              f"{sorted(PATTERN_KINDS)}, got {pattern!r}")
        return [PATTERN_KINDS[c] for c in pattern]
    kinds = g["layers_block_type"] or []
    if not kinds or any(k not in _KINDS for k in kinds):
        raise ConfigError(f"config.layers_block_type: expected a list of {sorted(_KINDS)}, got {kinds!r}")
    return [_KINDS[k] for k in kinds]


def config_from_hf(raw: dict[str, Any]) -> MambaConfig:
    """A NemotronH config.json -> MambaConfig; values mambakit does not implement raise ConfigError."""
    g = H.read_config(raw, MODEL_TYPE, _DEFAULTS)
    H.require(g, "mamba_hidden_act", ("silu",), "the Mamba-2 convolution's activation")
    for key, allowed in (("sliding_window", (None,)), ("moe_latent_size", (None,)), ("n_group", (1,)),
                         ("topk_group", (1,)), ("n_shared_experts", (1,)),
                         ("num_nextn_predict_layers", (0,))):
        H.require(g, key, allowed, "not implemented")
    kinds = _kinds(g)
    if "moe" in kinds:
        H.require(g, "mlp_bias", (False,), "the shared expert of the MoE has no biases in mambakit")
    g = {**g, "mamba_d_head": g["mamba_head_dim"], "time_step_limit": (g["time_step_min"], float("inf"))}
    mamba = C.mamba2_fields(g, "mamba_num_heads", "mamba_d_head", "n_groups", "ssm_state_size", "conv_kernel",
                            "expand", "chunk_size", "use_conv_bias", "use_bias", "layer_norm_epsilon")
    act = H.activation(g, "mlp_hidden_act")
    layer_cfg = {
        "attention": C.attention_options(g, g["head_dim"], 0, 10000.0, bias_key=None),
        "mlp": {"d_intermediate": g["intermediate_size"], "activation": act, "gated": False,
                "bias": g["mlp_bias"]},
        "moe": {"n_experts": g["n_routed_experts"], "top_k": g["num_experts_per_tok"],
                "d_intermediate": g["moe_intermediate_size"], "activation": act, "gated": False,
                "scoring": "sigmoid", "normalize": bool(g["norm_topk_prob"]),
                "routed_scaling": float(g["routed_scaling_factor"]),
                "d_shared": g["moe_shared_expert_intermediate_size"]},
    }
    g["tie_word_embeddings"] = False  # transformers' Nemotron-H never ties: its lm_head is its own
    return C.hybrid_config(g, MODEL_TYPE, kinds, layer_cfg, "layer_norm_epsilon", **mamba)


def config_to_hf(config: MambaConfig) -> dict[str, Any]:
    """The config.json of a ``NemotronHForCausalLM`` with ``config``'s hyper-parameters."""
    kinds = config.layer_types or []
    if not kinds or any(k not in _HF_KIND for k in kinds):
        raise ConfigError(f"MambaConfig.layer_types: the Nemotron-H format holds {sorted(_HF_KIND)}, "
                          f"got {config.layer_types!r}")
    m2 = C.mamba2_keys(config)
    if m2["time_step_limit"][1] != float("inf"):
        raise ConfigError("MambaConfig.mixer_cfg['dt_limit']: Nemotron-H clamps Δ below only, got "
                          f"{m2['time_step_limit']}")
    a = config.layer_cfg.get("attention", {})
    if a.get("rotary_dim", 1) != 0 or a.get("bias") or a.get("sliding_window") or a.get("softmax_scale"):
        raise ConfigError("MambaConfig.layer_cfg['attention']: Nemotron-H attention has rotary_dim 0, no "
                          f"bias, no sliding window and the default scale, got {a!r}")
    mlp = config.layer_cfg.get("mlp", {})
    moe = config.layer_cfg.get("moe", {})
    heads = a.get("n_heads", max(1, config.d_model // 16))
    act = mlp.get("activation", moe.get("activation", "relu2"))
    keys = {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "layers_block_type": [_HF_KIND[k] for k in kinds],
        "tie_word_embeddings": False, "layer_norm_epsilon": config.norm_epsilon,
        "mamba_num_heads": m2["mamba_n_heads"], "mamba_head_dim": m2["mamba_d_head"],
        "n_groups": m2["mamba_n_groups"], "ssm_state_size": config.d_state, "conv_kernel": config.d_conv,
        "expand": config.expand, "chunk_size": m2["mamba_chunk_size"], "use_conv_bias": config.conv_bias,
        "use_bias": config.bias, "time_step_min": m2["time_step_limit"][0],
        "num_attention_heads": heads, "num_key_value_heads": a.get("n_kv_heads", heads),
        "head_dim": a.get("head_dim", config.d_model // heads),
        "intermediate_size": mlp.get("d_intermediate", 4 * config.d_model),
        "mlp_hidden_act": act, "mlp_bias": mlp.get("bias", False),
    }
    if moe:
        keys.update(n_routed_experts=moe["n_experts"], num_experts_per_tok=moe["top_k"],
                    moe_intermediate_size=moe["d_intermediate"], norm_topk_prob=moe.get("normalize", True),
                    routed_scaling_factor=moe.get("routed_scaling", 1.0),
                    moe_shared_expert_intermediate_size=moe.get("d_shared", 0), n_shared_experts=1)
    return keys


def weights_from_hf(tensors: H.Tensors, config: MambaConfig, raw: dict[str, Any]) -> H.Tensors:
    """NemotronH tensors (``backbone.*``, per-expert) -> the model's names."""
    t = dict(tensors)
    out = H.ends(t, config, "backbone.embeddings.weight", H.NORM_F)
    for i, kind in enumerate(config.layer_types):
        sub = H.take(t, H.layer(i) + "mixer.")
        if kind == "attention":
            sub = H.attention_from_hf(sub)
        elif kind == "mlp":
            sub = H.mlp_from_hf(sub)
        elif kind == "moe":
            n = config.layer_cfg["moe"]["n_experts"]
            sub = {"fc1": H.stack_experts(sub, n, ("up_proj",)),
                   "fc2": H.stack_experts(sub, n, ("down_proj",)),
                   "router.weight": sub.pop("gate.weight"),
                   "score_bias": sub.pop("gate.e_score_correction_bias"),
                   **{f"shared.{k}": v for k, v in H.mlp_from_hf(H.take(sub, "shared_experts.")).items()},
                   **sub}
        H.put(out, H.layer(i) + "mixer.", sub)
    return {**t, **out}


def weights_to_hf(tensors: H.Tensors, config: MambaConfig) -> H.Tensors:
    """The model's state dict -> NemotronH's tensor names."""
    t = dict(tensors)
    out = H.ends_to_hf(t, config, "backbone.embeddings.weight", H.NORM_F, keep_head=True)
    a = config.layer_cfg.get("attention", {})
    for i, kind in enumerate(config.layer_types):
        sub = H.take(t, H.layer(i) + "mixer.")
        if kind == "attention":
            heads = a.get("n_heads", max(1, config.d_model // 16))
            head_dim = a.get("head_dim", config.d_model // heads)
            sub = H.attention_to_hf(sub, heads, a.get("n_kv_heads", heads), head_dim)
        elif kind == "mlp":
            sub = H.mlp_to_hf(sub, gated=False)
        elif kind == "moe":
            experts: H.Tensors = {}
            H.unstack_experts(sub.pop("fc1"), ("up_proj",), experts)
            H.unstack_experts(sub.pop("fc2"), ("down_proj",), experts)
            shared = H.mlp_to_hf(H.take(sub, "shared."), gated=False)
            sub = {**experts, "gate.weight": sub.pop("router.weight"),
                   "gate.e_score_correction_bias": sub.pop("score_bias"),
                   **{f"shared_experts.{k}": v for k, v in shared.items()}, **sub}
        H.put(out, H.layer(i) + "mixer.", sub)
    return {**t, **out}
