"""The Hugging Face format: config.json both ways (Mamba-1 and Mamba-2; read by transformers and read
from it), the keys it ignores and those it refuses, what it cannot hold, and its weight names."""

import json
import math

import pytest
import torch
import transformers
from model_helpers import m2_config, nondefault_config, nondefault_mamba2_config

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import CheckpointError, ConfigError
from mambakit.models.formats import hf


def test_hf_round_trip_and_transformers_accepts_it():
    c = nondefault_config()
    d = json.loads(json.dumps(hf.config_to_hf(c)))
    assert hf.config_from_hf(d) == c
    tc = transformers.MambaConfig(**{k: v for k, v in d.items() if k != "architectures"})
    assert (tc.hidden_size, tc.state_size, tc.num_hidden_layers, tc.conv_kernel) == (24, 4, 3, 2)
    assert tc.time_step_rank == 5 and tc.intermediate_size == 72 and tc.vocab_size == 77
    assert tc.layer_norm_epsilon == 1e-6 and tc.residual_in_fp32 is False and tc.use_bias is True
    assert tc.tie_word_embeddings is False and tc.use_conv_bias is False
    # auto dt_rank survives too, and transformers resolves it the same way
    auto = MambaConfig(d_model=40, n_layer=1, vocab_size=9)
    assert hf.config_from_hf(hf.config_to_hf(auto)) == auto
    assert transformers.MambaConfig(**hf.config_to_hf(auto)).time_step_rank == auto.dt_rank_value


def test_hf_config_written_by_transformers_is_read():
    tc = transformers.MambaConfig(
        vocab_size=99,
        hidden_size=32,
        state_size=8,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=3,
        time_step_rank=4,
        use_conv_bias=False,
        layer_norm_epsilon=1e-6,
        residual_in_fp32=False,
    )
    c = hf.config_from_hf(json.loads(tc.to_json_string()))
    assert (c.d_model, c.d_state, c.n_layer, c.d_conv, c.dt_rank, c.vocab_size) == (32, 8, 2, 3, 4, 99)
    assert c.conv_bias is False and c.norm_epsilon == 1e-6 and c.residual_in_fp32 is False


def test_hf_config_with_state_spaces_leftovers():
    # converted checkpoints carry both names; a config with only the state-spaces names is read by them
    d = {"model_type": "mamba", "d_model": 48, "n_layer": 3, "vocab_size": 64, "hidden_size": 48}
    c = hf.config_from_hf(d)
    assert (c.d_model, c.n_layer) == (48, 3)
    with pytest.raises(ConfigError, match="d_model.*hidden_size=48"):
        hf.config_from_hf({**d, "d_model": 32})


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda d: d.update(model_type="mamba2"), "model_type"),
        (lambda d: d.update(hidden_sise=3), "hidden_sise"),
        (lambda d: d.update(hidden_act="gelu"), "hidden_act"),
        (lambda d: d.update(intermediate_size=5), "intermediate_size"),
    ],
)
def test_hf_bad_keys(mutate, key):
    d = hf.config_to_hf(MambaConfig(d_model=16, n_layer=2, vocab_size=50))
    mutate(d)
    with pytest.raises(ConfigError, match=key):
        hf.config_from_hf(d)


def test_hf_cannot_hold_layernorm_or_other_mixers():
    with pytest.raises(ConfigError, match="rms_norm"):
        hf.config_to_hf(MambaConfig(d_model=16, n_layer=2, vocab_size=50, rms_norm=False))
    with pytest.raises(ConfigError, match="mixer"):
        hf.config_to_hf(MambaConfig(d_model=16, n_layer=2, vocab_size=50, mixer="s4d"))


def test_mamba2_hf_round_trip_and_transformers_reads_it():
    transformers = pytest.importorskip("transformers")
    c = nondefault_mamba2_config()
    d = json.loads(json.dumps(hf.config_to_hf(c)))
    assert d["model_type"] == "mamba2" and d["architectures"] == ["Mamba2ForCausalLM"]
    assert hf.config_from_hf(d) == c
    tc = transformers.Mamba2Config(**{k: v for k, v in d.items() if k != "architectures"})
    assert (tc.num_heads, tc.head_dim, tc.n_groups, tc.state_size, tc.chunk_size) == (9, 8, 3, 6, 7)
    assert tc.hidden_size * tc.expand == 72 and tuple(tc.time_step_limit) == (0.01, 5.0)
    assert tc.tie_word_embeddings is False and tc.use_bias is True and tc.layer_norm_epsilon == 1e-6


