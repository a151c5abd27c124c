"""Checkpoint files: find and read a directory's ``config.json`` and weights, and write them atomically.

This module knows files, not formats: what the config keys and weight names mean is the business of
:mod:`mambakit.models.formats`, and building a model from them that of :mod:`mambakit.models.pretrained`.

Weights are read from ``model.safetensors`` (or a sharded ``model.safetensors.index.json``) first, and
otherwise from ``pytorch_model.bin`` (or its index) with ``torch.load(weights_only=True)``, which refuses
arbitrary pickled objects. Writes are atomic: a temporary file in the same directory, fsync, then
``os.replace``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from ..atomic import write_bytes_atomic, write_json_atomic
from ..errors import CheckpointError

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"
PYTORCH_INDEX_NAME = "pytorch_model.bin.index.json"


def checkpoint_directory(path: str | os.PathLike) -> Path:
    """``path`` as a directory, or :class:`CheckpointError` if it is not one."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(
            f"path: expected a checkpoint directory with config.json and weights, got {path!r}"
        )
    return directory


def read_config_json(directory: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """The JSON object in ``directory/config.json`` and the file's path."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: expected a config.json in the checkpoint directory, found none")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: expected a JSON object, could not parse it ({e})") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw, path


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors_load(path.read_bytes())
    except Exception as e:  # safetensors raises its own error type for truncated or corrupt files
        size = path.stat().st_size if path.exists() else 0
        raise CheckpointError(
            f"{path}: expected a complete safetensors file, could not read it "
            f"({size} bytes; truncated or corrupt?): {e}"
        ) from e


def _read_pytorch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: expected a PyTorch state dict loadable with weights_only=True "
            f"(tensors only, no arbitrary pickled objects), could not load it: {e}"
        ) from e
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensor names to tensors, got {type(obj).__name__}")
    return obj


def _read_index(
    directory: Path, index_name: str, reader: Callable[[Path], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    index_path = directory / index_name
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{index_path}: expected a JSON object with a 'weight_map', could not read it ({e})"
        ) from e
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        shard = directory / name
        if Path(name).name != name or not shard.is_file():
            raise CheckpointError(f"{index_path}: shard {name!r} is missing from {directory}")
        tensors.update(reader(shard))
    return tensors


def read_weights(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of the checkpoint in ``directory`` and the file they came from (safetensors first)."""
    directory = Path(directory)
    if (directory / SAFETENSORS_NAME).is_file():
        return _read_safetensors(directory / SAFETENSORS_NAME), SAFETENSORS_NAME
    if (directory / SAFETENSORS_INDEX_NAME).is_file():
        return _read_index(directory, SAFETENSORS_INDEX_NAME, _read_safetensors), SAFETENSORS_INDEX_NAME
    if (directory / PYTORCH_NAME).is_file():
        return _read_pytorch(directory / PYTORCH_NAME), PYTORCH_NAME
    if (directory / PYTORCH_INDEX_NAME).is_file():
        return _read_index(directory, PYTORCH_INDEX_NAME, _read_pytorch), PYTORCH_INDEX_NAME
    raise CheckpointError(
        f"{directory}: expected {SAFETENSORS_NAME} or {PYTORCH_NAME} (or a sharded index), found none"
    )


def write_checkpoint(
    path: str | os.PathLike, config_dict: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Write ``config.json`` and ``model.safetensors`` (CPU tensors, no shared storage) under ``path``,
    created if needed; each file is replaced atomically."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"path: expected a directory to write the checkpoint into, got a file {path!r}")
    directory.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(directory / SAFETENSORS_NAME, safetensors_save(tensors, metadata={"format": "pt"}))
    write_json_atomic(directory / CONFIG_NAME, config_dict)
