"""Atomic checkpoints: a failure while writing leaves the previous checkpoint as the latest."""

import pytest
import torch

from mambakit.errors import CheckpointError
from mambakit.training import checkpointing as ckpt


def _writer(value):
    def write(directory):
        (directory / "payload.txt").write_text(str(value))
        ckpt.save_trainer_state(directory, {"step": value})
    return write


def test_latest_switches_only_after_a_complete_write_and_old_ones_are_pruned(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, _writer(step), keep=2)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step-00000003" and (latest / "payload.txt").read_text() == "3"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]

    def broken(directory):
        (directory / "payload.txt").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 4, broken)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000003"
    assert not list((tmp_path / "checkpoints").glob(".*"))  # the temporary directory is gone
    assert ckpt.load_trainer_state(ckpt.latest_checkpoint(tmp_path))["step"] == 3


def test_truncated_and_foreign_trainer_states_are_rejected(tmp_path):
    ckpt.save_trainer_state(tmp_path, {"step": 5, "optimizer": {"x": torch.ones(100)}})
    path = tmp_path / ckpt.TRAINER_STATE
    assert ckpt.load_trainer_state(tmp_path)["step"] == 5
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        ckpt.load_trainer_state(tmp_path)
    torch.save({"step": 5}, path)
    with pytest.raises(CheckpointError, match="foreign"):
        ckpt.load_trainer_state(tmp_path)
    (tmp_path / ckpt.LATEST).write_text("checkpoints/step-00000009\n")
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ckpt.latest_checkpoint(tmp_path)
