"""Granite 4.0 hybrid (transformers GraniteMoeHybridForCausalLM) parity, dense and MoE, both directions:
multipliers (embedding, residual, attention, logits), RoPE or none, tied or untied head."""

import pytest
from hybrid_parity import compare, hf_to_mambakit, mambakit_to_hf

transformers = pytest.importorskip("transformers")

from mambakit import MambaLMHeadModel  # noqa: E402

BASE = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, mamba_n_heads=8, mamba_n_groups=2,
            mamba_d_state=8, mamba_chunk_size=8, intermediate_size=24, shared_intermediate_size=20,
            vocab_size=61)
CASES = {
    "moe-rope-multipliers": dict(BASE, layer_types=["mamba", "attention", "mamba"], num_hidden_layers=3,
                                 num_local_experts=4, num_experts_per_tok=2, position_embedding_type="rope",
                                 embedding_multiplier=3.0, residual_multiplier=0.5,
                                 attention_multiplier=0.125, logits_scaling=4.0),
    "dense-nope-tied": dict(BASE, layer_types=["attention", "mamba"], num_hidden_layers=2,
                            num_local_experts=0, position_embedding_type="nope", tie_word_embeddings=True,
                            embedding_multiplier=2.0, residual_multiplier=0.25, attention_multiplier=0.3,
                            logits_scaling=2.0, attention_bias=True, rms_norm_eps=1e-5),
    "moe-top1-nope": dict(BASE, layer_types=["mamba", "attention"], num_hidden_layers=2, num_local_experts=3,
                          num_experts_per_tok=1),
}


def hf_config(name):
    return transformers.GraniteMoeHybridConfig(**CASES[name], pad_token_id=None, bos_token_id=None,
                                               eos_token_id=None)


@pytest.mark.parametrize("name", list(CASES))
def test_granite_checkpoint_loads_and_matches(name, tmp_path):
    hf, mk = hf_to_mambakit(transformers.GraniteMoeHybridForCausalLM, hf_config(name), tmp_path)
    ffn = "moe" if CASES[name]["num_local_experts"] else "mlp"
    assert mk.config.layer_types[1::2] == [ffn] * CASES[name]["num_hidden_layers"]
    compare(hf, mk, CASES[name]["vocab_size"])


@pytest.mark.parametrize("name", list(CASES))
def test_mambakit_granite_export_loads_in_transformers(name, tmp_path):
    _, mk = hf_to_mambakit(transformers.GraniteMoeHybridForCausalLM, hf_config(name), tmp_path / "a")
    hf = mambakit_to_hf(transformers.GraniteMoeHybridForCausalLM, mk, tmp_path / "b")
    assert hf.config.num_local_experts == CASES[name]["num_local_experts"]
    assert hf.config.residual_multiplier == 1.0  # folded into the weights
    compare(hf, mk, CASES[name]["vocab_size"])
    assert MambaLMHeadModel.from_pretrained(tmp_path / "b").config == mk.config
