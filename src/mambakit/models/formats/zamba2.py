"""The Zamba2 format (transformers ``Zamba2ForCausalLM``): config.json keys and weight names, both ways.

Every layer is a Mamba-2 block after its norm, one model layer per HF layer. The "hybrid" layers of
``layers_block_type`` are preceded by a use of a shared transformer block (``MambaConfig.shared_cfg``,
:class:`~mambakit.layers.shared_transformer.SharedTransformer`): use j runs block ``j % num_mem_blocks`` on
the residual stream beside the embeddings, and its output, through the use's own ``linear``, joins the
input of the layer's norm. HF names: a plain layer is ``input_layernorm`` and ``mamba.*``; a hybrid layer is
``mamba_decoder.input_layernorm``, ``mamba_decoder.mamba.*``, ``linear`` and ``shared_transformer.*``,
transformers storing each block once, under the first layer that uses it, with every use's adapters
(``...adapter_list.{j}``) inside it. The attention reads 2 · hidden_size channels (heads of
2 · hidden_size / num_attention_heads channels, scaled by (head_dim / 2)^-1/2, RoPE only with
``use_mem_rope``), no biases; the MLP's ``gate_up_proj`` is [gate | up] and it always has per-use adapters;
q/k/v adapters come with ``use_shared_attention_adapter``.

Quirks of transformers (5.x) kept: the Mamba-2 convolution always has a bias (``use_conv_bias`` is
ignored), its gated norm's epsilon is 1e-5 whatever ``rms_norm_eps``, and Δ is clamped below at
``time_step_min``. transformers ties the hybrid layers' copies of a block only when the word embeddings are
tied: with ``tie_word_embeddings`` false each hybrid layer has a block of its own (stored under it, with its
use's adapters), so such a checkpoint is read with one block per use, and a model whose blocks are shared
with an untied head is refused on export (transformers would not share them).
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import CheckpointError, ConfigError
from ..config import MambaConfig
from . import hybrid as H

MODEL_TYPE = "zamba2"
ARCHITECTURE = "Zamba2ForCausalLM"
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000, "hidden_size": 2560, "num_hidden_layers": 54, "layers_block_type": None,
    "mamba_d_state": 64, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_ngroups": 1, "time_step_min": 0.001,
    "time_step_max": 0.1, "time_step_floor": 1e-4, "n_mamba_heads": 8, "use_conv_bias": True,
    "chunk_size": 256, "add_bias_linear": False, "intermediate_size": None, "hidden_act": "gelu",
    "num_attention_heads": 32, "num_key_value_heads": None, "attention_dropout": 0.0, "num_mem_blocks": 1,
    "use_shared_attention_adapter": False, "adapter_rank": 128, "use_mem_rope": False,
    "rope_parameters": None,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "use_long_context": False,
    "use_mamba_kernels": True, "use_mem_eff_path": False, "num_logits_to_keep": 1,
    # derived by transformers from the keys above (recomputed, so their stored values are not read)
    "attention_head_dim": None, "attention_hidden_size": None, "hybrid_layer_ids": None, "kv_channels": None,
    "mamba_headdim": None, "num_query_groups": None, "use_shared_mlp_adapter": None,
}
_MAMBA_KINDS = ("linear_attention", "mamba")
_NORM_EPS = 1e-5  # transformers' Zamba2 hard-codes the gated norm's epsilon


def _default_pattern() -> list[str]:
    """transformers' layers_block_type when a config leaves it out (Zamba2-2.7B's 54 layers)."""
    m, h = "linear_attention", "hybrid"
    return [m] + ([m] * 5 + [h]) * 7 + [m] * 4 + [h] + [m] * 3 + [h] + [m] * 2


def _hybrid_layers(g: dict[str, Any]) -> list[int]:
    kinds = g["layers_block_type"] or _default_pattern()
    if len(kinds) != g["num_hidden_layers"] or any(k not in (*_MAMBA_KINDS, "hybrid") for k in kinds):
        raise ConfigError(f"config.layers_block_type: expected num_hidden_layers={g['num_hidden_layers']} "
                          f"entries of {[*_MAMBA_KINDS, 'hybrid']}, got {kinds!r}")
    return [i for i, k in enumerate(kinds) if k == "hybrid"]


def config_from_hf(raw: dict[str, Any]) -> MambaConfig:
    """A Zamba2 config.json -> MambaConfig; values mambakit does not implement raise ConfigError."""
    g = H.read_config(raw, MODEL_TYPE, _DEFAULTS)
    d, heads = g["hidden_size"], g["num_attention_heads"]
    d_inner = g["mamba_expand"] * d
    if not isinstance(g["n_mamba_heads"], int) or g["n_mamba_heads"] < 1 or d_inner % g["n_mamba_heads"]:
        raise ConfigError(f"config.n_mamba_heads: expected a divisor of mamba_expand · hidden_size = "
                          f"{d_inner}, "
                          f"got {g['n_mamba_heads']!r}")
    if not isinstance(heads, int) or heads < 1 or (2 * d) % heads:
        raise ConfigError(f"config.num_attention_heads: expected a divisor of 2 · hidden_size = {2 * d} (the "
                          f"shared attention's width), got {heads!r}")
    kv = g["num_key_value_heads"] or heads
    if g["use_shared_attention_adapter"] and kv != heads:
        raise ConfigError(f"config.num_key_value_heads: the attention adapters write 2 · hidden_size "
                          "channels, "
                          f"so k and v need num_attention_heads={heads} heads, got {kv}")
    layers = _hybrid_layers(g)
    if layers and not (isinstance(g["num_mem_blocks"], int) and 1 <= g["num_mem_blocks"] <= len(layers)):
        raise ConfigError(f"config.num_mem_blocks: expected 1 to the {len(layers)} hybrid layers, "
                          f"got {g['num_mem_blocks']!r}")
    if layers and not (isinstance(g["adapter_rank"], int) and g["adapter_rank"] >= 1):
        raise ConfigError(f"config.adapter_rank: expected a positive integer, got {g['adapter_rank']!r}")
    theta, _ = H.rope(g)
    head_dim = 2 * d // heads
    n_blocks = g["num_mem_blocks"] if g["tie_word_embeddings"] else len(layers)  # see the module docstring
    shared = {} if not layers else {
        "layers": layers, "n_blocks": n_blocks, "adapter_rank": g["adapter_rank"],
        "attention_adapters": bool(g["use_shared_attention_adapter"]), "norm_eps": g["rms_norm_eps"],
        "attention": {"n_heads": heads, "n_kv_heads": kv, "head_dim": head_dim,
                      "softmax_scale": (head_dim / 2) ** -0.5, "rope_base": theta,
                      "rotary_dim": head_dim if g["use_mem_rope"] else 0},
        "mlp": {"d_intermediate": g["intermediate_size"] or 4 * d,
                "activation": H.activation(g, "hidden_act"),
                "bias": bool(g["add_bias_linear"])},
    }
    return MambaConfig(
        d_model=d, n_layer=g["num_hidden_layers"], vocab_size=g["vocab_size"], rms_norm=True,
        residual_in_fp32=False, pad_vocab_size_multiple=1, tie_embeddings=g["tie_word_embeddings"],
        norm_epsilon=g["rms_norm_eps"], layer_types=["mamba2"] * g["num_hidden_layers"],
        hf_model_type=MODEL_TYPE, shared_cfg=shared, mixer="mamba2", d_state=g["mamba_d_state"],
        d_conv=g["mamba_d_conv"], expand=g["mamba_expand"], conv_bias=True, bias=bool(g["add_bias_linear"]),
        dt_min=g["time_step_min"], dt_max=g["time_step_max"], dt_init_floor=g["time_step_floor"],
        mixer_cfg={"headdim": d_inner // g["n_mamba_heads"], "ngroups": g["mamba_ngroups"],
                   "chunk_size": g["chunk_size"], "norm_eps": _NORM_EPS,
                   "dt_limit": (g["time_step_min"], float("inf"))},
    )


def _refuse(field: str, what: str, got: object) -> None:
    raise ConfigError(f"MambaConfig.{field}: the Zamba2 format holds {what}, got {got!r}")


def config_to_hf(config: MambaConfig) -> dict[str, Any]:
    """The config.json of a ``Zamba2ForCausalLM`` with ``config``'s hyper-parameters."""
    if config.mixer != "mamba2" or set(config.layer_types or ["?"]) != {"mamba2"}:
        _refuse("layer_types", "Mamba-2 layers only (mixer 'mamba2')", config.layer_types)
    o = config.mamba2_options
    if (o["d_ssm"] not in (None, config.d_inner) or not o["rmsnorm"] or o["norm_before_gate"]
            or o["D_has_hdim"]
            or o["norm_eps"] != _NORM_EPS or o["dt_limit"][1] != float("inf")):
        _refuse("mixer_cfg", "the plain Mamba-2 block (norm after the gate, epsilon 1e-5, D per head, Δ "
                "clamped "
                "below only)", config.mixer_cfg)
    if not config.conv_bias:
        _refuse("conv_bias", "convolutions with a bias", config.conv_bias)
    s = config.shared_cfg
    keys: dict[str, Any] = {}
    if s:
        a, m = s.get("attention", {}), s.get("mlp", {})
        heads = a.get("n_heads", max(1, 2 * config.d_model // 16))
        head_dim = 2 * config.d_model // heads
        if (a.get("head_dim", head_dim) != head_dim or heads * head_dim != 2 * config.d_model
                or a.get("rotary_dim", head_dim) not in (0, head_dim) or a.get("sliding_window")
                or a.get("bias")
                or a.get("softmax_scale") != (head_dim / 2) ** -0.5):
            _refuse("shared_cfg['attention']", "heads of 2 · d_model / n_heads channels scaled by "
                    "(head_dim / 2)^-1/2, all or no channels turned, no window or biases", a)
        if (not m.get("gated", True) or m.get("bias", False) != config.bias
                or s.get("norm_eps") != config.norm_epsilon):
            _refuse("shared_cfg", "a gated MLP with biases as the Mamba projections and the norms' epsilon "
                    "norm_epsilon", s)
        if s.get("adapter_rank", 0) < 1:
            _refuse("shared_cfg['adapter_rank']", "per-use MLP adapters (rank >= 1)",
                    s.get("adapter_rank", 0))
        if not config.tie_embeddings and s.get("n_blocks", 1) < len(s["layers"]):
            _refuse("shared_cfg['n_blocks']", "blocks shared by several layers only with tied embeddings "
                    "(transformers 5 does not tie them otherwise); one block per use", s.get("n_blocks", 1))
        kinds = ["hybrid" if i in s["layers"] else "linear_attention" for i in range(config.n_layer)]
        if [i for i, k in enumerate(kinds) if k == "hybrid"] != list(s["layers"]):
            _refuse("shared_cfg['layers']", "the uses in layer order", s["layers"])
        keys = {"num_attention_heads": heads, "num_key_value_heads": a.get("n_kv_heads", heads),
                "use_mem_rope": a.get("rotary_dim", head_dim) != 0,
                "rope_parameters": {"rope_type": "default", "rope_theta": a.get("rope_base", 10000.0)},
                "num_mem_blocks": s.get("n_blocks", 1), "adapter_rank": s["adapter_rank"],
                "use_shared_attention_adapter": bool(s.get("attention_adapters", False)),
                "intermediate_size": m.get("d_intermediate", 4 * config.d_model),
                "hidden_act": m.get("activation", "silu")}
    else:
        kinds = ["linear_attention"] * config.n_layer
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "num_hidden_layers": config.n_layer, "layers_block_type": kinds,
        "tie_word_embeddings": config.tie_embeddings, "rms_norm_eps": config.norm_epsilon,
        "mamba_d_state": config.d_state, "mamba_d_conv": config.d_conv, "mamba_expand": config.expand,
        "mamba_ngroups": o["ngroups"], "n_mamba_heads": config.d_inner // o["headdim"],
        "chunk_size": o["chunk_size"], "add_bias_linear": config.bias, "use_conv_bias": True,
        "time_step_min": o["dt_limit"][0], "time_step_max": config.dt_max,
        "time_step_floor": config.dt_init_floor,
        **keys,
    }


# ------------------------------------------------------------------------------------------------ weights
def _first_uses(config: MambaConfig) -> dict[int, int]:
    """block -> the layer of its first use (where transformers stores it)."""
    s = config.shared_cfg
    first: dict[int, int] = {}
    for j, layer in enumerate(s.get("layers", [])):
        first.setdefault(j % s.get("n_blocks", 1), layer)
    return first


def _block_from_hf(sub: H.Tensors, b: int, keep: set[int], out: H.Tensors) -> None:
    """One shared_transformer.* (names relative to it) -> backbone.shared.blocks.b and the adapters of the
    uses ``keep`` (block b's); adapters of other uses in it are never read by transformers and are dropped."""
    block, uses = f"backbone.shared.blocks.{b}.", "backbone.shared.uses."
    out[block + "norm_in.weight"] = sub.pop("input_layernorm.weight")
    out[block + "norm_ff.weight"] = sub.pop("pre_ff_layernorm.weight")
    attn = H.take(sub, "self_attn.")
    for n, name in enumerate("qkv"):
        for key, t in H.take(attn, f"linear_{name}_adapter_list.").items():
            j, rest = key.split(".", 1)
            if int(j) in keep:
                out[f"{uses}{j}.qkv_adapters.{n}.{rest}"] = t
    H.put(out, block + "attention.", H.attention_from_hf(attn))
    ff = H.take(sub, "feed_forward.")
    for key, t in H.take(ff, "gate_up_proj_adapter_list.").items():
        j, rest = key.split(".", 1)
        if int(j) in keep:
            out[f"{uses}{j}.fc1_adapter.{rest}"] = H.swap_halves(t, 0) if rest.startswith("1.") else t
    for leaf in ("weight", "bias"):
        if f"gate_up_proj.{leaf}" in ff:
            out[f"{block}mlp.fc1.{leaf}"] = H.swap_halves(ff.pop(f"gate_up_proj.{leaf}"), 0)
            out[f"{block}mlp.fc2.{leaf}"] = ff.pop(f"down_proj.{leaf}")
    H.put(out, block + "mlp.", ff)
    H.put(out, block, sub)  # anything left is reported as unexpected


def weights_from_hf(tensors: H.Tensors, config: MambaConfig, raw: dict[str, Any]) -> H.Tensors:
    """Zamba2 tensors -> the model's names; a block's copies under later uses (when stored) must be equal
    to the first and are dropped."""
    t = dict(tensors)
    out = H.ends(t, config, "model.embed_tokens.weight", "model.final_layernorm.weight")
    s = config.shared_cfg
    uses = {layer: j for j, layer in enumerate(s.get("layers", []))}
    first = _first_uses(config)
    blocks: dict[int, H.Tensors] = {}
    for i in range(config.n_layer):
        hf = f"model.layers.{i}."
        if i in uses:
            j = uses[i]
            sub = H.take(t, hf + "shared_transformer.")
            n_blocks = s.get("n_blocks", 1)
            b = j % n_blocks
            if first[b] == i:
                blocks[b] = dict(sub)
                _block_from_hf(sub, b, {k for k in uses.values() if k % n_blocks == b}, out)
            else:
                for name, tensor in sub.items():
                    if name in blocks[b] and not torch.equal(tensor, blocks[b][name]):
                        raise CheckpointError(
                            f"weight {hf}shared_transformer.{name!r}: expected the shared block {b}'s value "
                            f"(stored under layer {first[b]}), got another")
            out[f"backbone.shared.uses.{j}.linear.weight"] = t.pop(hf + "linear.weight")
            hf += "mamba_decoder."
        out[H.layer(i) + "norm.weight"] = t.pop(hf + "input_layernorm.weight")
        H.put(out, H.layer(i) + "mixer.", H.take(t, hf + "mamba."))
    return {**t, **out}


def weights_to_hf(tensors: H.Tensors, config: MambaConfig) -> H.Tensors:
    """The model's state dict -> Zamba2's tensor names (each shared block under the first layer that uses
    it, as transformers writes them)."""
    t = dict(tensors)
    out = H.ends_to_hf(t, config, "model.embed_tokens.weight", "model.final_layernorm.weight")
    s = config.shared_cfg
    n_blocks = s.get("n_blocks", 1)
    a = s.get("attention", {})
    heads = a.get("n_heads", 1)
    shape = (heads, a.get("n_kv_heads", heads), 2 * config.d_model // heads)
    first = _first_uses(config)
    for j, i in enumerate(s.get("layers", [])):
        hf = f"model.layers.{i}."
        st = f"model.layers.{first[j % n_blocks]}.shared_transformer."
        use = H.take(t, f"backbone.shared.uses.{j}.")
        out[hf + "linear.weight"] = use.pop("linear.weight")
        for n, name in enumerate("qkv"):
            H.put(out, f"{st}self_attn.linear_{name}_adapter_list.{j}.", H.take(use, f"qkv_adapters.{n}."))
        adapter = H.take(use, "fc1_adapter.")
        adapter["1.weight"] = H.swap_halves(adapter["1.weight"], 0)
        H.put(out, f"{st}feed_forward.gate_up_proj_adapter_list.{j}.", adapter)
        H.put(out, hf + "linear.", use)  # anything left is reported
    for b, i in first.items():
        st = f"model.layers.{i}.shared_transformer."
        block = H.take(t, f"backbone.shared.blocks.{b}.")
        out[st + "input_layernorm.weight"] = block.pop("norm_in.weight")
        out[st + "pre_ff_layernorm.weight"] = block.pop("norm_ff.weight")
        H.put(out, st + "self_attn.", H.attention_to_hf(H.take(block, "attention."), *shape))
        mlp = H.take(block, "mlp.")
        for leaf in ("weight", "bias"):
            if f"fc1.{leaf}" in mlp:
                out[f"{st}feed_forward.gate_up_proj.{leaf}"] = H.swap_halves(mlp.pop(f"fc1.{leaf}"), 0)
                out[f"{st}feed_forward.down_proj.{leaf}"] = mlp.pop(f"fc2.{leaf}")
        H.put(out, st + "feed_forward.", mlp)
        H.put(out, st, block)
    uses = set(s.get("layers", []))
    for i in range(config.n_layer):
        hf = f"model.layers.{i}." + ("mamba_decoder." if i in uses else "")
        out[hf + "input_layernorm.weight"] = t.pop(H.layer(i) + "norm.weight")
        H.put(out, hf + "mamba.", H.take(t, H.layer(i) + "mixer."))
    return {**t, **out}
