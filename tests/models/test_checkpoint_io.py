"""Checkpoints: round trips in both formats, pytorch_model.bin, sharded files, atomic writes, and every way a
checkpoint directory can be wrong."""

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import CheckpointError, ConfigError
from mambakit.models import checkpoint


def tiny(**kw) -> MambaConfig:
    base = dict(d_model=16, n_layer=2, vocab_size=45, d_state=4)
    base.update(kw)
    return MambaConfig(**base)


@pytest.fixture
def model() -> MambaLMHeadModel:
    m = MambaLMHeadModel(tiny())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


IDS = torch.tensor([[1, 5, 44, 0, 7, 7, 3]])


def same_logits(a: MambaLMHeadModel, b: MambaLMHeadModel) -> bool:
    with torch.no_grad():
        return torch.equal(a(IDS), b(IDS))


@pytest.mark.parametrize("untied", [False, True])
def test_mambakit_format_round_trip(tmp_path, untied):
    m = MambaLMHeadModel(tiny(tie_embeddings=not untied, bias=untied))
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
    m = MambaLMHeadModel(tiny(tie_embeddings=False))
    m.save_pretrained(tmp_path, format="hf")
    stored = load_file(tmp_path / "model.safetensors")
    assert stored["lm_head.weight"].shape == (45, 16)  # unpadded, like the embedding
    back = MambaLMHeadModel.from_pretrained(tmp_path)
    assert back.lm_head.weight.shape == (48, 16) and back.lm_head.weight is not back.backbone.embedding.weight
    with torch.no_grad():
        assert torch.equal(back(IDS)[..., :45], m(IDS)[..., :45])


def test_pytorch_bin_is_read_when_there_is_no_safetensors(tmp_path, model):
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    os.remove(tmp_path / "model.safetensors")
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    assert same_logits(model, MambaLMHeadModel.from_pretrained(tmp_path))


def test_safetensors_wins_over_bin(tmp_path, model):
    model.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    assert same_logits(model, MambaLMHeadModel.from_pretrained(tmp_path))


class Payload:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_bin_with_pickled_code_is_refused(tmp_path, model):
    model.save_pretrained(tmp_path)
    os.remove(tmp_path / "model.safetensors")
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weights": Payload()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        MambaLMHeadModel.from_pretrained(tmp_path)


def test_sharded_safetensors(tmp_path, model):
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    os.remove(tmp_path / "model.safetensors")
    names = sorted(tensors)
    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / shard)
    index = {"weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert same_logits(model, MambaLMHeadModel.from_pretrained(tmp_path))
    os.remove(tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match="b.safetensors"):
        MambaLMHeadModel.from_pretrained(tmp_path)


def test_dtype_and_saved_precision(tmp_path, model):
    model.to(torch.bfloat16).save_pretrained(tmp_path, format="hf")
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_file(tmp_path / "model.safetensors")["backbone.norm_f.weight"].dtype == torch.bfloat16
    assert MambaLMHeadModel.from_pretrained(tmp_path).lm_head.weight.dtype == torch.float32
    assert (
        MambaLMHeadModel.from_pretrained(tmp_path, dtype=torch.float64).lm_head.weight.dtype == torch.float64
    )


def test_writes_are_atomic(tmp_path, model, monkeypatch):
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    other = MambaLMHeadModel(tiny())
    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "model.safetensors").read_bytes() == before  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # no temporary left over
    assert same_logits(model, MambaLMHeadModel.from_pretrained(tmp_path))


# ----------------------------------------------------------------------------------------------- bad input
def test_missing_directory_config_or_weights(tmp_path, model):
    with pytest.raises(CheckpointError, match="path"):
        MambaLMHeadModel.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="config.json"):
        MambaLMHeadModel.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors or pytorch_model.bin"):
        MambaLMHeadModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        MambaLMHeadModel.from_pretrained(tmp_path)


def test_truncated_safetensors(tmp_path, model):
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    for cut in (len(data) - 100, 20, 4):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
            MambaLMHeadModel.from_pretrained(tmp_path)


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
    MambaLMHeadModel(tiny(tie_embeddings=False)).save_pretrained(tmp_path)
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
        MambaLMHeadModel(tiny(rms_norm=False)).save_pretrained(tmp_path / "ln", format="hf")
    layer_norm = MambaLMHeadModel(tiny(rms_norm=False))
    layer_norm.save_pretrained(tmp_path / "ln")  # the state-spaces layout holds LayerNorm models
    assert same_logits(layer_norm, MambaLMHeadModel.from_pretrained(tmp_path / "ln"))
