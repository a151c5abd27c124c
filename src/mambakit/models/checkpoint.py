"""Loading and saving Mamba language models in the layouts real checkpoints use.

Two layouts, detected from ``config.json``:

- state-spaces (official ``mamba_ssm``): config keys d_model, n_layer, vocab_size, ssm_cfg, ...; weights
  backbone.embedding.weight, backbone.layers.{i}.norm.weight, backbone.layers.{i}.mixer.*,
  backbone.norm_f.weight, lm_head.weight; embedding rows padded to pad_vocab_size_multiple. This is mambakit's
  own format too.
- Hugging Face ``MambaForCausalLM``: config has model_type "mamba"; weights are the same except
  backbone.embeddings.weight, no lm_head.weight when tied, and an unpadded vocabulary (see
  :mod:`mambakit.models.config` for how padding maps across).

Mamba-2 models use the same two layouts (state-spaces ``ssm_cfg: {"layer": "Mamba2", ...}``; Hugging Face
``Mamba2ForCausalLM``, model_type "mamba2"); the mixer's weight names (in_proj, conv1d, dt_bias, A_log, D,
norm.weight, out_proj) are the same in both. A checkpoint whose weights are of the other Mamba kind than its
config says (Mamba-1 weights: x_proj/dt_proj and a 2-D A_log; Mamba-2: dt_bias, a 1-D A_log) is refused
with an error naming the config field.

Weights are read from ``model.safetensors`` (or a sharded ``model.safetensors.index.json``) first, and
otherwise from ``pytorch_model.bin`` with ``torch.load(weights_only=True)``, which refuses arbitrary pickled
objects. Writes are atomic: a temporary file in the same directory, fsync, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from ..atomic import write_bytes_atomic, write_json_atomic
from ..errors import CheckpointError, ConfigError, MambakitError
from .config import MambaConfig
from .lm import MambaLMHeadModel

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"
PYTORCH_INDEX_NAME = "pytorch_model.bin.index.json"
FORMATS = ("mambakit", "hf")

_HF_EMBEDDING = "backbone.embeddings.weight"
_EMBEDDING = "backbone.embedding.weight"
_HEAD = "lm_head.weight"


# ---------------------------------------------------------------------------------------------------- config
def read_config(directory: str | os.PathLike) -> tuple[MambaConfig, str]:
    """Parse ``directory/config.json``; returns the config and the layout, "state-spaces" or "hf"."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: expected a config.json in the checkpoint directory, found none")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: expected a JSON object, could not parse it ({e})") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    try:
        if "model_type" in raw:
            if raw["model_type"] not in ("mamba", "mamba2"):
                raise CheckpointError(
                    f"{path}: config.model_type: expected 'mamba' or 'mamba2' (a transformers "
                    f"MambaForCausalLM or Mamba2ForCausalLM), got {raw['model_type']!r}, which mambakit "
                    "cannot load"
                )
            return MambaConfig.from_hf_dict(raw), "hf"
        if "d_model" in raw or "ssm_cfg" in raw:
            return MambaConfig.from_state_spaces_dict(raw), "state-spaces"
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e
    raise CheckpointError(
        f"{path}: expected a state-spaces config (keys d_model, n_layer, vocab_size, ...) or a "
        f"Hugging Face one (model_type 'mamba' or 'mamba2'), got keys {sorted(raw)}"
    )


# --------------------------------------------------------------------------------------------------- weights
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


def _read_index(directory: Path, index_name: str, reader) -> dict[str, torch.Tensor]:
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


def _fit_vocab_rows(name: str, t: torch.Tensor, config: MambaConfig, source: str) -> torch.Tensor:
    """Bring an embedding/head matrix to vocab_size_padded rows: unpadded (HF) ones get zero rows appended."""
    padded = config.vocab_size_padded
    if t.dim() == 2 and t.shape[0] == config.vocab_size and padded > config.vocab_size:
        return torch.cat([t, t.new_zeros(padded - config.vocab_size, t.shape[1])])
    if t.dim() != 2 or t.shape[0] != padded:
        raise CheckpointError(
            f"{source}: weight {name!r}: expected shape ({padded}, {config.d_model}) "
            f"(or {config.vocab_size} unpadded rows), got {tuple(t.shape)}"
        )
    return t


def _list(names) -> str:
    names = sorted(names)
    return str(names[:12])[:-1] + (f", ... ({len(names)} in all)]" if len(names) > 12 else "]")


def _weights_kind(tensors: dict[str, torch.Tensor]) -> tuple[str, str] | None:
    """Which Mamba block the mixer weights belong to, from names and shapes: ("mamba" | "mamba2", a
    description of the weight that shows it), or None when they show neither (another mixer, no layers)."""
    mixer = {name: t for name, t in tensors.items() if ".mixer." in name}
    for leaf, kind in (("x_proj.weight", "mamba"), ("dt_proj.weight", "mamba"), ("dt_bias", "mamba2")):
        for name in sorted(mixer):
            if name.endswith(".mixer." + leaf):
                return kind, repr(name)
    for name in sorted(mixer):
        if name.endswith(".mixer.A_log") and mixer[name].dim() in (1, 2):
            kind = "mamba2" if mixer[name].dim() == 1 else "mamba"
            return kind, f"{name!r} of shape {tuple(mixer[name].shape)}"
    return None


