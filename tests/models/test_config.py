"""MambaConfig: defaults and derived sizes, validation naming the field (Mamba-1 and Mamba-2), the flat
dict form."""

import json
import math

import pytest
from model_helpers import nondefault_config

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import ConfigError
from mambakit.layers.mamba2 import Mamba2Block
from mambakit.models.config import MAMBA2_DEFAULTS


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


def test_flat_dict_round_trip():
    c = nondefault_config()
    assert MambaConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ConfigError, match="unknown key.*'d_modle'"):
        MambaConfig.from_dict({**c.to_dict(), "d_modle": 3})
    d = c.to_dict()
    del d["n_layer"]
    with pytest.raises(ConfigError, match="n_layer"):
        MambaConfig.from_dict(d)


def test_defaults_are_the_official_mamba2_ones():
    c = MambaConfig(d_model=64, n_layer=2, vocab_size=50, mixer="mamba2")
    assert c.d_state == 128 and c.mixer_cfg == MAMBA2_DEFAULTS  # filled in
    assert (c.mixer_cfg["headdim"], c.mixer_cfg["ngroups"], c.mixer_cfg["chunk_size"]) == (64, 1, 256)
    assert c.mixer_cfg["dt_limit"] == (0.0, math.inf) and c.mixer_cfg["A_init_range"] == (1.0, 16.0)
    assert MambaConfig(d_model=64, n_layer=2, vocab_size=50).d_state == 16  # Mamba-1 keeps its default
    assert MambaConfig(d_model=64, n_layer=2, vocab_size=50, mixer="s4d").d_state == 16
    block = MambaLMHeadModel(c).backbone.layers[0].mixer
    assert isinstance(block, Mamba2Block)
    assert (block.nheads, block.headdim, block.ngroups, block.d_state) == (2, 64, 1, 128)
    # a given option overrides its default; the others are still filled in
    c2 = MambaConfig(d_model=64, n_layer=2, vocab_size=50, mixer="mamba2", mixer_cfg={"headdim": 32})
    assert c2.mixer_cfg == {**MAMBA2_DEFAULTS, "headdim": 32}


@pytest.mark.parametrize(
    "options,key",
    [
        ({"headdim": 5}, "headdim"),  # does not divide d_ssm = 32
        ({"headdim": 4, "ngroups": 3}, "ngroups"),  # does not divide 8 heads
        ({"chunk_size": 0}, "chunk_size"),
        ({"headdim": 2.5}, "headdim"),
        ({"d_ssm": 48}, "d_ssm"),  # more than d_inner
        ({"d_ssm": 12, "headdim": 8}, "headdim"),
        ({"rmsnorm": 1}, "rmsnorm"),
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"A_init_range": (16.0, 1.0)}, "A_init_range"),
        ({"dt_limit": (0.1,)}, "dt_limit"),
        ({"dt_limit": (-1.0, 1.0)}, "dt_limit"),
        ({"head_dim": 4}, "unknown key.*head_dim"),
    ],
)
def test_bad_mamba2_options_name_the_field(options, key):
    with pytest.raises(ConfigError, match=rf"MambaConfig.mixer_cfg.*{key}") as err:
        MambaConfig(d_model=16, n_layer=1, vocab_size=10, mixer="mamba2", mixer_cfg=options)
    value = next(iter(options.values())) if len(options) == 1 else options[key]
    if not key.startswith("unknown"):
        assert repr(value) in str(err.value)


def test_dt_rank_is_not_a_mamba2_option():
    with pytest.raises(ConfigError, match="MambaConfig.dt_rank.*mamba2"):
        MambaConfig(d_model=16, n_layer=1, vocab_size=10, mixer="mamba2", dt_rank=4)
