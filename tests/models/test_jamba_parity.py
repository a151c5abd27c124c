"""Jamba (transformers JambaForCausalLM) parity, both directions: its Mamba with RMSNorms on Δ, B and C
(checked alone against JambaMambaMixer first), attention without positions every attn_layer_period layers,
unnormalised softmax-routed experts every expert_layer_period layers, a gated MLP elsewhere."""

import pytest
import torch
from hybrid_parity import TOL, cached_equals_full, compare, export_matches, hf_to_mambakit, perturb_, refuses

transformers = pytest.importorskip("transformers")

from mambakit import MambaLMHeadModel, from_pretrained  # noqa: E402
from mambakit.layers import MambaBlockNormedSSM  # noqa: E402

BASE = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, mamba_d_state=8,
            intermediate_size=24, vocab_size=61, use_mamba_kernels=False)
CASES = {
    "attn1of2-moe-even": dict(BASE, num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1,
                              expert_layer_period=2, expert_layer_offset=0, num_experts=4,
                              num_experts_per_tok=2),
    "attn2of3-tied-bias-top1": dict(BASE, num_hidden_layers=5, attn_layer_period=3, attn_layer_offset=2,
                                    expert_layer_period=2, expert_layer_offset=1, num_experts=3,
                                    num_experts_per_tok=1, mamba_d_conv=3, mamba_dt_rank=5, mamba_expand=1,
                                    mamba_proj_bias=True, mamba_conv_bias=False, tie_word_embeddings=True,
                                    rms_norm_eps=1e-5, num_key_value_heads=4),
    "dense": dict(BASE, num_hidden_layers=3, attn_layer_period=4, attn_layer_offset=0, num_experts=1),
}


def hf_config(name):
    return transformers.JambaConfig(**CASES[name], pad_token_id=None, bos_token_id=None, eos_token_id=None)


@torch.no_grad()
def test_mamba_bcdt_norm_matches_jamba_mamba_mixer():
    from transformers.models.jamba.modeling_jamba import JambaMambaMixer

    config = hf_config("attn2of3-tied-bias-top1")
    torch.manual_seed(0)
    theirs = JambaMambaMixer(config, layer_idx=0).eval()
    perturb_(theirs, 3)
    ours = MambaBlockNormedSSM(32, d_state=8, d_conv=3, expand=1, dt_rank=5, bias=True, conv_bias=False,
                               norm_eps=1e-5)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 13, 32, generator=torch.Generator().manual_seed(1))
    want = theirs(x)
    assert float((ours(x) - want).abs().max()) <= TOL
    state = ours.allocate_state(2)
    prefix = ours(x[:, :6], state=state)
    steps = [ours.step(x[:, t], state) for t in range(6, 13)]
    assert float((torch.cat([prefix, torch.stack(steps, 1)], 1) - want).abs().max()) <= TOL


@pytest.mark.parametrize("name", list(CASES))
def test_jamba_checkpoint_loads_and_matches(name, tmp_path):
    hf, mk = hf_to_mambakit(transformers.JambaForCausalLM, hf_config(name), tmp_path)
    assert mk.config.hf_model_type == "jamba" and mk.config.mixer == "mamba_bcdt_norm"
    block = hf.config.layers_block_type
    assert mk.config.layer_types[::2] == [k if k == "attention" else "mamba_bcdt_norm" for k in block]
    assert mk.config.layer_types[1::2] == ["moe" if e > 1 else "mlp" for e in hf.config.layers_num_experts]
    compare(hf, mk, CASES[name]["vocab_size"])
    assert type(from_pretrained(tmp_path)) is MambaLMHeadModel


@pytest.mark.parametrize("name", list(CASES))
def test_mambakit_jamba_export_loads_in_transformers(name, tmp_path):
    hf, _ = export_matches(transformers.JambaForCausalLM, hf_config(name), tmp_path,
                           CASES[name]["vocab_size"])
    c = hf_config(name)
    assert hf.config.layers_block_type == c.layers_block_type
    assert hf.config.layers_num_experts == c.layers_num_experts


def test_jamba_cached_generation_equals_full_sequence(tmp_path):
    _, mk = hf_to_mambakit(transformers.JambaForCausalLM, hf_config("attn1of2-moe-even"), tmp_path)
    cached_equals_full(mk, 61)


def test_unsupported_jamba_values_name_the_key(tmp_path):
    changes = [("hidden_act", "gelu"), ("attn_layer_offset", 3), ("num_attention_heads", 5),
               ("num_experts", 0), ("expert_layer_period", 0)]
    refuses(tmp_path, transformers.JambaForCausalLM(hf_config("attn1of2-moe-even")), changes,
            ("attn_layer_perio", "attn_layer_period"))