def test_mamba2_hf_config_written_by_transformers_is_read():
    transformers = pytest.importorskip("transformers")
    tc = transformers.Mamba2Config(
        vocab_size=99, hidden_size=32, num_heads=16, head_dim=4, n_groups=4, state_size=12,
        num_hidden_layers=2, conv_kernel=3, chunk_size=32, layer_norm_epsilon=1e-6,
    )
    d = json.loads(tc.to_json_string())  # time_step_limit's inf is written as {"__float__": "Infinity"}
    c = hf.config_from_hf(d)
    assert (c.d_model, c.d_state, c.n_layer, c.d_conv, c.vocab_size) == (32, 12, 2, 3, 99)
    assert c.mixer_cfg["dt_limit"] == (0.0, math.inf) and c.mixer_cfg["norm_eps"] == 1e-6
    assert (c.mixer_cfg["headdim"], c.mixer_cfg["ngroups"], c.mixer_cfg["chunk_size"]) == (4, 4, 32)
    assert c.tie_embeddings is False  # transformers' Mamba2 default


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda d: d.update(num_heads=3), "num_heads.*headdim mismatch"),
        (lambda d: d.update(n_groups=3), "n_groups"),
        (lambda d: d.update(rms_norm=False), "rms_norm"),
        (lambda d: d.update(hidden_act="gelu"), "hidden_act"),
        (lambda d: d.update(time_step_limit=[0.0]), "time_step_limit"),
        (lambda d: d.update(num_head=2), "unknown key.*num_head"),
        (lambda d: d.update(model_type="mamba"), r"model_type 'mamba'.*keys of model_type 'mamba2'"),
    ],
)
def test_hf_bad_mamba2_keys(mutate, key):
    d = hf.config_to_hf(m2_config())
    mutate(d)
    with pytest.raises(ConfigError, match=key):
        hf.config_from_hf(d)


def test_mamba1_hf_config_relabelled_mamba2_is_named():
    d = hf.config_to_hf(MambaConfig(d_model=16, n_layer=2, vocab_size=50))
    d["model_type"] = "mamba2"
    message = r"intermediate_size.*model_type 'mamba2'.*keys of model_type 'mamba'"
    with pytest.raises(ConfigError, match=message):
        hf.config_from_hf(d)


@pytest.mark.parametrize(
    "options,key",
    [
        ({"d_ssm": 16}, "d_ssm"),
        ({"rmsnorm": False}, "rmsnorm"),
        ({"norm_before_gate": True}, "norm_before_gate"),
        ({"D_has_hdim": True}, "D_has_hdim"),
        ({"norm_eps": 1e-6}, "norm_eps.*norm_epsilon"),
    ],
)
def test_what_the_hf_format_cannot_hold_is_refused(options, key):
    with pytest.raises(ConfigError, match=rf"mixer_cfg\['{key}"):
        hf.config_to_hf(m2_config(mixer_cfg=options))


# Keys transformers' PretrainedConfig writes (in 4.x or 5.x) that mean nothing to mambakit: all ignored.
GENERIC_KEYS = {
    "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, "torch_dtype": "float32", "dtype": "float32",
    "transformers_version": "4.46.0", "_name_or_path": "x", "output_hidden_states": False, "use_cache": True,
    "return_dict": True, "chunk_size_feed_forward": 0, "is_encoder_decoder": False,
    "tie_encoder_decoder": False,
    "id2label": {"0": "a"}, "label2id": {"a": 0}, "problem_type": None, "initializer_range": 0.1,
    "time_step_scale": 1.0, "time_step_init_scheme": "random", "rescale_prenorm_residual": False,
    "use_mambapy": False, "layer_types": None, "fused_add_norm": True, "ssm_cfg": {},
    "some_future_transformers_key": [1, 2],
}


@pytest.mark.parametrize("config", [nondefault_config, lambda: m2_config(tie_embeddings=False)])
def test_generic_and_implementation_keys_are_ignored(config):
    c = config()
    assert hf.config_from_hf({**hf.config_to_hf(c), **GENERIC_KEYS}) == c


@pytest.mark.parametrize(
    "kind,typo,meant",
    [("mamba", "hidden_sise", "hidden_size"), ("mamba", "state_sizes", "state_size"),
     ("mamba2", "num_head", "num_heads"), ("mamba2", "time_step_limits", "time_step_limit")],
)
def test_a_misspelt_key_is_named_with_the_key_it_resembles(kind, typo, meant):
    c = nondefault_config() if kind == "mamba" else m2_config()
    with pytest.raises(ConfigError, match=rf"unknown key\(s\) \['{typo}'\].*did you mean '{meant}'"):
        hf.config_from_hf({**hf.config_to_hf(c), typo: 3})


@pytest.mark.parametrize("tied", [True, False])
def test_weights_both_ways(tied):
    c = nondefault_config() if not tied else MambaConfig(d_model=24, n_layer=1, vocab_size=77, d_state=4)
    model = MambaLMHeadModel(c)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stored = hf.weights_to_hf(state, c)
    assert "backbone.embedding.weight" not in stored
    assert stored["backbone.embeddings.weight"].shape == (77, 24)  # unpadded
    assert ("lm_head.weight" in stored) == (not tied)
    if not tied:
        assert stored["lm_head.weight"].shape == (77, 24)
    back = hf.weights_from_hf(stored, "src")
    assert set(back) == set(state) - ({"lm_head.weight"} if tied else set())
    assert torch.equal(back["backbone.embedding.weight"], state["backbone.embedding.weight"][:77])
    with pytest.raises(CheckpointError, match="src: holds both"):
        hf.weights_from_hf({**stored, "backbone.embedding.weight": back["backbone.embedding.weight"]}, "src")
