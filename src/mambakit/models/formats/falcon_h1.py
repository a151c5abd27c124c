"""The Falcon-H1 format (transformers ``FalconH1ForCausalLM``): config.json keys and weight names, both ways.

A Falcon-H1 layer runs an attention (``self_attn.q/k/v/o_proj``, full RoPE) and a Mamba-2 (``mamba.*``)
side by side on the output of ``input_layernorm`` and adds them, then a gated MLP
(``feed_forward.gate_proj/up_proj/down_proj``) after ``pre_ff_layernorm``: HF layer i is the model's layer
2i, a "parallel_hybrid" mixer (:class:`~mambakit.layers.parallel_hybrid.ParallelAttentionMamba2`), and
layer 2i + 1, an "mlp".

Quirks. The Mamba-2's inner width is ``mamba_d_ssm`` when given (not ``mamba_expand · hidden_size``), its
gated output norm is optional (``mamba_rms_norm``, off by default: y · silu(z)) and normalises before the
gate by default (``mamba_norm_before_gate``); its in_proj bias is ``mamba_proj_bias`` and its out_proj bias
``projectors_bias`` (a model with either has both, the missing one zero). The multipliers that scale
branch inputs and outputs are linear and are folded into the projections on loading: ``ssm_in_multiplier``
and the per-segment ``ssm_multipliers`` ([z, x, B, C, Δ] of in_proj's output, transformers' mup_vector)
into ``mamba.in_proj``, ``ssm_out_multiplier`` into ``mamba.out_proj``, ``attention_in_multiplier`` into
q/k/v, ``key_multiplier`` into k, ``attention_out_multiplier`` into o, ``mlp_multipliers`` into gate and
down; a model is written with all of them 1 (the same function). ``embedding_multiplier`` and
``lm_head_multiplier`` are the config's embedding and logits multipliers. ``hidden_act`` is both the MLP's
and the Mamba convolution's activation: only silu is implemented.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError
from ..config import MambaConfig
from . import hybrid as H
from . import hybrid_config as C

MODEL_TYPE = "falcon_h1"
ARCHITECTURE = "FalconH1ForCausalLM"
MIXER = "parallel_hybrid"
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 128000, "tie_word_embeddings": False, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": None,
    "hidden_act": "silu", "rms_norm_eps": 1e-5, "attention_dropout": 0.0, "mamba_d_ssm": 1024,
    "mamba_n_heads": 128, "mamba_d_head": "auto", "mamba_n_groups": 1, "mamba_d_state": 256,
    "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256, "mamba_conv_bias": True,
    "mamba_proj_bias": False, "mamba_norm_before_gate": True, "mamba_rms_norm": False,
    "time_step_limit": (0.0, float("inf")), "projectors_bias": False, "rope_parameters": None,
    "rope_theta": 10000.0, "lm_head_multiplier": 1.0, "embedding_multiplier": 1.0, "mlp_multipliers": None,
    "key_multiplier": 1.0, "attention_out_multiplier": 1.0, "attention_in_multiplier": 1.0,
    "ssm_multipliers": None, "ssm_in_multiplier": 1.0, "ssm_out_multiplier": 1.0, "attention_bias": False,
    "mlp_bias": False, "num_logits_to_keep": 1,
}
_MULTIPLIER_LISTS = {"mlp_multipliers": 2, "ssm_multipliers": 5}
_MULTIPLIERS = ("key_multiplier", "attention_out_multiplier", "attention_in_multiplier", "ssm_in_multiplier",
                "ssm_out_multiplier")


def _read(raw: dict[str, Any]) -> dict[str, Any]:
    g = H.read_config(raw, MODEL_TYPE, _DEFAULTS)
    for key, n in _MULTIPLIER_LISTS.items():
        g[key] = [1.0] * n if g[key] is None else g[key]
        if not isinstance(g[key], (list, tuple)) or len(g[key]) != n:
            raise ConfigError(f"config.{key}: expected a list of {n} numbers, got {g[key]!r}")
    return g


def _widths(g: dict[str, Any]) -> tuple[int, int, int]:
    """(d_inner, heads, head_dim) of the Mamba-2 branch."""
    d_inner = g["mamba_expand"] * g["hidden_size"] if g["mamba_d_ssm"] is None else g["mamba_d_ssm"]
    heads = g["mamba_n_heads"]
    p = d_inner // heads if g["mamba_d_head"] == "auto" else g["mamba_d_head"]
    if heads * p != d_inner:
        raise ConfigError(f"config.mamba_d_head: expected mamba_n_heads · mamba_d_head = the Mamba inner "
                          f"width {d_inner} (mamba_d_ssm, or mamba_expand · hidden_size), got {heads} · {p}")
    return d_inner, heads, p


def config_from_hf(raw: dict[str, Any]) -> MambaConfig:
    """A FalconH1 config.json -> MambaConfig (the branch multipliers are folded into the weights by
    :func:`weights_from_hf`); values mambakit does not implement raise ConfigError."""
    g = _read(raw)
    H.require(g, "hidden_act", ("silu",), "the Mamba-2 convolution's activation")
    d_inner, _, p = _widths(g)
    heads = g["num_attention_heads"]
    head_dim = g["head_dim"] or g["hidden_size"] // heads
    theta, _ = H.rope(g)  # transformers turns the whole head, whatever partial_rotary_factor says
    attention = C.attention_options(g, head_dim, head_dim, theta)
    mamba2 = {"headdim": p, "ngroups": g["mamba_n_groups"], "d_inner": d_inner,
              "chunk_size": g["mamba_chunk_size"],
              "rmsnorm": bool(g["mamba_rms_norm"]), "norm_before_gate": bool(g["mamba_norm_before_gate"]),
              "norm_eps": g["rms_norm_eps"], "dt_limit": tuple(g["time_step_limit"] or (0.0, float("inf")))}
    kinds = [MIXER, "mlp"] * g["num_hidden_layers"]
    mlp = {"d_intermediate": g["intermediate_size"], "activation": "silu", "bias": bool(g["mlp_bias"])}
    return C.hybrid_config(
        g, MODEL_TYPE, kinds, {"mlp": mlp}, "rms_norm_eps", mixer=MIXER,
        mixer_cfg={"attention": attention, "mamba2": mamba2}, d_state=g["mamba_d_state"],
        d_conv=g["mamba_d_conv"], expand=g["mamba_expand"], conv_bias=g["mamba_conv_bias"],
        bias=bool(g["mamba_proj_bias"] or g["projectors_bias"]),
        embedding_multiplier=float(g["embedding_multiplier"]),
        logits_multiplier=float(g["lm_head_multiplier"]))


def config_to_hf(config: MambaConfig) -> dict[str, Any]:
    """The config.json of a ``FalconH1ForCausalLM`` with ``config``'s hyper-parameters (multipliers 1)."""
    H.paired_layers(config, "Falcon-H1", (MIXER,), ("mlp",))
    if config.mixer != MIXER:
        raise ConfigError(f"MambaConfig.mixer: the Falcon-H1 format holds {MIXER!r} mixers, "
                          f"got {config.mixer!r}")
    a = dict(config.mixer_cfg.get("attention", {}))
    m = dict(config.mixer_cfg.get("mamba2", {}))
    heads = a.get("n_heads", max(1, config.d_model // 16))
    head_dim = a.get("head_dim", config.d_model // heads)
    if a.get("rotary_dim", head_dim) != head_dim or a.get("sliding_window") or a.get("softmax_scale"):
        raise ConfigError("MambaConfig.mixer_cfg['attention']: Falcon-H1 attention turns whole heads, has no "
                          f"sliding window and the default scale, got {a!r}")
    if m.get("D_has_hdim") or m.get("norm_eps", 1e-5) != config.norm_epsilon:
        raise ConfigError("MambaConfig.mixer_cfg['mamba2']: Falcon-H1's Mamba-2 has D per head and its "
                          f"norm's epsilon is norm_epsilon={config.norm_epsilon}, got {m!r}")
    mlp = C.mlp_keys(config)
    if mlp["activation"] != "silu":
        raise ConfigError(f"MambaConfig.layer_cfg['mlp']['activation']: Falcon-H1's hidden_act is also the "
                          f"Mamba convolution's activation (silu), got {mlp['activation']!r}")
    d_inner = m.get("d_inner") or config.d_inner
    headdim = m.get("headdim", 64)
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "num_hidden_layers": config.n_layer // 2,
        "tie_word_embeddings": config.tie_embeddings, "rms_norm_eps": config.norm_epsilon,
        "hidden_act": "silu",
        "intermediate_size": mlp["d_intermediate"], "mlp_bias": mlp["bias"],
        "num_attention_heads": heads, "num_key_value_heads": a.get("n_kv_heads", heads),
        "head_dim": head_dim,
        "attention_bias": a.get("bias", False),
        "rope_parameters": {"rope_type": "default", "rope_theta": a.get("rope_base", 10000.0)},
        "mamba_d_ssm": d_inner, "mamba_n_heads": d_inner // headdim, "mamba_d_head": headdim,
        "mamba_n_groups": m.get("ngroups", 1), "mamba_d_state": config.d_state,
        "mamba_d_conv": config.d_conv,
        "mamba_expand": config.expand, "mamba_chunk_size": m.get("chunk_size", 256),
        "mamba_conv_bias": config.conv_bias, "mamba_proj_bias": config.bias, "projectors_bias": config.bias,
        "mamba_rms_norm": m.get("rmsnorm", True), "mamba_norm_before_gate": m.get("norm_before_gate", False),
        "time_step_limit": list(m.get("dt_limit", (0.0, float("inf")))),
        "embedding_multiplier": config.embedding_multiplier, "lm_head_multiplier": config.logits_multiplier,
        "mlp_multipliers": [1.0, 1.0], "ssm_multipliers": [1.0] * 5,
        **{key: 1.0 for key in _MULTIPLIERS},
    }


def _scale(sub: H.Tensors, name: str, factor: float | torch.Tensor, bias: bool = True) -> None:
    """sub[name.weight] (and .bias, if ``bias``) times ``factor`` (a number, or one per output row)."""
    for leaf in ("weight", "bias") if bias else ("weight",):
        key = f"{name}.{leaf}"
        if key in sub:
            w = sub[key]
            if isinstance(factor, torch.Tensor):
                sub[key] = w * factor.to(w.dtype).view(-1, *[1] * (w.dim() - 1))
            else:
                sub[key] = w * factor


def _mup_rows(config: MambaConfig, ssm: list[float]) -> torch.Tensor:
    """The factor of each in_proj output row: [z, x, B, C, Δ] segments times ssm_multipliers."""
    m = config.mixer_cfg["mamba2"]
    d_inner, bc = m["d_inner"], m["ngroups"] * config.d_state
    sizes = [d_inner, d_inner, bc, bc, d_inner // m["headdim"]]
    return torch.cat([torch.full((n,), float(f), dtype=torch.float64)
                      for n, f in zip(sizes, ssm, strict=True)])


def weights_from_hf(tensors: H.Tensors, config: MambaConfig, raw: dict[str, Any]) -> H.Tensors:
    """FalconH1 tensors -> the model's names, every branch multiplier folded into its projection and a
    missing Mamba projection bias (when the other one exists) zero."""
    g = _read(raw)
    gate_mult, down_mult = g["mlp_multipliers"]
    rows = _mup_rows(config, g["ssm_multipliers"])
    t = dict(tensors)
    out = H.ends(t, config, "model.embed_tokens.weight", "model.final_layernorm.weight")
    for i in range(config.n_layer // 2):
        hf, mixer, ffn = f"model.layers.{i}.", H.layer(2 * i), H.layer(2 * i + 1)
        out[mixer + "norm.weight"] = t.pop(hf + "input_layernorm.weight")
        mamba = H.take(t, hf + "mamba.")
        _scale(mamba, "in_proj", float(g["ssm_in_multiplier"]), bias=False)
        _scale(mamba, "in_proj", rows)
        _scale(mamba, "out_proj", float(g["ssm_out_multiplier"]))
        if config.bias:
            for name, n in (("in_proj", mamba["in_proj.weight"].shape[0]), ("out_proj", config.d_model)):
                mamba.setdefault(f"{name}.bias", mamba[f"{name}.weight"].new_zeros(n))
        attn = H.take(t, hf + "self_attn.")
        for name in ("q_proj", "k_proj", "v_proj"):
            _scale(attn, name, float(g["attention_in_multiplier"]), bias=False)
        _scale(attn, "k_proj", float(g["key_multiplier"]))
        _scale(attn, "o_proj", float(g["attention_out_multiplier"]))
        H.put(out, mixer + "mixer.mamba.", mamba)
        H.put(out, mixer + "mixer.attention.", H.attention_from_hf(attn))
        out[ffn + "norm.weight"] = t.pop(hf + "pre_ff_layernorm.weight")
        mlp = H.take(t, hf + "feed_forward.")
        _scale(mlp, "gate_proj", float(gate_mult))
        _scale(mlp, "down_proj", float(down_mult))
        H.put(out, ffn + "mixer.", H.mlp_from_hf(mlp))
    return {**t, **out}


def weights_to_hf(tensors: H.Tensors, config: MambaConfig) -> H.Tensors:
    """The model's state dict -> FalconH1's tensor names (written with every multiplier 1)."""
    H.paired_layers(config, "Falcon-H1", (MIXER,), ("mlp",))
    a = config.mixer_cfg.get("attention", {})
    heads = a.get("n_heads", max(1, config.d_model // 16))
    shape = (heads, a.get("n_kv_heads", heads), a.get("head_dim", config.d_model // heads))
    t = dict(tensors)
    out = H.ends_to_hf(t, config, "model.embed_tokens.weight", "model.final_layernorm.weight")
    for i in range(config.n_layer // 2):
        hf, mixer, ffn = f"model.layers.{i}.", H.layer(2 * i), H.layer(2 * i + 1)
        out[hf + "input_layernorm.weight"] = t.pop(mixer + "norm.weight")
        H.put(out, hf + "mamba.", H.take(t, mixer + "mixer.mamba."))
        H.put(out, hf + "self_attn.", H.attention_to_hf(H.take(t, mixer + "mixer.attention."), *shape))
        out[hf + "pre_ff_layernorm.weight"] = t.pop(ffn + "norm.weight")
        H.put(out, hf + "feed_forward.", H.mlp_to_hf(H.take(t, ffn + "mixer."), gated=True))
    return {**t, **out}
