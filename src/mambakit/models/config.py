"""MambaConfig: the hyper-parameters of a Mamba language model, and their JSON forms.

Three forms exist:

- the dataclass itself (``to_dict`` / ``from_dict``: one flat dict of its fields);
- the official state-spaces ``config.json`` (``to_state_spaces_dict`` / ``from_state_spaces_dict``): top-level
  d_model, n_layer, vocab_size, rms_norm, residual_in_fp32, fused_add_norm, pad_vocab_size_multiple,
  tie_embeddings, with the block's own hyper-parameters under ``ssm_cfg``;
- the Hugging Face ``MambaForCausalLM`` ``config.json`` (``to_hf_dict`` / ``from_hf_dict``): model_type
  "mamba", hidden_size, state_size, num_hidden_layers, conv_kernel, time_step_rank, use_bias, use_conv_bias,
  ...

Padded vocabulary: mambakit (like the official model) pads the embedding and the head to a multiple of
``pad_vocab_size_multiple`` rows, while ``vocab_size`` stays the real vocabulary. Hugging Face stores no
padding: its ``vocab_size`` is the number of embedding rows. Exporting to HF therefore writes ``vocab_size``
and keeps only the first ``vocab_size`` rows (the padded rows are never looked up and their logits are never
sampled); importing keeps HF's ``vocab_size`` and pads with zero rows. Logits over the real vocabulary are
identical either way.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class MambaConfig:
    """Hyper-parameters of :class:`mambakit.MambaLMHeadModel` (defaults are the official ones).

    ``norm_epsilon`` is the RMSNorm/LayerNorm epsilon (official default 1e-5); it is kept so that Hugging
    Face's ``layer_norm_epsilon`` round-trips. ``mixer`` names the sequence mixer of every layer ("mamba" by
    default; other mixers register themselves with :func:`mambakit.models.mixers.register_mixer`).
    ``mixer_cfg`` holds keyword options of a non-Mamba mixer's constructor (e.g. ``{"init": "inv"}`` for
    S4D); the Mamba block's options are the fields above.
    """

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    rms_norm: bool = True
    residual_in_fp32: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    mixer: str = "mamba"
    norm_epsilon: float = 1e-5
    mixer_cfg: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field that is out of range or of the wrong type."""

        def fail(field: str, expected: str) -> None:
            raise ConfigError(f"MambaConfig.{field}: expected {expected}, got {getattr(self, field)!r}")

        for field in (
            "d_model",
            "n_layer",
            "vocab_size",
            "d_state",
            "d_conv",
            "expand",
            "pad_vocab_size_multiple",
        ):
            v = getattr(self, field)
            if not _is_int(v) or v < 1:
                fail(field, "a positive integer")
        if not (self.dt_rank == "auto" or (_is_int(self.dt_rank) and self.dt_rank >= 1)):
            fail("dt_rank", '"auto" or a positive integer')
        for field in ("dt_min", "dt_max", "norm_epsilon"):
            v = getattr(self, field)
            if not _is_number(v) or not math.isfinite(v) or v <= 0:
                fail(field, "a positive finite number")
        if self.dt_max < self.dt_min:
            raise ConfigError(f"MambaConfig.dt_max: expected >= dt_min={self.dt_min}, got {self.dt_max!r}")
        if (
            not _is_number(self.dt_init_floor)
            or not math.isfinite(self.dt_init_floor)
            or self.dt_init_floor < 0
        ):
            fail("dt_init_floor", "a non-negative finite number")
        for field in ("conv_bias", "bias", "rms_norm", "residual_in_fp32", "tie_embeddings"):
            if not isinstance(getattr(self, field), bool):
                fail(field, "a bool")
        if not isinstance(self.mixer, str) or not self.mixer:
            fail("mixer", "a mixer name such as 'mamba'")
        if not isinstance(self.mixer_cfg, dict) or not all(isinstance(k, str) for k in self.mixer_cfg):
            fail("mixer_cfg", "a dict of keyword options for the mixer")
        if self.mixer == "mamba" and self.mixer_cfg:
            fail("mixer_cfg", "{} for mixer 'mamba' (its options are MambaConfig fields)")

    # ------------------------------------------------------------------------------------------ derived sizes
    @property
    def d_inner(self) -> int:
        """Width of the block's inner (expanded) stream: expand * d_model."""
        return self.expand * self.d_model

    @property
    def dt_rank_value(self) -> int:
        """The rank of the Δ projection, with "auto" resolved to ceil(d_model / 16)."""
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def vocab_size_padded(self) -> int:
        """Rows of the embedding and the head: vocab_size rounded up to pad_vocab_size_multiple."""
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m

    # -------------------------------------------------------------------------------------------- flat form
    def to_dict(self) -> dict[str, Any]:
        """All fields as a flat dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MambaConfig:
        """Inverse of :meth:`to_dict`; unknown or missing required keys raise :class:`ConfigError`."""
        _require_mapping(d, "config")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"config: unknown key(s) {unknown}; expected a subset of {sorted(names)}")
        missing = [k for k in ("d_model", "n_layer", "vocab_size") if k not in d]
        if missing:
            raise ConfigError(f"config: missing required key(s) {missing}")
        return cls(**d)

    # ------------------------------------------------------------------------------- state-spaces (official)
    def to_state_spaces_dict(self) -> dict[str, Any]:
        """The official ``config.json`` form (loadable by ``mamba_ssm``'s MambaConfig when mixer is "mamba"
        and norm_epsilon is the default)."""
        ssm_cfg: dict[str, Any] = {
            "d_state": self.d_state,
            "d_conv": self.d_conv,
            "expand": self.expand,
            "dt_rank": self.dt_rank,
            "dt_min": self.dt_min,
            "dt_max": self.dt_max,
            "dt_init_floor": self.dt_init_floor,
            "conv_bias": self.conv_bias,
            "bias": self.bias,
        }
        if self.mixer == "mamba":
            ssm_cfg["layer"] = "Mamba1"
        out: dict[str, Any] = {
            "d_model": self.d_model,
            "d_intermediate": 0,
            "n_layer": self.n_layer,
            "vocab_size": self.vocab_size,
            "ssm_cfg": ssm_cfg,
            "attn_layer_idx": [],
            "attn_cfg": {},
            "rms_norm": self.rms_norm,
            "residual_in_fp32": self.residual_in_fp32,
            "fused_add_norm": True,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "tie_embeddings": self.tie_embeddings,
        }
        # Keys the official code does not know are written only when they differ from its behaviour.
        if self.mixer != "mamba":
            out["mixer"] = self.mixer
        if self.mixer_cfg:
            out["mixer_cfg"] = dict(self.mixer_cfg)
        if self.norm_epsilon != 1e-5:
            out["norm_epsilon"] = self.norm_epsilon
        return out

    @classmethod
    def from_state_spaces_dict(cls, d: dict[str, Any]) -> MambaConfig:
        """Read an official state-spaces ``config.json`` dict. Raises :class:`ConfigError` naming the key."""
        _require_mapping(d, "config")
        unknown = sorted(set(d) - _STATE_SPACES_KEYS)
        if unknown:
            raise ConfigError(
                f"config: unknown key(s) {unknown} for a state-spaces config; "
                f"expected a subset of {sorted(_STATE_SPACES_KEYS)}"
            )
        missing = [k for k in ("d_model", "n_layer", "vocab_size") if k not in d]
        if missing:
            raise ConfigError(f"config: missing required key(s) {missing} in a state-spaces config")
        if d.get("d_intermediate", 0) not in (0, None):
            raise ConfigError(
                f"config.d_intermediate: expected 0 (no MLP after the mixer; mambakit does not "
                f"implement it), got {d['d_intermediate']!r}"
            )
        if d.get("attn_layer_idx"):
            raise ConfigError(
                f"config.attn_layer_idx: expected [] (hybrid attention layers are not supported), "
                f"got {d['attn_layer_idx']!r}"
            )
        ssm_cfg = d.get("ssm_cfg") or {}
        _require_mapping(ssm_cfg, "config.ssm_cfg")
        unknown = sorted(set(ssm_cfg) - _SSM_CFG_KEYS)
        if unknown:
            raise ConfigError(
                f"config.ssm_cfg: unknown key(s) {unknown}; expected a subset of {sorted(_SSM_CFG_KEYS)}"
            )
        mixer = d.get("mixer", "mamba")
        layer = ssm_cfg.get("layer", "Mamba1")
        if layer != "Mamba1" and "mixer" not in d:
            raise ConfigError(
                f"config.ssm_cfg.layer: expected 'Mamba1' (or a top-level 'mixer'), got {layer!r}"
            )
        for key in ("dt_init", "dt_scale"):  # initialisation-only options: only the defaults are reproduced
            default = {"dt_init": "random", "dt_scale": 1.0}[key]
            if key in ssm_cfg and ssm_cfg[key] != default:
                raise ConfigError(
                    f"config.ssm_cfg.{key}: only {default!r} is supported, got {ssm_cfg[key]!r}"
                )
        kwargs: dict[str, Any] = {
            "d_model": d["d_model"],
            "n_layer": d["n_layer"],
            "vocab_size": d["vocab_size"],
            "mixer": mixer,
        }
        for key in (
            "d_state",
            "d_conv",
            "expand",
            "dt_rank",
            "dt_min",
            "dt_max",
            "dt_init_floor",
            "conv_bias",
            "bias",
        ):
            if key in ssm_cfg:
                kwargs[key] = ssm_cfg[key]
        for key in (
            "rms_norm",
            "residual_in_fp32",
            "pad_vocab_size_multiple",
            "tie_embeddings",
            "norm_epsilon",
            "mixer_cfg",
        ):
            if key in d:
                kwargs[key] = d[key]
        return cls(**kwargs)

    # ------------------------------------------------------------------------------------------ Hugging Face
    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` of a transformers ``MambaForCausalLM`` with these hyper-parameters.

        Raises :class:`ConfigError` for what transformers' Mamba cannot express (LayerNorm, other mixers).
        """
        if self.mixer != "mamba":
            raise ConfigError(
                f"MambaConfig.mixer: the Hugging Face format holds only 'mamba', got {self.mixer!r}"
            )
        if not self.rms_norm:
            raise ConfigError("MambaConfig.rms_norm: the Hugging Face Mamba uses RMSNorm only, got False")
        return {
            "architectures": ["MambaForCausalLM"],
            "model_type": "mamba",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "state_size": self.d_state,
            "num_hidden_layers": self.n_layer,
            "layer_norm_epsilon": self.norm_epsilon,
            "expand": self.expand,
            "intermediate_size": self.d_inner,
            "conv_kernel": self.d_conv,
            "use_bias": self.bias,
            "use_conv_bias": self.conv_bias,
            "hidden_act": "silu",
            "residual_in_fp32": self.residual_in_fp32,
            "time_step_rank": self.dt_rank,
            "time_step_min": self.dt_min,
            "time_step_max": self.dt_max,
            "time_step_floor": self.dt_init_floor,
            "time_step_scale": 1.0,
            "time_step_init_scheme": "random",
            # Init-only in transformers, but transformers 5.x applies the out_proj rescale again to weights it
            # has just loaded, so a true value here would corrupt the model on load.
            "rescale_prenorm_residual": False,
            "tie_word_embeddings": self.tie_embeddings,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "dtype": "float32",
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> MambaConfig:
        """Read a transformers ``MambaConfig`` ``config.json`` dict (model_type "mamba").

        Missing keys take transformers' defaults, as transformers itself does; unknown keys raise
        :class:`ConfigError`. ``pad_vocab_size_multiple`` is read when present (older HF exports carry it).
        Keys that only steer transformers' initialisation or implementation (time_step_scale,
        time_step_init_scheme, initializer_range, rescale_prenorm_residual, use_mambapy, ...) are accepted and
        do not change the model.
        """
        _require_mapping(d, "config")
        if d.get("model_type") != "mamba":
            raise ConfigError(f"config.model_type: expected 'mamba', got {d.get('model_type')!r}")
        unknown = sorted(set(d) - _HF_KEYS)
        if unknown:
            raise ConfigError(f"config: unknown key(s) {unknown} for a Hugging Face Mamba config")
        d = dict(d)
        # Converted checkpoints also carry the state-spaces names; they must agree with the HF ones.
        for ours, theirs in (("d_model", "hidden_size"), ("n_layer", "num_hidden_layers")):
            if ours in d:
                if theirs in d and d[theirs] != d[ours]:
                    raise ConfigError(
                        f"config.{ours}: expected the same value as {theirs}={d[theirs]!r}, got {d[ours]!r}"
                    )
                d.setdefault(theirs, d[ours])
        g = {**_HF_DEFAULTS, **d}
        if g["hidden_act"] not in ("silu", "swish"):
            raise ConfigError(f"config.hidden_act: expected 'silu', got {g['hidden_act']!r}")
        cfg = cls(
            d_model=g["hidden_size"],
            n_layer=g["num_hidden_layers"],
            vocab_size=g["vocab_size"],
            d_state=g["state_size"],
            d_conv=g["conv_kernel"],
            expand=g["expand"],
            dt_rank=g["time_step_rank"],
            dt_min=g["time_step_min"],
            dt_max=g["time_step_max"],
            dt_init_floor=g["time_step_floor"],
            conv_bias=g["use_conv_bias"],
            bias=g["use_bias"],
            rms_norm=True,
            residual_in_fp32=g["residual_in_fp32"],
            pad_vocab_size_multiple=g.get("pad_vocab_size_multiple", 8),
            tie_embeddings=g["tie_word_embeddings"],
            norm_epsilon=g["layer_norm_epsilon"],
        )
        if "intermediate_size" in d and d["intermediate_size"] != cfg.d_inner:
            raise ConfigError(
                f"config.intermediate_size: expected expand * hidden_size = {cfg.d_inner}, "
                f"got {d['intermediate_size']!r}"
            )
        return cfg


def _require_mapping(d: object, name: str) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{name}: expected a JSON object (dict), got {type(d).__name__}")


_SSM_CFG_KEYS = frozenset(
    "d_state d_conv expand dt_rank dt_min dt_max dt_init dt_scale dt_init_floor conv_bias bias use_fast_path "
    "layer".split()
)

_STATE_SPACES_KEYS = frozenset(
    "d_model d_intermediate n_layer vocab_size ssm_cfg attn_layer_idx attn_cfg rms_norm residual_in_fp32 "
    "fused_add_norm pad_vocab_size_multiple tie_embeddings".split()
) | {"mixer", "norm_epsilon", "mixer_cfg"}  # mambakit additions, written only when not the official behaviour

# transformers' MambaConfig defaults (transformers 4.x/5.x), used for keys a config.json leaves out.
_HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50280,
    "hidden_size": 768,
    "state_size": 16,
    "num_hidden_layers": 32,
    "layer_norm_epsilon": 1e-5,
    "expand": 2,
    "conv_kernel": 4,
    "use_bias": False,
    "use_conv_bias": True,
    "hidden_act": "silu",
    "residual_in_fp32": True,
    "time_step_rank": "auto",
    "time_step_min": 0.001,
    "time_step_max": 0.1,
    "time_step_floor": 1e-4,
    "tie_word_embeddings": True,
}

