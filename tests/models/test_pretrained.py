"""Models from checkpoint directories and back: round trips in both formats (Mamba-1 and Mamba-2), saved
precision, and every way the weights or config can disagree with the model, named."""

import json
import os

import pytest
import torch
from model_helpers import IDS, VOCAB, ids_, m2_config, m2_model, perturbed_model, same_logits, tiny_config
from safetensors.torch import load_file, save_file

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import CheckpointError, ConfigError
from mambakit.models.formats import hf, state_spaces


@pytest.fixture
def model() -> MambaLMHeadModel:
    return perturbed_model()


@pytest.mark.parametrize("untied", [False, True])
def test_mambakit_format_round_trip(tmp_path, untied):
    m = MambaLMHeadModel(tiny_config(tie_embeddings=not untied, bias=untied))
    m.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert "ssm_cfg" in config and "model_type" not in config
    stored = load_file(tmp_path / "model.safetensors")
    assert stored["backbone.embedding.weight"].shape == (48, 16)  # padded, as officially
    assert torch.equal(stored["lm_head.weight"], m.lm_head.weight)  # stored too, as officially
    back = MambaLMHeadModel.from_pretrained(tmp_path)
    assert back.config == m.config and same_logits(m, back)
    assert (back.lm_head.weight is back.backbone.embedding.weight) == (not untied)


def test_hf_format_files(tmp_path, model):
    model.save_pretrained(tmp_path, format="hf")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "mamba" and config["vocab_size"] == 45
    stored = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in stored and stored["backbone.embeddings.weight"].shape == (45, 16)
    back = MambaLMHeadModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(back(IDS)[..., :45], model(IDS)[..., :45])
        assert torch.all(back(IDS)[..., 45:] == 0)  # padding rows of a HF import are zero


def test_hf_format_untied_head(tmp_path):
    m = MambaLMHeadModel(tiny_config(tie_embeddings=False))
    m.save_pretrained(tmp_path, format="hf")
    stored = load_file(tmp_path / "model.safetensors")
    assert stored["lm_head.weight"].shape == (45, 16)  # unpadded, like the embedding
    back = MambaLMHeadModel.from_pretrained(tmp_path)
    assert back.lm_head.weight.shape == (48, 16) and back.lm_head.weight is not back.backbone.embedding.weight
    with torch.no_grad():
        assert torch.equal(back(IDS)[..., :45], m(IDS)[..., :45])


def test_dtype_and_saved_precision(tmp_path, model):
    model.to(torch.bfloat16).save_pretrained(tmp_path, format="hf")
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_file(tmp_path / "model.safetensors")["backbone.norm_f.weight"].dtype == torch.bfloat16
    assert MambaLMHeadModel.from_pretrained(tmp_path).lm_head.weight.dtype == torch.float32
    assert (
        MambaLMHeadModel.from_pretrained(tmp_path, dtype=torch.float64).lm_head.weight.dtype == torch.float64
    )


def _rewrite_weights(tmp_path, edit) -> None:
    tensors = load_file(tmp_path / "model.safetensors")
    edit(tensors)
    save_file(tensors, tmp_path / "model.safetensors")


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda t: t.pop("backbone.layers.1.mixer.A_log"), r"missing weight.*backbone.layers.1.mixer.A_log"),
        (
            lambda t: t.update({"backbone.layers.2.mixer.D": torch.ones(32)}),
            r"unexpected weight.*layers.2.mixer.D",
        ),
        (
            lambda t: t.update({"backbone.layers.0.mixer.D": torch.ones(31)}),
            r"'backbone.layers.0.mixer.D'.*expected shape \(32,\), got \(31,\)",
        ),
        (
            lambda t: t.update({"backbone.embedding.weight": torch.ones(50, 16)}),
            r"'backbone.embedding.weight'.*expected shape \(48, 16\).*got \(50, 16\)",
        ),
        (
            lambda t: t.update({"backbone.layers.0.mixer.D": torch.ones(32, dtype=torch.int32)}),
            "floating-point",
        ),
        (lambda t: t.update({"backbone.embeddings.weight": t["backbone.embedding.weight"].clone()}), "both"),
    ],
)
def test_bad_weights(tmp_path, model, edit, message):
    model.save_pretrained(tmp_path)
    _rewrite_weights(tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        MambaLMHeadModel.from_pretrained(tmp_path)


def test_untied_checkpoint_needs_its_head(tmp_path):
    MambaLMHeadModel(tiny_config(tie_embeddings=False)).save_pretrained(tmp_path)
    _rewrite_weights(tmp_path, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match="missing weight.*lm_head.weight"):
        MambaLMHeadModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "layout,edit,message",
    [
        ("mambakit", lambda c: c.update(d_modle=16), "unknown key.*d_modle"),
        ("mambakit", lambda c: c.pop("n_layer"), "missing required key.*n_layer"),
        (
            "mambakit",
            lambda c: c["ssm_cfg"].update(d_state=5),
            r"mixer\..*expected shape",
        ),  # config and weights disagree
        ("mambakit", lambda c: c.update(n_layer=1), "unexpected weight.*layers.1"),
        ("hf", lambda c: c.update(model_type="llama"), "model_type.*'llama'"),
        ("hf", lambda c: c.update(model_type="mamba2"), "model_type.*'mamba2'"),
        ("hf", lambda c: c.update(num_hidden_layerz=2), "unknown key.*num_hidden_layerz"),
        ("hf", lambda c: c.update(hidden_size=0), "d_model"),
        ("hf", lambda c: c.clear() or c.update(architectures=["GPT2LMHeadModel"]), "state-spaces config.*or"),
    ],
)
def test_bad_config(tmp_path, model, layout, edit, message):
    model.save_pretrained(tmp_path, format=layout)
    config = json.loads((tmp_path / "config.json").read_text())
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        MambaLMHeadModel.from_pretrained(tmp_path)


