"""MambaConfig: defaults, derived sizes, validation naming the field, and its three JSON forms."""

import json

import pytest
import transformers

from mambakit import MambaConfig
from mambakit.errors import ConfigError


def test_defaults_and_derived_sizes():
    c = MambaConfig(d_model=40, n_layer=3, vocab_size=101)
    assert (c.d_state, c.d_conv, c.expand, c.dt_rank) == (16, 4, 2, "auto")
    assert (c.dt_min, c.dt_max, c.dt_init_floor) == (1e-3, 1e-1, 1e-4)
    assert c.conv_bias and not c.bias and c.rms_norm and c.residual_in_fp32 and c.tie_embeddings
    assert c.pad_vocab_size_multiple == 8 and c.mixer == "mamba" and c.norm_epsilon == 1e-5
    assert c.d_inner == 80
    assert c.dt_rank_value == 3  # ceil(40 / 16)
    assert MambaConfig(d_model=48, n_layer=1, vocab_size=8, dt_rank=5).dt_rank_value == 5
    assert c.vocab_size_padded == 104
    assert MambaConfig(d_model=8, n_layer=1, vocab_size=96).vocab_size_padded == 96
    assert MambaConfig(d_model=8, n_layer=1, vocab_size=97, pad_vocab_size_multiple=1).vocab_size_padded == 97


@pytest.mark.parametrize(
    "field,value",
    [
        ("d_model", 0),
        ("n_layer", -1),
        ("vocab_size", 2.5),
        ("d_state", True),
        ("d_conv", 0),
        ("expand", 1.5),
        ("dt_rank", "full"),
        ("dt_rank", 0),
        ("dt_min", 0.0),
        ("dt_max", float("inf")),
        ("dt_init_floor", -1.0),
        ("conv_bias", 1),
        ("rms_norm", "yes"),
        ("pad_vocab_size_multiple", 0),
        ("norm_epsilon", 0),
        ("mixer", ""),
    ],
)
def test_validation_names_the_field(field, value):
    kwargs = dict(d_model=16, n_layer=2, vocab_size=50)
    kwargs[field] = value
    with pytest.raises(ConfigError, match=f"MambaConfig.{field}") as err:
        MambaConfig(**kwargs)
    assert repr(value) in str(err.value)


def test_dt_max_below_dt_min():
    with pytest.raises(ConfigError, match="dt_max"):
        MambaConfig(d_model=16, n_layer=1, vocab_size=10, dt_min=0.1, dt_max=0.01)


def _nondefault() -> MambaConfig:
    return MambaConfig(
        d_model=24,
        n_layer=3,
        vocab_size=77,
        d_state=4,
        d_conv=2,
        expand=3,
        dt_rank=5,
        dt_min=2e-3,
        dt_max=0.2,
        dt_init_floor=1e-3,
        conv_bias=False,
        bias=True,
        residual_in_fp32=False,
        pad_vocab_size_multiple=16,
        tie_embeddings=False,
        norm_epsilon=1e-6,
    )


def test_flat_dict_round_trip():
    c = _nondefault()
    assert MambaConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ConfigError, match="unknown key.*'d_modle'"):
        MambaConfig.from_dict({**c.to_dict(), "d_modle": 3})
    d = c.to_dict()
    del d["n_layer"]
    with pytest.raises(ConfigError, match="n_layer"):
        MambaConfig.from_dict(d)


def test_state_spaces_round_trip_and_official_keys():
    c = _nondefault()
    d = json.loads(json.dumps(c.to_state_spaces_dict()))
    for key in (
        "d_model",
        "n_layer",
        "vocab_size",
        "ssm_cfg",
        "rms_norm",
        "residual_in_fp32",
        "fused_add_norm",
        "pad_vocab_size_multiple",
        "tie_embeddings",
    ):
        assert key in d
    assert d["ssm_cfg"]["d_state"] == 4 and d["ssm_cfg"]["dt_rank"] == 5 and d["ssm_cfg"]["bias"] is True
    assert MambaConfig.from_state_spaces_dict(d) == c
    # the official defaults write no mambakit-only keys
    plain = MambaConfig(d_model=16, n_layer=2, vocab_size=50).to_state_spaces_dict()
    assert "norm_epsilon" not in plain and "mixer" not in plain


