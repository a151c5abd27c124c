"""Causal attention mixer: rotary embeddings against complex rotation, the layer against a plain float64
softmax-attention loop, the mixer protocol (prompt + steps == full forward, also past the cache's initial
capacity), causality, and bad input."""

import math

import pytest
import torch

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import ConfigError, ShapeError
from mambakit.layers.attention import CausalSelfAttention, apply_rotary, rotary_angles
from mambakit.models.mixers import available_mixers, register_mixer

F64 = torch.float64


def test_rotary_is_a_complex_rotation_of_component_pairs():
    D, L = 8, 11
    x = torch.randn(2, L, D, dtype=F64)
    positions = torch.arange(100, 100 + L)
    cos, sin = rotary_angles(positions, D, base=500.0)
    out = apply_rotary(x, cos, sin)
    z = torch.complex(x[..., : D // 2], x[..., D // 2 :])
    theta = torch.tensor([500.0 ** (-2 * i / D) for i in range(D // 2)], dtype=F64)
    turned = z * torch.exp(1j * positions.to(F64)[:, None] * theta[None, :])
    torch.testing.assert_close(out, torch.cat([turned.real, turned.imag], -1), rtol=1e-12, atol=1e-12)


def test_rotary_scores_depend_only_on_relative_position():
    D = 8
    q, k = torch.randn(D, dtype=F64), torch.randn(D, dtype=F64)

    def score(m, n):
        cq, sq = rotary_angles(torch.tensor([m]), D)
        ck, sk = rotary_angles(torch.tensor([n]), D)
        return float(apply_rotary(q[None], cq, sq) @ apply_rotary(k[None], ck, sk).T)

    assert score(7, 3) == pytest.approx(score(1007, 1003), abs=1e-9)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-6)


def naive_attention(layer: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Per head and per query position: softmax over keys 0..t of q·k/√d, then the weighted sum of values."""
    b, L, d = x.shape
    H, Dh = layer.n_heads, layer.head_dim
    qkv = x @ layer.in_proj.weight.T
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    cos, sin = rotary_angles(torch.arange(L), Dh, layer.rope_base)
    out = torch.zeros(b, L, d, dtype=x.dtype)
    for h in range(H):
        cols = slice(h * Dh, (h + 1) * Dh)
        qh, kh = apply_rotary(q[..., cols], cos, sin), apply_rotary(k[..., cols], cos, sin)
        for t in range(L):
            scores = (qh[:, t : t + 1] * kh[:, : t + 1]).sum(-1) / math.sqrt(Dh)  # (b, t+1)
            weights = torch.softmax(scores, dim=-1)
            out[:, t, cols] = (weights[..., None] * v[:, : t + 1, cols]).sum(1)
    return out @ layer.out_proj.weight.T


@torch.no_grad()
def test_forward_matches_a_plain_attention_loop():
    layer = CausalSelfAttention(16, n_heads=4, dtype=F64)
    x = torch.randn(2, 9, 16, dtype=F64)
    torch.testing.assert_close(layer(x), naive_attention(layer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (F64, 1e-10)])
@torch.no_grad()
def test_prompt_then_steps_equals_full_forward(dtype, tol):
    layer = CausalSelfAttention(16, n_heads=2, cache_len=4, dtype=dtype)  # the cache must grow twice
    x = torch.randn(3, 19, 16, dtype=dtype)
    full = layer(x)
    state = layer.allocate_state(3)
    outs = [layer(x[:, :5], state=state)]
    assert int(state["length"]) == 5
    outs += [layer.step(x[:, t], state)[:, None] for t in range(5, 19)]
    assert int(state["length"]) == 19 and state["key_cache"].shape[2] >= 19
    assert float((torch.cat(outs, 1) - full).abs().max()) <= tol


@torch.no_grad()
def test_outputs_do_not_depend_on_the_future():
    layer = CausalSelfAttention(16)
    x = torch.randn(2, 12, 16)
    changed = x.clone()
    changed[:, 7:] = torch.randn(2, 5, 16)
    y, y_changed = layer(x), layer(changed)
    assert torch.equal(y[:, :7], y_changed[:, :7])
    assert not torch.allclose(y[:, 7:], y_changed[:, 7:])


def test_gradients_reach_every_parameter():
    layer = CausalSelfAttention(16, bias=True)
    layer(torch.randn(2, 6, 16)).square().sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in layer.parameters())


@torch.no_grad()
def test_language_model_with_attention_mixer_prefill_and_step():
    if "attention" not in available_mixers():
        register_mixer("attention", CausalSelfAttention.from_config)
    config = MambaConfig(d_model=32, n_layer=2, vocab_size=11, mixer="attention")
    model = MambaLMHeadModel(config, generator=torch.Generator().manual_seed(0))
    assert model.backbone.layers[0].mixer.n_heads == 2  # default d_model // 16
    ids = torch.randint(0, 11, (2, 10))
    full = model(ids)
    cache = model.allocate_inference_cache(2)
    model(ids[:, :4], state=cache)
    stepped = torch.stack([model.step(ids[:, t], cache) for t in range(4, 10)], 1)
    torch.testing.assert_close(stepped, full[:, 4:], rtol=1e-4, atol=1e-4)


def test_from_config_reads_mixer_cfg_or_an_n_heads_attribute():
    config = MambaConfig(d_model=24, n_layer=1, vocab_size=5, mixer="attention", mixer_cfg={"n_heads": 3})
    layer = CausalSelfAttention.from_config(config, layer_idx=1)
    assert (layer.n_heads, layer.head_dim, layer.layer_idx) == (3, 8, 1)

    class ConfigLike:
        d_model, n_heads = 32, 4

    assert CausalSelfAttention.from_config(ConfigLike(), layer_idx=0).n_heads == 4
    bad = MambaConfig(d_model=16, n_layer=1, vocab_size=5, mixer="attention", mixer_cfg={"heads": 2})
    with pytest.raises(ConfigError, match="mixer_cfg"):
        CausalSelfAttention.from_config(bad, layer_idx=0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"d_model": 16, "n_heads": 3}, "n_heads"),  # does not divide
        ({"d_model": 12, "n_heads": 4}, "n_heads"),  # odd head width
        ({"d_model": 16, "n_heads": 0}, "n_heads"),
        ({"d_model": 1}, "d_model"),
        ({"d_model": 16, "rope_base": 1.0}, "rope_base"),
        ({"d_model": 16, "cache_len": 0}, "cache_len"),
    ],
)
def test_bad_parameters_name_the_argument(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        CausalSelfAttention(**kwargs)


def test_bad_input_and_state_name_the_argument():
    layer = CausalSelfAttention(16)
    with pytest.raises(ShapeError, match="hidden_states"):
        layer(torch.randn(2, 5, 8))
    with pytest.raises(ShapeError, match="hidden_states"):
        layer.step(torch.randn(2, 5, 16), layer.allocate_state(2))
    with pytest.raises(ConfigError, match="state"):
        layer.step(torch.randn(2, 16), {"key_cache": torch.zeros(2, 1, 4, 16)})
    with pytest.raises(ShapeError, match="key_cache"):
        layer.step(torch.randn(3, 16), layer.allocate_state(2))
    with pytest.raises(ConfigError, match="batch_size"):
        layer.allocate_state(0)
