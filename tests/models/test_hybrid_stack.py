"""Hybrid stacks by layer types: every kind in one model, cached generation (prefill + steps, and chunked
prefill) against the full-sequence logits, the pattern string, and the errors that name the key."""

import pytest
import torch

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import ConfigError
from mambakit.layers import CausalSelfAttention, GatedMLP, Mamba2Block, MambaBlock, MoE

TOL = 1e-4


def hybrid_config(**over) -> MambaConfig:
    base = dict(
        d_model=32, n_layer=8, vocab_size=50, d_state=8, mixer="mamba2",
        mixer_cfg={"headdim": 8, "ngroups": 2, "chunk_size": 4},
        layer_types=["mamba2", "mlp", "attention", "moe", "mamba", "mlp", "attention", "mlp"],
        layer_cfg={
            "attention": {"n_heads": 4, "n_kv_heads": 2, "rotary_dim": 4, "sliding_window": 6},
            "mlp": {"d_intermediate": 48, "activation": "silu"},
            "moe": {"n_experts": 4, "top_k": 2, "d_intermediate": 24, "d_shared": 16},
        },
        tie_embeddings=False, embedding_multiplier=2.0, logits_multiplier=0.5,
    )
    base.update(over)
    return MambaConfig(**base)


def perturb_(model, seed=1, scale=0.1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def test_each_layer_is_its_kind():
    model = MambaLMHeadModel(hybrid_config(), generator=torch.Generator().manual_seed(0))
    kinds = [type(layer.mixer) for layer in model.backbone.layers]
    assert kinds == [Mamba2Block, GatedMLP, CausalSelfAttention, MoE, MambaBlock, GatedMLP,
                     CausalSelfAttention, GatedMLP]
    attn = model.backbone.layers[2].mixer
    assert (attn.n_heads, attn.n_kv_heads, attn.rotary_dim, attn.sliding_window) == (4, 2, 4, 6)
    assert model.backbone.layers[0].mixer.ngroups == 2
    cache = model.allocate_inference_cache(2)
    assert cache[1] == {} and set(cache[2]) == {"key_cache", "value_cache", "length", "first_key"}
    assert set(cache[0]) == {"conv_state", "ssm_state"}


@pytest.mark.parametrize("pattern_or_list",
                         ["M-M*-E", ["mamba2", "mlp", "mamba2", "attention", "mlp", "moe"]])
@torch.no_grad()
def test_cached_generation_equals_full_sequence_logits(pattern_or_list):
    config = hybrid_config(n_layer=6, layer_types=pattern_or_list,
                           layer_cfg={k: v for k, v in hybrid_config().layer_cfg.items()})
    model = MambaLMHeadModel(config, generator=torch.Generator().manual_seed(0)).eval()
    perturb_(model)
    ids = torch.randint(0, 50, (2, 21), generator=torch.Generator().manual_seed(3))
    full = model(ids)
    cache = model.allocate_inference_cache(2)
    prefix = model(ids[:, :7], state=cache)
    stepped = torch.stack([model.step(ids[:, t], cache) for t in range(7, 21)], 1)
    assert float((torch.cat([prefix, stepped], 1) - full).abs().max()) <= TOL
    chunked = model.allocate_inference_cache(2)
    pieces = [model(ids[:, a:b], state=chunked) for a, b in ((0, 5), (5, 13), (13, 21))]
    assert float((torch.cat(pieces, 1) - full).abs().max()) <= TOL


@torch.no_grad()
def test_full_stack_with_mamba1_and_greedy_generation_matches_recomputation():
    model = MambaLMHeadModel(hybrid_config(), generator=torch.Generator().manual_seed(0)).eval()
    perturb_(model)
    prompt = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(4))
    out = model.generate(prompt, 12, temperature=0)
    for t in range(5, out.shape[1]):  # every generated token is the argmax of the full forward
        logits = model(out[:, :t])[:, -1, :50]
        assert torch.equal(logits.argmax(-1), out[:, t])


def test_multipliers_scale_embeddings_and_logits():
    config = hybrid_config()
    model = MambaLMHeadModel(config, generator=torch.Generator().manual_seed(0)).eval()
    plain = MambaLMHeadModel(hybrid_config(embedding_multiplier=1.0, logits_multiplier=1.0)).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        plain.backbone.embedding.weight.mul_(2.0)
        ids = torch.randint(0, 50, (1, 9))
        assert torch.allclose(model(ids), plain(ids) * 0.5, atol=1e-5)


@pytest.mark.parametrize(
    "over, key",
    [
        ({"layer_types": ["mamba2"] * 7}, "layer_types"),
        ({"layer_types": "M-X"}, "layer_types"),
        ({"layer_types": ["mamba2", "mlp", "nonsense", "mlp", "mamba2", "mlp", "mamba2", "mlp"],
          "layer_cfg": {}}, r"layer_types\[2\]"),
        ({"layer_cfg": {"mamba2": {"headdim": 8}}}, "layer_cfg"),
        ({"layer_cfg": {"convolution": {}}}, "layer_cfg"),
        ({"layer_cfg": {"mlp": {"width": 3}}}, "layer_cfg"),
        ({"layer_cfg": {"moe": {"n_experts": 2}}}, "layer_cfg"),
        ({"layer_cfg": {"attention": {"n_heads": 4, "n_kv_heads": 3}}}, "n_kv_heads"),
        ({"embedding_multiplier": 0}, "embedding_multiplier"),
    ],
)
def test_bad_hybrid_configs_name_the_key(over, key):
    with pytest.raises(ConfigError, match=key):
        MambaLMHeadModel(hybrid_config(**over))


def test_config_round_trips_through_its_dict():
    config = hybrid_config(layer_types="M-M*-E-", n_layer=7)
    assert config.layer_types[:4] == ["mamba2", "mlp", "mamba2", "attention"]
    assert MambaConfig.from_dict(config.to_dict()) == config


@torch.no_grad()
def test_mambakit_format_round_trips_a_hybrid(tmp_path):
    model = MambaLMHeadModel(hybrid_config(), generator=torch.Generator().manual_seed(0)).eval()
    model.save_pretrained(tmp_path)
    back = MambaLMHeadModel.from_pretrained(tmp_path).eval()
    assert back.config == model.config
    ids = torch.randint(0, 50, (1, 9))
    assert torch.equal(back(ids), model(ids))


def test_top_level_from_pretrained_dispatches_on_the_directory(tmp_path):
    import mambakit

    hybrid = MambaLMHeadModel(hybrid_config(), generator=torch.Generator().manual_seed(0))
    hybrid.save_pretrained(tmp_path / "hybrid")
    pure = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=2, vocab_size=20, mixer="mamba2",
                                        mixer_cfg={"headdim": 8}, d_state=4))
    pure.save_pretrained(tmp_path / "pure", format="hf")
    assert mambakit.from_pretrained(tmp_path / "hybrid").config == hybrid.config
    assert mambakit.from_pretrained(tmp_path / "pure").config.layer_types is None
    with pytest.raises(ConfigError, match="hf_model_type"):
        hybrid.save_pretrained(tmp_path / "nowhere", format="hf")