def test_state_spaces_official_130m_style_config():
    # The shape of the config.json published with the official checkpoints (empty ssm_cfg = defaults).
    official = {
        "d_model": 768,
        "n_layer": 24,
        "vocab_size": 50277,
        "ssm_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
    }
    c = MambaConfig.from_state_spaces_dict(official)
    assert (c.d_model, c.n_layer, c.vocab_size, c.vocab_size_padded, c.d_state) == (768, 24, 50277, 50280, 16)


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda d: d.update(d_modle=3), "d_modle"),
        (lambda d: d["ssm_cfg"].update(d_sate=3), "d_sate"),
        (lambda d: d.pop("vocab_size"), "vocab_size"),
        (lambda d: d.update(d_intermediate=128), "d_intermediate"),
        (lambda d: d.update(attn_layer_idx=[1]), "attn_layer_idx"),
        (lambda d: d["ssm_cfg"].update(layer="Mamba2"), "layer"),
        (lambda d: d["ssm_cfg"].update(d_state=0), "d_state"),
    ],
)
def test_state_spaces_bad_keys(mutate, key):
    d = MambaConfig(d_model=16, n_layer=2, vocab_size=50).to_state_spaces_dict()
    mutate(d)
    with pytest.raises(ConfigError, match=key):
        MambaConfig.from_state_spaces_dict(d)


def test_hf_round_trip_and_transformers_accepts_it():
    c = _nondefault()
    d = json.loads(json.dumps(c.to_hf_dict()))
    assert MambaConfig.from_hf_dict(d) == c
    hf = transformers.MambaConfig(**{k: v for k, v in d.items() if k != "architectures"})
    assert (hf.hidden_size, hf.state_size, hf.num_hidden_layers, hf.conv_kernel) == (24, 4, 3, 2)
    assert hf.time_step_rank == 5 and hf.intermediate_size == 72 and hf.vocab_size == 77
    assert hf.layer_norm_epsilon == 1e-6 and hf.residual_in_fp32 is False and hf.use_bias is True
    assert hf.tie_word_embeddings is False and hf.use_conv_bias is False
    # auto dt_rank survives too, and transformers resolves it the same way
    auto = MambaConfig(d_model=40, n_layer=1, vocab_size=9)
    assert MambaConfig.from_hf_dict(auto.to_hf_dict()) == auto
    assert transformers.MambaConfig(**auto.to_hf_dict()).time_step_rank == auto.dt_rank_value


def test_hf_config_written_by_transformers_is_read():
    hf = transformers.MambaConfig(
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
    c = MambaConfig.from_hf_dict(json.loads(hf.to_json_string()))
    assert (c.d_model, c.d_state, c.n_layer, c.d_conv, c.dt_rank, c.vocab_size) == (32, 8, 2, 3, 4, 99)
    assert c.conv_bias is False and c.norm_epsilon == 1e-6 and c.residual_in_fp32 is False


def test_hf_config_with_state_spaces_leftovers():
    # converted checkpoints carry both names; a config with only the state-spaces names is read by them
    d = {"model_type": "mamba", "d_model": 48, "n_layer": 3, "vocab_size": 64, "hidden_size": 48}
    c = MambaConfig.from_hf_dict(d)
    assert (c.d_model, c.n_layer) == (48, 3)
    with pytest.raises(ConfigError, match="d_model.*hidden_size=48"):
        MambaConfig.from_hf_dict({**d, "d_model": 32})


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
    d = MambaConfig(d_model=16, n_layer=2, vocab_size=50).to_hf_dict()
    mutate(d)
    with pytest.raises(ConfigError, match=key):
        MambaConfig.from_hf_dict(d)


def test_hf_cannot_hold_layernorm_or_other_mixers():
    with pytest.raises(ConfigError, match="rms_norm"):
        MambaConfig(d_model=16, n_layer=2, vocab_size=50, rms_norm=False).to_hf_dict()
    with pytest.raises(ConfigError, match="mixer"):
        MambaConfig(d_model=16, n_layer=2, vocab_size=50, mixer="s4d").to_hf_dict()
