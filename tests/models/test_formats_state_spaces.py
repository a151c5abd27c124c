"""The state-spaces format: config.json both ways (Mamba-1 and Mamba-2, the official keys, bad keys named)
and its weight names."""

import json

import pytest
import torch
from model_helpers import m2_config, nondefault_config, nondefault_mamba2_config

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import ConfigError
from mambakit.models.config import MAMBA2_DEFAULTS
from mambakit.models.formats import state_spaces


def test_state_spaces_round_trip_and_official_keys():
    c = nondefault_config()
    d = json.loads(json.dumps(state_spaces.config_to_state_spaces(c)))
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
    assert state_spaces.config_from_state_spaces(d) == c
    # the official defaults write no mambakit-only keys
    plain = state_spaces.config_to_state_spaces(MambaConfig(d_model=16, n_layer=2, vocab_size=50))
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
    c = state_spaces.config_from_state_spaces(official)
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
    d = state_spaces.config_to_state_spaces(MambaConfig(d_model=16, n_layer=2, vocab_size=50))
    mutate(d)
    with pytest.raises(ConfigError, match=key):
        state_spaces.config_from_state_spaces(d)


def test_official_mamba2_130m_style_config():
    # the shape of state-spaces/mamba2-130m's config.json: ssm_cfg names only the layer
    official = {
        "d_model": 768,
        "d_intermediate": 0,
        "n_layer": 24,
        "vocab_size": 50277,
        "ssm_cfg": {"layer": "Mamba2"},
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 16,
        "tie_embeddings": True,
    }
    c = state_spaces.config_from_state_spaces(official)
    assert c.mixer == "mamba2" and c.d_state == 128 and c.mixer_cfg == MAMBA2_DEFAULTS
    assert c.vocab_size_padded == 50288 and c.d_inner // c.mixer_cfg["headdim"] == 24


def test_mamba2_flat_and_state_spaces_round_trips():
    c = nondefault_mamba2_config()
    assert MambaConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c  # lists come back as tuples
    d = json.loads(json.dumps(state_spaces.config_to_state_spaces(c)))
    ssm = d["ssm_cfg"]
    assert ssm["layer"] == "Mamba2" and "dt_rank" not in ssm and "mixer" not in d
    assert (ssm["headdim"], ssm["ngroups"], ssm["chunk_size"], ssm["d_state"]) == (8, 3, 7, 6)
    assert d["mixer_cfg"] == {"norm_eps": 1e-6}  # mamba_ssm hard-codes 1e-5: ours is stored beside
    assert state_spaces.config_from_state_spaces(d) == c
    # the official defaults write no mambakit-only keys
    defaults = MambaConfig(d_model=32, n_layer=2, vocab_size=50, mixer="mamba2")
    plain = state_spaces.config_to_state_spaces(defaults)
    assert not {"mixer", "mixer_cfg", "norm_epsilon"} & set(plain)


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda d: d["ssm_cfg"].update(dt_rank=4), r"\['dt_rank'\] are Mamba-1 options.*layer 'Mamba2'"),
        (lambda d: d["ssm_cfg"].update(layer="Mamba3"), "ssm_cfg.layer.*'Mamba3'"),
        (lambda d: d["ssm_cfg"].pop("layer"), r"Mamba-2 options.*ssm_cfg.layer 'Mamba1'"),
        (lambda d: d["ssm_cfg"].update(conv_init=0.5), "conv_init"),
        (lambda d: d["ssm_cfg"].update(headdim=3), r"mixer_cfg\['headdim'\]"),
        (lambda d: d.update(mixer="s4d"), "config.mixer.*'s4d'"),
    ],
)
def test_state_spaces_bad_mamba2_keys(mutate, key):
    d = state_spaces.config_to_state_spaces(m2_config())
    mutate(d)
    with pytest.raises(ConfigError, match=key):
        state_spaces.config_from_state_spaces(d)


@pytest.mark.parametrize("tied", [True, False])
def test_weights_are_the_model_names_with_a_stored_head(tied):
    c = MambaConfig(d_model=16, n_layer=2, vocab_size=45, d_state=4, tie_embeddings=tied)
    state = MambaLMHeadModel(c).state_dict()
    stored = state_spaces.weights_to_state_spaces(state, c)
    assert set(stored) == set(state)
    assert stored["backbone.embedding.weight"].shape == (48, 16)  # padded, as officially
    assert torch.equal(stored["lm_head.weight"], state["lm_head.weight"])
    # a tied head is its own copy: safetensors stores no shared storage
    if tied:
        assert stored["lm_head.weight"].data_ptr() != stored["backbone.embedding.weight"].data_ptr()
