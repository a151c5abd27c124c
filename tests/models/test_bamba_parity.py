"""Bamba (transformers BambaForCausalLM) parity, both directions, on tiny random configurations."""

import json

import pytest

transformers = pytest.importorskip("transformers")

from hybrid_parity import compare, hf_to_mambakit, mambakit_to_hf  # noqa: E402

from mambakit import MambaLMHeadModel  # noqa: E402
from mambakit.errors import CheckpointError  # noqa: E402

CASES = {
    "gqa-attn1-g2": dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1],
                         num_hidden_layers=3, mamba_n_heads=8, mamba_n_groups=2, mamba_d_state=8,
                         mamba_chunk_size=8, intermediate_size=40, vocab_size=61),
    "mha-bias-tied": dict(hidden_size=24, num_attention_heads=2, num_key_value_heads=2,
                          attn_layer_indices=[0, 2], num_hidden_layers=3, mamba_n_heads=4, mamba_d_state=4,
                          mamba_chunk_size=5, mamba_expand=2, intermediate_size=30, vocab_size=50,
                          attention_bias=True, mlp_bias=True, mamba_proj_bias=True, tie_word_embeddings=True,
                          rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
}


def hf_config(name):
    return transformers.BambaConfig(**CASES[name], pad_token_id=None, bos_token_id=None, eos_token_id=None)


@pytest.mark.parametrize("name", list(CASES))
def test_bamba_checkpoint_loads_and_matches(name, tmp_path):
    hf, mk = hf_to_mambakit(transformers.BambaForCausalLM, hf_config(name), tmp_path)
    c = CASES[name]
    assert mk.config.hf_model_type == "bamba" and mk.config.n_layer == 2 * c["num_hidden_layers"]
    assert [mk.config.layer_types[2 * i] for i in c["attn_layer_indices"]] == ["attention"] * len(
        c["attn_layer_indices"])
    compare(hf, mk, c["vocab_size"])


@pytest.mark.parametrize("name", list(CASES))
def test_mambakit_bamba_export_loads_in_transformers(name, tmp_path):
    _, mk = hf_to_mambakit(transformers.BambaForCausalLM, hf_config(name), tmp_path / "a")
    hf = mambakit_to_hf(transformers.BambaForCausalLM, mk, tmp_path / "b")
    assert hf.config.attn_layer_indices == CASES[name]["attn_layer_indices"]
    compare(hf, mk, CASES[name]["vocab_size"])
    back = MambaLMHeadModel.from_pretrained(tmp_path / "b")
    assert back.config == mk.config


def test_unsupported_bamba_values_name_the_key(tmp_path):
    hf = transformers.BambaForCausalLM(hf_config("gqa-attn1-g2"))
    hf.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    for key, value in (("hidden_act", "gelu"), ("rope_parameters", {"rope_type": "yarn", "factor": 2.0})):
        (tmp_path / "config.json").write_text(json.dumps({**raw, key: value}))
        with pytest.raises(CheckpointError, match=key):
            MambaLMHeadModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**raw, "mamba_n_head": 8}))  # a typo
    with pytest.raises(CheckpointError, match="mamba_n_heads"):
        MambaLMHeadModel.from_pretrained(tmp_path)