def test_bad_save_arguments(tmp_path, model):
    with pytest.raises(ConfigError, match="format.*'safetensors'"):
        model.save_pretrained(tmp_path, format="safetensors")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="path"):
        model.save_pretrained(tmp_path / "file")
    with pytest.raises(ConfigError, match="rms_norm"):
        MambaLMHeadModel(tiny_config(rms_norm=False)).save_pretrained(tmp_path / "ln", format="hf")
    layer_norm = MambaLMHeadModel(tiny_config(rms_norm=False))
    layer_norm.save_pretrained(tmp_path / "ln")  # the state-spaces layout holds LayerNorm models
    assert same_logits(layer_norm, MambaLMHeadModel.from_pretrained(tmp_path / "ln"))


@pytest.mark.parametrize("format", ["mambakit", "hf"])
def test_mamba2_checkpoint_round_trip(tmp_path, format):
    model = m2_model(tie_embeddings=False)
    model.save_pretrained(tmp_path, format=format)
    stored = load_file(tmp_path / "model.safetensors")
    for name, shape in (("dt_bias", (8,)), ("A_log", (8,)), ("D", (8,)), ("norm.weight", (32,))):
        assert stored[f"backbone.layers.1.mixer.{name}"].shape == shape
    config = json.loads((tmp_path / "config.json").read_text())
    if format == "hf":
        assert config["model_type"] == "mamba2" and stored["backbone.embeddings.weight"].shape == (VOCAB, 16)
    else:
        assert config["ssm_cfg"]["layer"] == "Mamba2"
        assert stored["backbone.embedding.weight"].shape == (40, 16)
    back = MambaLMHeadModel.from_pretrained(tmp_path)
    assert back.config == model.config
    with torch.no_grad():
        assert torch.equal(back(ids_(1, 9))[..., :VOCAB], model(ids_(1, 9))[..., :VOCAB])


def test_gated_mlp_variant_round_trips_in_the_state_spaces_layout(tmp_path):
    model = m2_model(mixer_cfg={"d_ssm": 24, "headdim": 6, "ngroups": 2, "norm_before_gate": True,
                                "D_has_hdim": True, "norm_eps": 1e-6})
    model.save_pretrained(tmp_path)
    back = MambaLMHeadModel.from_pretrained(tmp_path)
    assert back.config == model.config and back.backbone.layers[0].mixer.d_mlp == 8
    with torch.no_grad():
        assert torch.equal(back(ids_(1, 9)), model(ids_(1, 9)))
    with pytest.raises(ConfigError, match="d_ssm"):
        model.save_pretrained(tmp_path / "hf", format="hf")


def _mamba1_twin() -> MambaLMHeadModel:
    return MambaLMHeadModel(MambaConfig(d_model=16, n_layer=2, vocab_size=VOCAB, d_state=8))


@pytest.mark.parametrize("format,field", [("mambakit", "config.ssm_cfg.layer"), ("hf", "config.model_type")])
def test_mamba2_checkpoint_loaded_as_mamba1_names_the_field(tmp_path, format, field):
    m2_model().save_pretrained(tmp_path, format=format)
    twin = _mamba1_twin().config
    mamba1_config = hf.config_to_hf(twin) if format == "hf" else state_spaces.config_to_state_spaces(twin)
    (tmp_path / "config.json").write_text(json.dumps(mamba1_config))  # Mamba-1 config, Mamba-2 weights
    with pytest.raises(CheckpointError, match=rf"{field} makes this a Mamba-1 model.*Mamba-2 checkpoint"):
        MambaLMHeadModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("format,field", [("mambakit", "config.ssm_cfg.layer"), ("hf", "config.model_type")])
def test_mamba1_checkpoint_loaded_as_mamba2_names_the_field(tmp_path, format, field):
    _mamba1_twin().save_pretrained(tmp_path, format=format)
    cfg = m2_config()
    (tmp_path / "config.json").write_text(
        json.dumps(hf.config_to_hf(cfg) if format == "hf" else state_spaces.config_to_state_spaces(cfg))
    )
    with pytest.raises(CheckpointError, match=rf"{field} makes this a Mamba-2 model.*Mamba-1 checkpoint"):
        MambaLMHeadModel.from_pretrained(tmp_path)


def test_relabelled_configs_are_refused_with_the_field(tmp_path):
    m2_model().save_pretrained(tmp_path / "m2", format="hf")
    path = tmp_path / "m2" / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "model_type": "mamba"}))
    with pytest.raises(CheckpointError, match="model_type 'mamba'.*keys of model_type 'mamba2'"):
        MambaLMHeadModel.from_pretrained(tmp_path / "m2")
    m2_model().save_pretrained(tmp_path / "ss")
    path = tmp_path / "ss" / "config.json"
    config = json.loads(path.read_text())
    del config["ssm_cfg"]["layer"]
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="Mamba-2 options.*ssm_cfg.layer 'Mamba1'"):
        MambaLMHeadModel.from_pretrained(tmp_path / "ss")


def test_mismatched_mamba2_weights(tmp_path):
    m2_model().save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["backbone.layers.0.mixer.dt_bias"] = torch.zeros(4)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'backbone.layers.0.mixer.dt_bias'.*expected shape \(8,\)"):
        MambaLMHeadModel.from_pretrained(tmp_path)
