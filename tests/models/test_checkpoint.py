"""Checkpoint files: pytorch_model.bin, safetensors first, sharded files, pickled code refused, atomic
writes, and missing, unparsable or truncated files."""

import json
import os
import pickle

import pytest
import torch
from model_helpers import perturbed_model, same_logits, tiny_config
from safetensors.torch import load_file, save_file

from mambakit import MambaLMHeadModel
from mambakit.errors import CheckpointError
from mambakit.models import checkpoint


@pytest.fixture
def model() -> MambaLMHeadModel:
    return perturbed_model()


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


def test_writes_are_atomic(tmp_path, model, monkeypatch):
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    other = MambaLMHeadModel(tiny_config())
    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "model.safetensors").read_bytes() == before  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # no temporary left over
    assert same_logits(model, MambaLMHeadModel.from_pretrained(tmp_path))


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


def test_files_round_trip_without_a_model(tmp_path):
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    checkpoint.write_checkpoint(tmp_path / "new", {"any": ["json", 1]}, tensors)
    assert sorted(os.listdir(tmp_path / "new")) == ["config.json", "model.safetensors"]
    raw, path = checkpoint.read_config_json(tmp_path / "new")
    assert raw == {"any": ["json", 1]} and path == tmp_path / "new" / "config.json"
    back, name = checkpoint.read_weights(tmp_path / "new")
    assert name == "model.safetensors" and back.keys() == tensors.keys()
    assert all(torch.equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype for k in tensors)
    (tmp_path / "new" / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object, got list"):
        checkpoint.read_config_json(tmp_path / "new")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="path: expected a directory"):
        checkpoint.write_checkpoint(tmp_path / "file", {}, tensors)
