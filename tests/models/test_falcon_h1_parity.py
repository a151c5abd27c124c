"""Falcon-H1 (transformers FalconH1ForCausalLM) parity, both directions: attention and Mamba-2 side by side in
each layer, every multiplier (embedding, lm_head, attention in/out, key, ssm in/out, the per-segment mup
vector, MLP gate/down), the inner width mamba_d_ssm, the optional gated norm and the two Mamba biases."""

import pytest
from hybrid_parity import cached_equals_full, compare, export_matches, hf_to_mambakit, refuses

transformers = pytest.importorskip("transformers")

from mambakit import MambaLMHeadModel, from_pretrained  # noqa: E402
from mambakit.layers import ParallelAttentionMamba2  # noqa: E402

BASE = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3,
            mamba_d_state=8, mamba_chunk_size=8, intermediate_size=24, vocab_size=61)
CASES = {
    "d_ssm-gqa-multipliers": dict(BASE, mamba_d_ssm=48, mamba_n_heads=4, mamba_d_head=12, mamba_n_groups=2,
                                  embedding_multiplier=2.5, lm_head_multiplier=0.75, key_multiplier=0.6,
                                  attention_in_multiplier=1.5, attention_out_multiplier=0.8,
                                  ssm_in_multiplier=1.3, ssm_out_multiplier=0.7,
                                  ssm_multipliers=[0.5, 1.5, 0.8, 1.2, 2.0], mlp_multipliers=[1.4, 0.6]),
    "rmsnorm-biases-tied-head_dim": dict(BASE, mamba_d_ssm=None, mamba_expand=2, mamba_n_heads=8,
                                         mamba_rms_norm=True, mamba_proj_bias=True, attention_bias=True,
                                         mlp_bias=True, tie_word_embeddings=True, head_dim=12,
                                         rms_norm_eps=1e-6, mamba_conv_bias=False, mamba_d_conv=3,
                                         rope_parameters={"rope_type": "default", "rope_theta": 500.0},
                                         key_multiplier=1.7, ssm_multipliers=[1.1, 0.9, 1.3, 0.7, 0.5]),
    "norm-after-gate-out-bias": dict(BASE, num_hidden_layers=2, mamba_d_ssm=32, mamba_n_heads=4,
                                     mamba_n_groups=4, mamba_rms_norm=True, mamba_norm_before_gate=False,
                                     projectors_bias=True, num_key_value_heads=1),
}


def hf_config(name):
    return transformers.FalconH1Config(**CASES[name], pad_token_id=None, bos_token_id=None, eos_token_id=None)


@pytest.mark.parametrize("name", list(CASES))
def test_falcon_h1_checkpoint_loads_and_matches(name, tmp_path):
    hf, mk = hf_to_mambakit(transformers.FalconH1ForCausalLM, hf_config(name), tmp_path)
    n = CASES[name]["num_hidden_layers"]
    assert mk.config.hf_model_type == "falcon_h1" and mk.config.layer_types == ["parallel_hybrid", "mlp"] * n
    assert isinstance(mk.backbone.layers[0].mixer, ParallelAttentionMamba2)
    compare(hf, mk, CASES[name]["vocab_size"])
    assert type(from_pretrained(tmp_path)) is MambaLMHeadModel


@pytest.mark.parametrize("name", list(CASES))
def test_mambakit_falcon_h1_export_loads_in_transformers(name, tmp_path):
    hf, _ = export_matches(transformers.FalconH1ForCausalLM, hf_config(name), tmp_path,
                           CASES[name]["vocab_size"])
    assert hf.config.ssm_multipliers == [1.0] * 5 and hf.config.key_multiplier == 1.0  # folded


def test_falcon_h1_cached_generation_equals_full_sequence(tmp_path):
    _, mk = hf_to_mambakit(transformers.FalconH1ForCausalLM, hf_config("d_ssm-gqa-multipliers"), tmp_path)
    cached_equals_full(mk, 61)


def test_unsupported_falcon_h1_values_name_the_key(tmp_path):
    changes = [("hidden_act", "gelu"), ("rope_parameters", {"rope_type": "linear", "factor": 2.0}),
               ("mamba_d_head", 7), ("ssm_multipliers", [1.0, 2.0]), ("mlp_multipliers", 3.0)]
    refuses(tmp_path, transformers.FalconH1ForCausalLM(hf_config("d_ssm-gqa-multipliers")), changes,
            ("ssm_out_multiplie", "ssm_out_multiplier"))


def test_parallel_hybrid_options_are_checked_and_exports_refuse_what_falcon_h1_lacks(tmp_path):
    from mambakit import MambaConfig
    from mambakit.errors import ConfigError

    def config(**cfg):
        return MambaConfig(d_model=16, n_layer=2, vocab_size=20, d_state=4, mixer="parallel_hybrid",
                           mixer_cfg={"mamba2": {"headdim": 8}, "attention": {"n_heads": 2}, **cfg},
                           layer_types=["parallel_hybrid", "mlp"], hf_model_type="falcon_h1")

    for bad, key in (({"mamba2": {"headdim": 8, "bogus": 1}}, "mamba2"),
                     ({"attention": {"heads": 2}}, "attention"), ({"extra": {}}, "mixer_cfg")):
        with pytest.raises(ConfigError, match=key):
            MambaLMHeadModel(config(**bad))
    windowed = MambaLMHeadModel(config(attention={"n_heads": 2, "sliding_window": 4}))
    with pytest.raises(ConfigError, match="attention"):
        windowed.save_pretrained(tmp_path, format="hf")
