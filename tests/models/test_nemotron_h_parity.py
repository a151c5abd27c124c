"""Nemotron-H (transformers NemotronHForCausalLM) parity, both directions: Mamba-2, attention without
positions, relu² MLP and the sigmoid-routed MoE with a shared expert."""

import pytest
from hybrid_parity import compare, hf_to_mambakit, mambakit_to_hf

transformers = pytest.importorskip("transformers")

from mambakit import MambaLMHeadModel  # noqa: E402

BASE = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, mamba_num_heads=8,
            mamba_head_dim=8, n_groups=2, ssm_state_size=8, chunk_size=8, intermediate_size=40, vocab_size=61)
CASES = {
    "M-M*-E": dict(BASE, layers_block_type=["linear_attention", "mlp", "linear_attention", "full_attention",
                                            "mlp", "moe"], n_routed_experts=4, num_experts_per_tok=2,
                   moe_intermediate_size=12, moe_shared_expert_intermediate_size=10,
                   routed_scaling_factor=1.5, time_step_min=0.01),
    "M*-tied-bias": dict(BASE, layers_block_type=["linear_attention", "full_attention", "mlp"],
                         num_key_value_heads=4, head_dim=4, tie_word_embeddings=True, use_bias=True,
                         mlp_bias=True, use_conv_bias=False, layer_norm_epsilon=1e-6, mlp_hidden_act="silu"),
}


def hf_config(name):
    return transformers.NemotronHConfig(**CASES[name], pad_token_id=None, bos_token_id=None,
                                        eos_token_id=None)


@pytest.mark.parametrize("name", list(CASES))
def test_nemotron_h_checkpoint_loads_and_matches(name, tmp_path):
    hf, mk = hf_to_mambakit(transformers.NemotronHForCausalLM, hf_config(name), tmp_path)
    assert len(mk.config.layer_types) == len(CASES[name]["layers_block_type"])
    compare(hf, mk, CASES[name]["vocab_size"])


@pytest.mark.parametrize("name", list(CASES))
def test_mambakit_nemotron_h_export_loads_in_transformers(name, tmp_path):
    _, mk = hf_to_mambakit(transformers.NemotronHForCausalLM, hf_config(name), tmp_path / "a")
    hf = mambakit_to_hf(transformers.NemotronHForCausalLM, mk, tmp_path / "b")
    compare(hf, mk, CASES[name]["vocab_size"])
    assert MambaLMHeadModel.from_pretrained(tmp_path / "b").config == mk.config