# Keys a transformers Mamba config.json may hold: the Mamba ones, the generic PretrainedConfig ones, and the
# state-spaces leftovers found in the converted checkpoints (e.g. d_model, n_layer, ssm_cfg).
_HF_KEYS = frozenset(_HF_DEFAULTS) | frozenset(
    # transformers' Mamba keys that only affect initialisation or the implementation choice
    "model_type architectures intermediate_size initializer_range time_step_scale time_step_init_scheme "
    "rescale_prenorm_residual use_cache use_mambapy use_associative_scan pad_vocab_size_multiple layer_types "
    # generic PretrainedConfig keys
    "bos_token_id eos_token_id pad_token_id sep_token_id decoder_start_token_id dtype torch_dtype "
    "transformers_version _name_or_path _commit_hash output_hidden_states output_attentions return_dict "
    "torchscript chunk_size_feed_forward is_encoder_decoder is_decoder add_cross_attention "
    "cross_attention_hidden_size tie_encoder_decoder id2label label2id num_labels problem_type "
    "finetuning_task task_specific_params tokenizer_class prefix pruned_heads max_length min_length "
    "_attn_implementation_autoset "
    # state-spaces leftovers in converted checkpoints
    "d_model n_layer ssm_cfg rms_norm fused_add_norm".split()
)
