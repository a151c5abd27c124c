"""Pieces the hybrid families' Hugging Face formats share (:mod:`.bamba`, :mod:`.granite`,
:mod:`.nemotron_h`, :mod:`.jamba`): reading config.json values with their checks, RoPE parameters, and the
weight conversions of the blocks every family has (attention's q/k/v/o projections, gated MLPs, stacked
experts) between transformers' names and the model's.

The model's names: ``backbone.embedding.weight``, ``backbone.layers.{j}.norm.weight``,
``backbone.layers.{j}.mixer.*``, ``backbone.norm_f.weight``, ``lm_head.weight`` (absent when tied). The
families whose layers hold a mixer and a feed-forward sublayer map HF layer i onto layers 2i and 2i + 1.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch

from ..._checks import check_mapping
from ...errors import ConfigError
from ...layers.mlp import ACTIVATIONS
from ..config import MambaConfig
from .hf import _decode_special_floats
from .state_spaces import EMBEDDING, HEAD

NORM_F = "backbone.norm_f.weight"
Tensors = dict[str, torch.Tensor]


def layer(j: int) -> str:
    """The model's prefix of layer j."""
    return f"backbone.layers.{j}."


def read_config(raw: dict[str, Any], model_type: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a config.json object) with ``defaults`` (transformers' values of the keys we read) filled in
    and inf decoded; a key that is a near-miss of one we read (a typo whose value would silently give way
    to the default) raises :class:`ConfigError` naming it."""
    check_mapping("config", raw)
    if raw.get("model_type") != model_type:
        raise ConfigError(f"config.model_type: expected {model_type!r}, got {raw.get('model_type')!r}")
    for key in sorted(set(raw) - set(defaults)):
        near = difflib.get_close_matches(key, sorted(defaults), n=1, cutoff=0.85)
        if near:
            raise ConfigError(f"config: unknown key {key!r} for model_type {model_type!r}; "
                              f"did you mean {near[0]!r}?")
    return {**defaults, **_decode_special_floats(dict(raw))}


def require(g: dict[str, Any], key: str, allowed: tuple, why: str = "") -> Any:
    """``g[key]`` if it is one of ``allowed``, else :class:`ConfigError` naming the key."""
    if g[key] not in allowed:
        extra = f" ({why})" if why else ""
        raise ConfigError(f"config.{key}: expected one of {list(allowed)}{extra}, got {g[key]!r}")
    return g[key]


def activation(g: dict[str, Any], key: str) -> str:
    """The activation named by ``g[key]``, one mambakit implements."""
    return require(g, key, tuple(ACTIVATIONS))


def rope(g: dict[str, Any], default_partial: float = 1.0) -> tuple[float, float]:
    """(rope_theta, partial_rotary_factor) from ``rope_parameters`` (transformers 5) or the top-level keys
    of older configs; only the default (unscaled) RoPE is implemented."""
    params = g.get("rope_parameters") or {}
    scaling = g.get("rope_scaling")
    for key, value in (("rope_parameters", params), ("rope_scaling", scaling or {})):
        kind = value.get("rope_type", value.get("type", "default"))
        if kind != "default":
            raise ConfigError(f"config.{key}: expected rope_type 'default' (unscaled RoPE), got {kind!r}")
    theta = params.get("rope_theta", g.get("rope_theta", 10000.0))
    partial = params.get("partial_rotary_factor", g.get("partial_rotary_factor", default_partial))
    return float(theta), float(partial)


def rotary_dim(head_dim: int, partial: float) -> int:
    """The rotated channels of a head, as transformers computes them: int(head_dim · partial)."""
    dim = int(head_dim * partial)
    if dim % 2:
        raise ConfigError(f"config.rope_parameters.partial_rotary_factor: expected head_dim · factor even, "
                          f"got {head_dim} · {partial} = {dim}")
    return dim


def paired_layers(config: MambaConfig, family: str, mixers: tuple[str, ...],
                  ffns: tuple[str, ...]) -> list[tuple[str, str]]:
    """The (mixer kind, feed-forward kind) of each HF layer of a two-sublayer family, or
    :class:`ConfigError` when ``config.layer_types`` does not alternate that way."""
    kinds = config.layer_types or []
    pairs = list(zip(kinds[::2], kinds[1::2], strict=False))
    if not kinds or len(kinds) % 2 or any(a not in mixers or b not in ffns for a, b in pairs):
        raise ConfigError(f"MambaConfig.layer_types: the {family} format holds layers alternating a mixer "
                          f"{list(mixers)} and a feed-forward {list(ffns)}, got {config.layer_types!r}")
    return pairs


# --------------------------------------------------------------------------------------------- weights
def take(tensors: Tensors, prefix: str) -> Tensors:
    """Remove and return the tensors under ``prefix``, named relative to it."""
    names = [n for n in tensors if n.startswith(prefix)]
    return {n[len(prefix):]: tensors.pop(n) for n in names}


def put(out: Tensors, prefix: str, sub: Tensors) -> None:
    """Add ``sub`` to ``out`` under ``prefix``."""
    out.update({prefix + n: t for n, t in sub.items()})


def ends(tensors: Tensors, config: MambaConfig, embedding: str, norm_f: str) -> Tensors:
    """The embedding, final norm and head of HF tensors, under the model's names (removed from
    ``tensors``)."""
    out = {EMBEDDING: tensors.pop(embedding), NORM_F: tensors.pop(norm_f)}
    if HEAD in tensors:
        head = tensors.pop(HEAD)
        if not config.tie_embeddings:
            out[HEAD] = head
    return out


def ends_to_hf(tensors: Tensors, config: MambaConfig, embedding: str, norm_f: str,
               keep_head: bool = False) -> Tensors:
    """Inverse of :func:`ends`; a tied head is left out, as transformers writes it (unless ``keep_head``:
    a family that never ties gets its own copy)."""
    out = {embedding: tensors.pop(EMBEDDING), norm_f: tensors.pop(NORM_F)}
    head = tensors.pop(HEAD)
    if keep_head or not config.tie_embeddings:
        out[HEAD] = head.clone()
    return out


def mixer_from_hf(t: Tensors, out: Tensors, i: int, norm: str = "input_layernorm") -> None:
    """HF layer i's norm and mixer (``mamba.*`` or ``self_attn.*``, whichever it holds) -> the model's layer
    2i, moved from ``t`` into ``out``."""
    hf, mine = f"model.layers.{i}.", layer(2 * i)
    out[mine + "norm.weight"] = t.pop(hf + norm + ".weight")
    put(out, mine + "mixer.", take(t, hf + "mamba."))
    put(out, mine + "mixer.", attention_from_hf(take(t, hf + "self_attn.")))


def mixer_to_hf(t: Tensors, out: Tensors, i: int, attention: tuple[int, int, int] | None,
                norm: str = "input_layernorm") -> None:
    """Inverse of :func:`mixer_from_hf`; ``attention``: (n_heads, n_kv_heads, head_dim) when the layer is
    an attention, None for a Mamba mixer."""
    hf = f"model.layers.{i}."
    out[hf + norm + ".weight"] = t.pop(layer(2 * i) + "norm.weight")
    mixer = take(t, layer(2 * i) + "mixer.")
    if attention is None:
        put(out, hf + "mamba.", mixer)
    else:
        put(out, hf + "self_attn.", attention_to_hf(mixer, *attention))


def _pair(sub: Tensors, names: tuple[str, ...], fused: str, out: Tensors) -> None:
    """Concatenate sub[name.weight] (and .bias) for ``names`` into out[fused.weight/.bias]."""
    for leaf in ("weight", "bias"):
        if f"{names[0]}.{leaf}" in sub:
            out[f"{fused}.{leaf}"] = torch.cat([sub.pop(f"{n}.{leaf}") for n in names])


def _unpair(sub: Tensors, fused: str, names: tuple[str, ...], sizes: list[int], out: Tensors) -> None:
    for leaf in ("weight", "bias"):
        if f"{fused}.{leaf}" in sub:
            for name, t in zip(names, torch.split(sub.pop(f"{fused}.{leaf}"), sizes), strict=True):
                out[f"{name}.{leaf}"] = t.clone()


def attention_from_hf(sub: Tensors) -> Tensors:
    """q_proj, k_proj, v_proj, o_proj -> in_proj ([q | k | v]), out_proj; other names pass through."""
    out: Tensors = {}
    _pair(sub, ("q_proj", "k_proj", "v_proj"), "in_proj", out)
    _pair(sub, ("o_proj",), "out_proj", out)
    return {**sub, **out}


def attention_to_hf(sub: Tensors, n_heads: int, n_kv_heads: int, head_dim: int) -> Tensors:
    """Inverse of :func:`attention_from_hf`."""
    out: Tensors = {}
    kv = n_kv_heads * head_dim
    _unpair(sub, "in_proj", ("q_proj", "k_proj", "v_proj"), [n_heads * head_dim, kv, kv], out)
    _unpair(sub, "out_proj", ("o_proj",), [sub["out_proj.weight"].shape[0]], out)
    return {**sub, **out}


def swap_halves(t: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """[a | b] -> [b | a] along ``dim``: transformers' fused [gate | up] and the model's [value | gate]."""
    a, b = t.chunk(2, dim=dim)
    return torch.cat([b, a], dim=dim)


def mlp_from_hf(sub: Tensors, gate: str = "gate_proj", up: str = "up_proj",
                down: str = "down_proj") -> Tensors:
    """Separate gate/up/down projections -> fc1 ([up | gate]; just up when there is no gate), fc2."""
    out: Tensors = {}
    _pair(sub, (up, gate) if f"{gate}.weight" in sub else (up,), "fc1", out)
    _pair(sub, (down,), "fc2", out)
    return {**sub, **out}


def mlp_to_hf(sub: Tensors, gated: bool, gate: str = "gate_proj", up: str = "up_proj",
              down: str = "down_proj") -> Tensors:
    """Inverse of :func:`mlp_from_hf`."""
    out: Tensors = {}
    rows = sub["fc1.weight"].shape[0]
    _unpair(sub, "fc1", (up, gate) if gated else (up,), [rows // 2] * 2 if gated else [rows], out)
    _unpair(sub, "fc2", (down,), [sub["fc2.weight"].shape[0]], out)
    return {**sub, **out}


def stack_experts(sub: Tensors, n_experts: int, names: tuple[str, ...]) -> torch.Tensor:
    """experts.{e}.{name}.weight for each e, the names concatenated by rows -> (n_experts, rows, cols)."""
    return torch.stack([torch.cat([sub.pop(f"experts.{e}.{n}.weight") for n in names])
                        for e in range(n_experts)])


def unstack_experts(w: torch.Tensor, names: tuple[str, ...], out: Tensors) -> None:
    """Inverse of :func:`stack_experts`, into ``out``."""
    for e in range(w.shape[0]):
        for name, part in zip(names, w[e].chunk(len(names)), strict=True):
            out[f"experts.{e}.{name}.weight"] = part.clone()
