"""Run directories and training checkpoints that survive a kill at any moment.

Layout of a run directory::

    RUN_DIR/
      run.json                      model config, training config, data and tokenizer of the run
      metrics.jsonl                 one JSON record per step (train) or evaluation (val)
      loss_curve.png
      latest                        text file: the name of the newest complete checkpoint
      checkpoints/step-00000120/    a complete checkpoint (MambaLMHeadModel.from_pretrained loads it):
        config.json  model.safetensors  tokenizer files  run.json  trainer_state.pt

A checkpoint is written into a temporary directory (every file fsynced), renamed to its final name, and
only then does ``latest`` switch to it (temporary file, fsync, ``os.replace``). A run killed at any point
leaves ``latest`` naming a complete checkpoint; older checkpoints are pruned only after the switch.

``trainer_state.pt`` holds plain tensors, numbers and strings (optimiser state, step, RNG states, data
position) and is read with ``torch.load(weights_only=True)``: no arbitrary unpickling.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..atomic import fsync_directory, write_text_atomic
from ..errors import CheckpointError

RUN_JSON = "run.json"
METRICS_JSONL = "metrics.jsonl"
LOSS_CURVE_PNG = "loss_curve.png"
LATEST = "latest"
CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
STATE_FORMAT = "mambakit-trainer-state"
STATE_VERSION = 1


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint directory ``latest`` names, or ``None`` when the run has none yet."""
    pointer = Path(run_dir) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    path = Path(run_dir) / name
    if not name or not (path / TRAINER_STATE).is_file():
        raise CheckpointError(f"checkpoint: {str(pointer)!r} names {name!r}, "
                              "which is not a complete checkpoint")
    return path


def read_run_json(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``run.json`` (raises :class:`CheckpointError` when missing or not a run)."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise CheckpointError(f"resume: expected a run directory with {RUN_JSON}, got {str(run_dir)!r} "
                              f"({RUN_JSON} not found)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"resume: expected JSON in {str(path)!r}, got an unreadable file ({exc})") \
            from None
    if not isinstance(data, dict) or not {"model", "train"} <= set(data):
        raise CheckpointError("resume: expected a mambakit run.json with 'model' and 'train', "
                              f"got {str(path)!r}")
    return data


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        fsync_directory(path if path.is_dir() else path.parent)
    fsync_directory(root)


def save_checkpoint(run_dir: str | os.PathLike, step: int, write_files, keep: int = 2,
                    before_publish=None) -> Path:
    """Write checkpoint ``step`` atomically and make it the latest.

    ``write_files(directory)`` writes the checkpoint's files into a fresh temporary directory.
    ``before_publish`` (tests only) runs after the files are written and before anything is renamed.
    Returns the final checkpoint directory.
    """
    run_dir = Path(run_dir)
    parent = run_dir / CHECKPOINTS
    parent.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".tmp"))
    try:
        write_files(tmp)
        _fsync_tree(tmp)
        if before_publish is not None:
            before_publish()
        final = parent / name
        if final.exists():  # a checkpoint of this step from before a resume: same step, replaced whole
            stale = parent / f".{name}.stale"
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
            os.replace(tmp, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_directory(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(run_dir / LATEST, f"{CHECKPOINTS}/{name}\n")
    _prune(parent, keep=max(keep, 1), current=name)
    return final


def _prune(parent: Path, keep: int, current: str) -> None:
    complete = sorted(p for p in parent.glob("step-*") if p.is_dir())
    for path in complete[:-keep]:
        if path.name != current:
            shutil.rmtree(path, ignore_errors=True)
    for path in parent.glob(".step-*.tmp"):  # left by a run killed mid-write
        shutil.rmtree(path, ignore_errors=True)


def remove_run_files(run_dir: str | os.PathLike) -> None:
    """Delete what a training run wrote into ``run_dir`` (``latest`` first, so no half-deleted run is left
    looking complete); other files there are left alone."""
    run_dir = Path(run_dir)
    (run_dir / LATEST).unlink(missing_ok=True)
    fsync_directory(run_dir)
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    for name in (METRICS_JSONL, LOSS_CURVE_PNG, RUN_JSON):
        (run_dir / name).unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """The torch RNG states (CPU and every CUDA device) as tensors."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_trainer_state(directory: Path, state: dict[str, Any]) -> None:
    torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, **state}, directory / TRAINER_STATE)


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """Read ``trainer_state.pt`` safely; a truncated or foreign file raises :class:`CheckpointError`."""
    path = checkpoint / TRAINER_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint: expected {TRAINER_STATE} in {str(checkpoint)!r}, found none") \
            from None
    except Exception as exc:  # torch raises several types for truncated or foreign pickles
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"checkpoint: expected a mambakit trainer state in {str(path)!r}, got an "
                              f"unreadable file ({first})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"checkpoint: expected a mambakit trainer state in {str(path)!r}, "
                              "got a foreign file")
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"checkpoint: expected trainer state version {STATE_VERSION} in {str(path)!r}, "
                              f"got {state.get('version')!r}")
    return state
