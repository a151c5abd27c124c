"""Mamba-3 in the language model: MambaConfig(mixer="mamba3") with the official option names, its checks,
the state-spaces checkpoint layout (a hand-written tiny directory shaped like state-spaces/mamba3-mimo-1.5b)
both ways, and generation with the recurrent cache."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import CheckpointError, ConfigError
from mambakit.layers.mamba3 import Mamba3Block
from mambakit.models.formats import state_spaces
from mambakit.models.mamba3_options import MAMBA3_DEFAULTS


def m3_config(**mixer_cfg) -> MambaConfig:
    opts = {"headdim": 8, "chunk_size": 4, **mixer_cfg}
    return MambaConfig(d_model=16, n_layer=2, vocab_size=37, d_state=8, mixer="mamba3", mixer_cfg=opts)


def perturbed(config: MambaConfig, seed: int = 0) -> MambaLMHeadModel:
    torch.manual_seed(seed)
    model = MambaLMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def test_config_defaults_and_checks():
    c = MambaConfig(d_model=64, n_layer=1, vocab_size=10, mixer="mamba3")
    assert c.d_state == 128 and c.mixer_cfg == MAMBA3_DEFAULTS
    assert MambaConfig.from_dict(c.to_dict()) == c
    block = MambaLMHeadModel(m3_config(is_mimo=True, mimo_rank=2)).backbone.layers[1].mixer
    assert isinstance(block, Mamba3Block) and block.is_mimo and block.mimo_rank == 2 and block.layer_idx == 1
    bad_options = (({"rope": 1}, "rope"), ({"d_state": 4}, "d_state"),
                   ({"rope_fraction": 0.3}, "rope_fraction"), ({"headdim": 5}, "headdim"),
                   ({"is_mimo": 1}, "is_mimo"), ({"A_floor": -1.0}, "A_floor"))
    for bad, key in bad_options:
        with pytest.raises(ConfigError, match=key):
            m3_config(**bad)
    with pytest.raises(ConfigError, match="bias"):
        MambaConfig(d_model=16, n_layer=1, vocab_size=10, mixer="mamba3", bias=True)


def _official_layout_dir(tmp_path, model_cfg: dict, tensors: dict) -> str:
    path = tmp_path / "mamba3-mimo-tiny"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(model_cfg))
    save_file(tensors, str(path / "model.safetensors"))
    return str(path)


def test_state_spaces_mimo_checkpoint_loads_and_saves(tmp_path):
    # The layout of state-spaces/mamba3-mimo-1.5b's config.json (24 layers, d_model 2048, d_state 128,
    # headdim 64, MIMO rank 4, chunk 16, tied embeddings), at a tiny size.
    official = {
        "d_model": 32, "d_intermediate": 0, "n_layer": 2, "vocab_size": 50,
        "ssm_cfg": {"layer": "Mamba3", "d_state": 16, "headdim": 16, "is_mimo": True, "mimo_rank": 4,
                    "chunk_size": 16, "is_outproj_norm": False, "rope_fraction": 0.5, "ngroups": 1},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
        "fused_add_norm": True, "pad_vocab_size_multiple": 16, "tie_embeddings": True,
    }
    config = state_spaces.config_from_state_spaces(official)
    assert config.mixer == "mamba3" and config.mixer_cfg["mimo_rank"] == 4 and config.d_state == 16
    source = perturbed(config, seed=3)
    tensors = {k: v.clone() for k, v in source.state_dict().items()}
    names = {k.split("mixer.")[-1] for k in tensors if ".mixer." in k}
    assert names == {"in_proj.weight", "dt_bias", "B_bias", "C_bias", "B_norm.weight", "C_norm.weight",
                     "mimo_x", "mimo_z", "mimo_o", "D", "out_proj.weight"}
    path = _official_layout_dir(tmp_path, official, tensors)
    loaded = MambaLMHeadModel.from_pretrained(path).eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), source(ids))
    out = tmp_path / "saved"
    loaded.save_pretrained(out)
    written = json.loads((out / "config.json").read_text())
    assert written["ssm_cfg"]["layer"] == "Mamba3" and written["ssm_cfg"]["mimo_rank"] == 4
    assert "mixer" not in written and "mixer_cfg" not in written
    again = MambaLMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids), source(ids))
    # a Mamba-2 config over these weights is refused, naming what the weights are
    wrong = dict(official, ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16})
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "config.json").write_text(json.dumps(wrong))
    save_file(tensors, str(tmp_path / "wrong" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="Mamba-3"):
        MambaLMHeadModel.from_pretrained(tmp_path / "wrong")


def test_state_spaces_config_errors():
    base = {"d_model": 16, "n_layer": 1, "vocab_size": 10, "ssm_cfg": {"layer": "Mamba3", "d_conv": 4}}
    with pytest.raises(ConfigError, match="d_conv"):
        state_spaces.config_from_state_spaces(base)
    with pytest.raises(ConfigError, match="mixer"):
        state_spaces.config_from_state_spaces(dict(base, ssm_cfg={"layer": "Mamba3"}, mixer="mamba2"))


@pytest.mark.parametrize("mixer_cfg", [{}, {"is_mimo": True, "mimo_rank": 2, "is_outproj_norm": True}])
def test_step_logits_equal_full_sequence_and_generation(mixer_cfg):
    model = perturbed(m3_config(**mixer_cfg))
    ids = torch.randint(0, 37, (2, 9))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_inference_cache(2)
        logits = [model(ids[:, :3], state=cache)]
        logits += [model.step(ids[:, t], cache)[:, None] for t in range(3, 9)]
    stepped = torch.cat(logits, 1)
    assert ((stepped - full).abs().max() / full.abs().max()).item() < 1e-4
    out = model.generate(ids[:, :4], 6, temperature=0)
    seq = ids[:, :4]
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq)[:, -1, :37].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)
