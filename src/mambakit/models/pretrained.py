"""A model from a checkpoint directory and back: the layout read from ``config.json``, the weights checked
against the model the config builds, and the format chosen on save.

Layouts, detected from ``config.json``: state-spaces (official ``mamba_ssm``, also mambakit's own;
:mod:`.formats.state_spaces`), Hugging Face (``model_type`` "mamba" or "mamba2"; :mod:`.formats.hf`) and the
hybrid families' Hugging Face layouts (``model_type`` "bamba", ...; :mod:`.formats.families`).
A checkpoint whose weights are of the other Mamba kind than its config says (Mamba-1 weights: x_proj/dt_proj
and a 2-D A_log; Mamba-2: dt_bias, a 1-D A_log) is refused with an error naming the config field.

The functions receive the model class (:func:`load_pretrained`) or the model (:func:`save_pretrained`), so
this module sits below :mod:`.lm` in the import order and never imports it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, MambakitError
from . import checkpoint
from .config import MambaConfig
from .formats import hf, state_spaces
from .formats.families import FAMILIES, family
from .formats.state_spaces import EMBEDDING, HEAD

FORMATS = ("mambakit", "hf")


def read_config(directory: str | os.PathLike) -> tuple[MambaConfig, str]:
    """Parse ``directory/config.json``; returns the config and the layout, "state-spaces", "hf" or a hybrid
    family's model_type (:data:`.formats.families.FAMILIES`)."""
    raw, path = checkpoint.read_config_json(directory)
    try:
        if raw.get("model_type") in FAMILIES:
            return FAMILIES[raw["model_type"]].config_from_hf(raw), raw["model_type"]
        if "model_type" in raw:
            if raw["model_type"] not in ("mamba", "mamba2"):
                raise CheckpointError(
                    f"{path}: config.model_type: expected 'mamba', 'mamba2' (a transformers "
                    f"MambaForCausalLM or Mamba2ForCausalLM) or a hybrid family {sorted(FAMILIES)}, got "
                    f"{raw['model_type']!r}, which mambakit cannot load"
                )
            return hf.config_from_hf(raw), "hf"
        if "d_model" in raw or "ssm_cfg" in raw:
            return state_spaces.config_from_state_spaces(raw), "state-spaces"
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e
    raise CheckpointError(
        f"{path}: expected a state-spaces config (keys d_model, n_layer, vocab_size, ...) or a "
        f"Hugging Face one (model_type 'mamba' or 'mamba2'), got keys {sorted(raw)}"
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
    """Which Mamba block the mixer weights belong to, from names and shapes: ("mamba" | "mamba2" | "mamba3", a
    description of the weight that shows it), or None when they show neither (another mixer, no layers)."""
    mixer = {name: t for name, t in tensors.items() if ".mixer." in name}
    for leaf, kind in (("x_proj.weight", "mamba"), ("dt_proj.weight", "mamba"), ("B_bias", "mamba3"),
                       ("dt_bias", "mamba2")):
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
    if config.mixer not in ("mamba", "mamba2", "mamba3") or config.layer_types is not None:
        return  # a hybrid's layers are of several kinds: their weights are checked name by name
    found = _weights_kind(tensors)
    if found is None or found[0] == config.mixer:
        return
    names = {"mamba": "Mamba-1", "mamba2": "Mamba-2", "mamba3": "Mamba-3"}
    raise CheckpointError(
        f"{source}: {field} makes this a {names[config.mixer]} model, but the weights are a "
        f"{names[found[0]]} checkpoint (e.g. {found[1]}); expected {names[config.mixer]} weights "
        f"(is {field} wrong?)"
    )


def _kind_field(layout: str) -> str:
    """The config.json entry that chose Mamba-1 or Mamba-2 in this layout (no ssm_cfg.layer = Mamba1)."""
    return "config.model_type" if layout == "hf" else "config.ssm_cfg.layer"


def state_dict_from_checkpoint(
    tensors: dict[str, torch.Tensor], config: MambaConfig, expected: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Map checkpoint tensors (either layout) onto the model's parameter names and shapes (``expected``:
    its state dict), or raise :class:`CheckpointError` listing missing, extra or mis-shaped weights."""
    # Either layout's embedding name is accepted whatever config.json says (converted checkpoints mix them).
    tensors = hf.weights_from_hf(tensors, source)
    optional = {HEAD} if config.tie_embeddings else set()
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
        if name in (EMBEDDING, HEAD):
            t = _fit_vocab_rows(name, t, config, source)
        want = tuple(expected[name].shape)
        if tuple(t.shape) != want:
            raise CheckpointError(f"{source}: weight {name!r}: expected shape {want}, got {tuple(t.shape)}")
        out[name] = t
    if config.tie_embeddings:
        out[HEAD] = out[EMBEDDING]  # the head is the embedding; a stored copy is ignored
    return out


def load_pretrained(
    model_cls: type[nn.Module], path: str | os.PathLike, device=None, dtype=None
) -> nn.Module:
    """Build a ``model_cls`` (e.g. :class:`mambakit.MambaLMHeadModel`) from a checkpoint directory in either
    layout. ``dtype`` defaults to float32 whatever the stored precision (as the official loader does)."""
    directory = checkpoint.checkpoint_directory(path)
    config, layout = read_config(directory)
    tensors, weights_name = checkpoint.read_weights(directory)
    source = str(directory / weights_name)
    if layout in FAMILIES:
        raw, _ = checkpoint.read_config_json(directory)  # a family's weights may depend on its raw keys
        tensors = FAMILIES[layout].weights_from_hf(tensors, config, raw)
    check_mixer_kind(tensors, config, source, field=_kind_field(layout))
    try:
        model = model_cls(config, device=device, dtype=dtype)
    except MambakitError as e:
        raise CheckpointError(f"{directory / checkpoint.CONFIG_NAME}: {e}") from e
    state = state_dict_from_checkpoint(tensors, config, model.state_dict(), source)
    model.load_state_dict(state, strict=True)
    if config.tie_embeddings:  # load_state_dict copies values; make sure the head stays the same Parameter
        model.lm_head.weight = model.backbone.embedding.weight
    return model


def save_pretrained(model: nn.Module, path: str | os.PathLike, format: str = "mambakit") -> None:
    """Write ``config.json`` and ``model.safetensors`` of ``model`` (with ``.config`` a MambaConfig) under
    ``path`` (created if needed).

    ``format="mambakit"``: the state-spaces layout (official config keys, weight names, padded vocabulary,
    ``lm_head.weight`` stored too, as the official checkpoints do). ``format="hf"``: what transformers'
    ``MambaForCausalLM.from_pretrained`` reads (vocabulary truncated to ``vocab_size``, tied head omitted);
    for a Mamba-2 model (``config.mixer == "mamba2"``), what ``Mamba2ForCausalLM.from_pretrained`` reads;
    for a hybrid, what its family's class reads (``config.hf_model_type``, e.g. "bamba").
    """
    if format not in FORMATS:
        raise ConfigError(f"format: expected one of {list(FORMATS)}, got {format!r}")
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not isinstance(config, MambaConfig):
        raise ConfigError(f"model: expected a MambaLMHeadModel, got {type(model).__name__}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise CheckpointError(f"path: expected a directory to write the checkpoint into, got a file {path!r}")
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    if format == "hf" and (config.layer_types is not None or config.hf_model_type is not None):
        fam = family(config.hf_model_type)
        config_dict = fam.config_to_hf(config)  # raises ConfigError for what the family cannot hold
        config_dict["dtype"] = str(model.lm_head.weight.dtype).removeprefix("torch.")
        tensors = fam.weights_to_hf(tensors, config)
    elif format == "hf":
        config_dict = hf.config_to_hf(config)  # raises ConfigError for what transformers cannot hold
        config_dict["dtype"] = str(model.lm_head.weight.dtype).removeprefix("torch.")
        tensors = hf.weights_to_hf(tensors, config)
    else:
        config_dict = state_spaces.config_to_state_spaces(config)
        tensors = state_spaces.weights_to_state_spaces(tensors, config)
    checkpoint.write_checkpoint(path, config_dict, tensors)