def check_mixer_kind(
    tensors: dict[str, torch.Tensor], config: MambaConfig, source: str, field: str = "config.mixer"
) -> None:
    """Raise :class:`CheckpointError` if the weights are Mamba-1 while ``config`` says Mamba-2, or the
    reverse; ``field`` names the config entry that chose the kind (e.g. "config.model_type")."""
    if config.mixer not in ("mamba", "mamba2"):
        return
    found = _weights_kind(tensors)
    if found is None or found[0] == config.mixer:
        return
    names = {"mamba": "Mamba-1", "mamba2": "Mamba-2"}
    raise CheckpointError(
        f"{source}: {field} makes this a {names[config.mixer]} model, but the weights are a "
        f"{names[found[0]]} checkpoint (e.g. {found[1]}); expected {names[config.mixer]} weights "
        f"(is {field} wrong?)"
    )


def _kind_field(layout: str) -> str:
    """The config.json entry that chose Mamba-1 or Mamba-2 in this layout (no ssm_cfg.layer = Mamba1)."""
    return "config.model_type" if layout == "hf" else "config.ssm_cfg.layer"


def state_dict_from_checkpoint(
    tensors: dict[str, torch.Tensor], config: MambaConfig, model: MambaLMHeadModel, source: str
) -> dict[str, torch.Tensor]:
    """Map checkpoint tensors (either layout) onto ``model``'s parameter names and shapes, or raise
    :class:`CheckpointError` listing missing, extra or mis-shaped weights."""
    tensors = dict(tensors)
    if _HF_EMBEDDING in tensors:
        if _EMBEDDING in tensors:
            raise CheckpointError(f"{source}: holds both {_HF_EMBEDDING!r} and {_EMBEDDING!r}; expected one")
        tensors[_EMBEDDING] = tensors.pop(_HF_EMBEDDING)
    expected = model.state_dict()
    optional = {_HEAD} if config.tie_embeddings else set()
    missing = set(expected) - set(tensors) - optional
    if missing:
        raise CheckpointError(f"{source}: missing weight(s) {_list(missing)} required by the config")
    extra = set(tensors) - set(expected)
    if extra:
        raise CheckpointError(
            f"{source}: unexpected weight(s) {_list(extra)} not in a model with this config"
        )
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise CheckpointError(
                f"{source}: weight {name!r}: expected a floating-point tensor, got {t.dtype}"
            )
        if name in (_EMBEDDING, _HEAD):
            t = _fit_vocab_rows(name, t, config, source)
        want = tuple(expected[name].shape)
        if tuple(t.shape) != want:
            raise CheckpointError(f"{source}: weight {name!r}: expected shape {want}, got {tuple(t.shape)}")
        out[name] = t
    if config.tie_embeddings:
        out[_HEAD] = out[_EMBEDDING]  # the head is the embedding; a stored copy is ignored
    return out


def load_pretrained(path: str | os.PathLike, device=None, dtype=None) -> MambaLMHeadModel:
    """Build a :class:`MambaLMHeadModel` from a checkpoint directory in either layout.

    ``dtype`` defaults to float32 whatever the stored precision (as the official loader does).
    """
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(
            f"path: expected a checkpoint directory with config.json and weights, got {path!r}"
        )
    config, layout = read_config(directory)
    tensors, weights_name = read_weights(directory)
    check_mixer_kind(tensors, config, str(directory / weights_name), field=_kind_field(layout))
    try:
        model = MambaLMHeadModel(config, device=device, dtype=dtype)
    except MambakitError as e:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {e}") from e
    state = state_dict_from_checkpoint(tensors, config, model, str(directory / weights_name))
    model.load_state_dict(state, strict=True)
    if config.tie_embeddings:  # load_state_dict copies values; make sure the head stays the same Parameter
        model.lm_head.weight = model.backbone.embedding.weight
    return model


# ------------------------------------------------------------------------------------------------------ save
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save_pretrained(model: MambaLMHeadModel, path: str | os.PathLike, format: str = "mambakit") -> None:
    """Write ``config.json`` and ``model.safetensors`` under ``path`` (created if needed).

    ``format="mambakit"``: the state-spaces layout (official config keys, weight names, padded vocabulary,
    ``lm_head.weight`` stored too, as the official checkpoints do). ``format="hf"``: what transformers'
    ``MambaForCausalLM.from_pretrained`` reads (vocabulary truncated to ``vocab_size``, tied head omitted);
    for a Mamba-2 model (``config.mixer == "mamba2"``), what ``Mamba2ForCausalLM.from_pretrained`` reads.
    """
    if format not in FORMATS:
        raise ConfigError(f"format: expected one of {list(FORMATS)}, got {format!r}")
    if not isinstance(model, MambaLMHeadModel):
        raise ConfigError(f"model: expected a MambaLMHeadModel, got {type(model).__name__}")
    config = model.config
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"path: expected a directory to write the checkpoint into, got a file {path!r}")
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    if format == "hf":
        config_dict = config.to_hf_dict()  # raises ConfigError for what transformers cannot hold
        config_dict["dtype"] = _dtype_name(model.lm_head.weight.dtype)
        tensors[_HF_EMBEDDING] = tensors.pop(_EMBEDDING)[: config.vocab_size].clone()
        if config.tie_embeddings:
            del tensors[_HEAD]
        else:
            tensors[_HEAD] = tensors[_HEAD][: config.vocab_size].clone()
    else:
        config_dict = config.to_state_spaces_dict()
        if config.tie_embeddings:  # safetensors stores no shared storage; the official layout has both names
            tensors[_HEAD] = tensors[_HEAD].clone()
    directory.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(directory / SAFETENSORS_NAME, safetensors_save(tensors, metadata={"format": "pt"}))
    write_json_atomic(directory / CONFIG_NAME, config_dict)
