"""Zamba2 (transformers Zamba2ForCausalLM) parity, both directions: Mamba-2 layers and shared transformer
blocks (attention on [hidden | embeddings], MLP) reused by the hybrid layers with per-use linears and LoRA
adapters; a shared block is one set of parameters, written once, as transformers writes it."""

import pytest
import torch
from hybrid_parity import cached_equals_full, compare, export_matches, hf_to_mambakit, refuses
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from mambakit import MambaLMHeadModel, from_pretrained  # noqa: E402

BASE = dict(hidden_size=32, num_attention_heads=4, intermediate_size=24, vocab_size=61, mamba_d_state=8,
            n_mamba_heads=4, chunk_size=8, adapter_rank=4)
CASES = {
    "2blocks-3uses-attn-adapters-rope": dict(
        BASE, num_hidden_layers=6, num_mem_blocks=2, use_shared_attention_adapter=True, use_mem_rope=True,
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid", "mamba"], mamba_ngroups=2,
        rope_parameters={"rope_type": "default", "rope_theta": 300.0}, time_step_min=0.01),
    "1block-gqa-bias-silu": dict(
        BASE, num_hidden_layers=5, num_mem_blocks=1, num_key_value_heads=2, add_bias_linear=True,
        layers_block_type=["hybrid", "mamba", "mamba", "hybrid", "mamba"], hidden_act="silu",
        rms_norm_eps=1e-6, mamba_expand=1, mamba_d_conv=3),
    # transformers 5 ties a Zamba2's blocks only with tied embeddings: here each hybrid layer has its own
    "untied-a-block-per-use": dict(
        BASE, num_hidden_layers=4, num_mem_blocks=1, tie_word_embeddings=False,
        use_shared_attention_adapter=True,
        layers_block_type=["mamba", "hybrid", "hybrid", "mamba"]),
}


def n_blocks(name):
    c = CASES[name]
    tied = c.get("tie_word_embeddings", True)
    return c["num_mem_blocks"] if tied else c["layers_block_type"].count("hybrid")

SHARED = "2blocks-3uses-attn-adapters-rope"


def hf_config(name):
    return transformers.Zamba2Config(**CASES[name], pad_token_id=None, bos_token_id=None, eos_token_id=None)


@pytest.mark.parametrize("name", list(CASES))
def test_zamba2_checkpoint_loads_and_matches(name, tmp_path):
    hf, mk = hf_to_mambakit(transformers.Zamba2ForCausalLM, hf_config(name), tmp_path)
    c = CASES[name]
    hybrid = [i for i, k in enumerate(c["layers_block_type"]) if k == "hybrid"]
    assert mk.config.hf_model_type == "zamba2" and mk.config.shared_cfg["layers"] == hybrid
    shared = mk.backbone.shared
    assert len(shared.blocks) == n_blocks(name) and len(shared.uses) == len(hybrid)
    compare(hf, mk, c["vocab_size"])
    assert type(from_pretrained(tmp_path)) is MambaLMHeadModel


def test_a_shared_block_is_one_parameter_set(tmp_path):
    _, mk = hf_to_mambakit(transformers.Zamba2ForCausalLM, hf_config(SHARED), tmp_path)
    names = [n for n, _ in mk.named_parameters() if n.startswith("backbone.shared.blocks.")]
    assert {n.split(".")[3] for n in names} == {"0", "1"}  # two blocks for three uses
    assert not any("blocks" in n for n in mk.state_dict() if not n.startswith("backbone.shared.blocks."))
    block = mk.backbone.shared.blocks[0]
    with torch.no_grad():  # a change to block 0 changes uses 0 and 2, the layers 1 and 4
        ids = torch.randint(0, 61, (1, 9))
        before = mk(ids)
        block.mlp.fc2.weight.mul_(2.0)
        assert not torch.allclose(mk(ids), before)


@pytest.mark.parametrize("name", list(CASES))
def test_mambakit_zamba2_export_loads_in_transformers(name, tmp_path):
    hf, _ = export_matches(transformers.Zamba2ForCausalLM, hf_config(name), tmp_path,
                           CASES[name]["vocab_size"])
    assert hf.config.layers_block_type == hf_config(name).layers_block_type
    stored = load_file(tmp_path / "b" / "model.safetensors")
    written = {n.split(".")[2] for n in stored if ".shared_transformer." in n}
    first = sorted({hf_config(name).hybrid_layer_ids[j] for j in range(n_blocks(name))})
    assert sorted(written) == [str(i) for i in first]  # each block once, under its first use


def test_zamba2_cached_generation_equals_full_sequence(tmp_path):
    _, mk = hf_to_mambakit(transformers.Zamba2ForCausalLM, hf_config(SHARED), tmp_path)
    cached_equals_full(mk, 61)


def test_unsupported_zamba2_values_name_the_key(tmp_path):
    changes = [("hidden_act", "tanh"), ("n_mamba_heads", 5), ("num_attention_heads", 5),
               ("num_mem_blocks", 4),
               ("layers_block_type", ["mamba", "hybrid"]), ("num_key_value_heads", 2),
               ("rope_parameters", {"rope_type": "dynamic", "factor": 2.0})]
    refuses(tmp_path, transformers.Zamba2ForCausalLM(hf_config(SHARED)), changes,
            ("adapter_rnk", "adapter_rank"))


def test_zamba2_export_refuses_blocks_shared_under_an_untied_head(tmp_path):
    from mambakit.errors import ConfigError

    _, mk = hf_to_mambakit(transformers.Zamba2ForCausalLM, hf_config("1block-gqa-bias-silu"), tmp_path / "a")
    mk.config.tie_embeddings = False
    with pytest.raises(ConfigError, match="n_blocks"):
        mk.save_pretrained(tmp_path / "b", format="hf")
