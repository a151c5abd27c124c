"""The language model with each registered mixer: forward, prefill + steps, checkpoints, config errors."""

import pytest
import torch

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import ConfigError
from mambakit.models.mixers import available_mixers

SSM_MIXERS = ["s4d", "s4", "lru"]


def _model(mixer: str, dtype=torch.float64, **cfg) -> MambaLMHeadModel:
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=37, d_state=8, mixer=mixer, mixer_cfg=cfg)
    return MambaLMHeadModel(config, dtype=dtype, generator=torch.Generator().manual_seed(0)).eval()


def test_registered_mixers():
    assert {"mamba", "mamba2", "attention", *SSM_MIXERS} <= set(available_mixers())


@pytest.mark.parametrize("mixer", SSM_MIXERS)
def test_prefill_then_steps_equals_forward(mixer):
    model = _model(mixer)
    ids = torch.randint(0, 37, (2, 12))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_inference_cache(2, dtype=torch.float64)
        prefix = model(ids[:, :5], state=cache)
        steps = [model.step(ids[:, t], cache) for t in range(5, 12)]
    torch.testing.assert_close(prefix, full[:, :5], rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 5:], rtol=0, atol=1e-10)


@pytest.mark.parametrize("mixer", SSM_MIXERS)
def test_checkpoint_round_trip(mixer, tmp_path):
    model = _model(mixer, dtype=torch.float32)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = MambaLMHeadModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    ids = torch.randint(0, 37, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_mixer_cfg_reaches_the_layer():
    lin = _model("s4d", init="lin").backbone.layers[0].mixer
    inv = _model("s4d", init="inv").backbone.layers[0].mixer
    assert lin.init == "lin" and inv.init == "inv"


def test_mixer_cfg_errors():
    with pytest.raises(ConfigError, match="mixer_cfg"):
        MambaConfig(d_model=16, n_layer=1, vocab_size=8, mixer_cfg={"init": "inv"})  # mamba takes fields
    with pytest.raises(ConfigError, match="mixer_cfg"):
        MambaConfig(d_model=16, n_layer=1, vocab_size=8, mixer="s4d", mixer_cfg=["init"])
    with pytest.raises(ConfigError, match="mixer.*'nope'"):
        MambaLMHeadModel(MambaConfig(d_model=16, n_layer=1, vocab_size=8, mixer="nope"))
    with pytest.raises(TypeError, match="bogus"):
        _model("lru", bogus=1)
