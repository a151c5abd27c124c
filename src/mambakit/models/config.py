"""MambaConfig: the hyper-parameters of a Mamba language model, and their JSON forms.

Three forms exist:

- the dataclass itself (``to_dict`` / ``from_dict``: one flat dict of its fields);
- the official state-spaces ``config.json`` (``to_state_spaces_dict`` / ``from_state_spaces_dict``): top-level
  d_model, n_layer, vocab_size, rms_norm, residual_in_fp32, fused_add_norm, pad_vocab_size_multiple,
  tie_embeddings, with the block's own hyper-parameters under ``ssm_cfg``;
- the Hugging Face ``MambaForCausalLM`` ``config.json`` (``to_hf_dict`` / ``from_hf_dict``): model_type
  "mamba", hidden_size, state_size, num_hidden_layers, conv_kernel, time_step_rank, use_bias, use_conv_bias,
  ...; or, for Mamba-2 (``mixer="mamba2"``), ``Mamba2ForCausalLM``'s: model_type "mamba2", num_heads,
  head_dim, n_groups, chunk_size, time_step_limit, ...

Mamba-2 (``mixer="mamba2"``): the block's options that Mamba-1 lacks live in ``mixer_cfg`` (keys of
:data:`MAMBA2_DEFAULTS`: headdim, ngroups, d_ssm, chunk_size, rmsnorm, norm_before_gate, norm_eps,
D_has_hdim, A_init_range, dt_limit); the config fills in the official defaults for the keys not given, so two
configs of the same model compare equal. The shared options (d_state, d_conv, expand, dt_min, dt_max,
dt_init_floor, conv_bias, bias) are the fields. ``d_state`` defaults to the official value of the layer kind:
16 for Mamba-1 (and the other mixers), 128 for Mamba-2. In the state-spaces form Mamba-2 is
``ssm_cfg: {"layer": "Mamba2", ...}`` with the options as ``mamba_ssm``'s ``Mamba2`` names them.

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

#: Options of the Mamba-2 block held in ``MambaConfig.mixer_cfg`` when ``mixer == "mamba2"``, with the
#: official (``mamba_ssm`` ``Mamba2``) defaults. ``norm_eps`` is the gated output norm's epsilon (hard-coded
#: to 1e-5 in ``mamba_ssm``; transformers uses ``layer_norm_epsilon`` for it).
MAMBA2_DEFAULTS: dict[str, Any] = {
    "headdim": 64,
    "ngroups": 1,
    "d_ssm": None,
    "chunk_size": 256,
    "rmsnorm": True,
    "norm_before_gate": False,
    "norm_eps": 1e-5,
    "D_has_hdim": False,
    "A_init_range": (1.0, 16.0),
    "dt_limit": (0.0, math.inf),
}
_MAMBA2_PAIRS = ("A_init_range", "dt_limit")
_DEFAULT_D_STATE = {"mamba": 16, "mamba2": 128}  # the official defaults; other mixers take Mamba-1's


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _pair(v: object) -> tuple[float, float] | None:
    """(low, high) as floats from a 2-element list/tuple of numbers (JSON gives lists), else None."""
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v):
        return float(v[0]), float(v[1])
    return None


def _with_mamba2_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """The Mamba-2 options with the defaults filled in and (low, high) pairs as tuples of floats, so that
    configs read from JSON (lists) compare equal to those built in Python (tuples)."""
    out = {**MAMBA2_DEFAULTS, **options}
    for key in _MAMBA2_PAIRS:
        pair = _pair(out[key])
        if pair is not None:
            out[key] = pair
    return out


@dataclass
class MambaConfig:
    """Hyper-parameters of :class:`mambakit.MambaLMHeadModel` (defaults are the official ones).

    ``norm_epsilon`` is the RMSNorm/LayerNorm epsilon (official default 1e-5); it is kept so that Hugging
    Face's ``layer_norm_epsilon`` round-trips. ``mixer`` names the sequence mixer of every layer ("mamba" by
    default; other mixers register themselves with :func:`mambakit.models.mixers.register_mixer`).
    ``mixer_cfg`` holds keyword options of a non-Mamba mixer's constructor (e.g. ``{"init": "inv"}`` for
    S4D); the Mamba block's options are the fields above. For ``mixer="mamba2"`` it holds the Mamba-2 options
    (:data:`MAMBA2_DEFAULTS`, filled in when left out), e.g. ``{"headdim": 64, "ngroups": 1,
    "chunk_size": 256}``. ``d_state=None`` means the layer kind's official default (128 for Mamba-2, else 16).
    """

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int | None = None
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
        if self.d_state is None:
            self.d_state = _DEFAULT_D_STATE.get(self.mixer, 16) if isinstance(self.mixer, str) else 16
        if self.mixer == "mamba2" and isinstance(self.mixer_cfg, dict):
            self.mixer_cfg = _with_mamba2_defaults(self.mixer_cfg)
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
        if self.mixer == "mamba2":
            if self.dt_rank != "auto":
                fail("dt_rank", "'auto' for mixer 'mamba2' (Mamba-2 has no Δ projection whose rank to set)")
            self._validate_mamba2_options()

    def _validate_mamba2_options(self) -> None:
        unknown = sorted(set(self.mixer_cfg) - set(MAMBA2_DEFAULTS))
        if unknown:
            raise ConfigError(
                f"MambaConfig.mixer_cfg: unknown key(s) {unknown} for mixer 'mamba2'; "
                f"expected a subset of {sorted(MAMBA2_DEFAULTS)}"
            )
        opts = {**MAMBA2_DEFAULTS, **self.mixer_cfg}

        def fail(key: str, expected: str) -> None:
            raise ConfigError(f"MambaConfig.mixer_cfg['{key}']: expected {expected}, got {opts[key]!r}")

        for key in ("headdim", "ngroups", "chunk_size"):
            if not _is_int(opts[key]) or opts[key] < 1:
                fail(key, "a positive integer")
        if opts["d_ssm"] is not None and (
            not _is_int(opts["d_ssm"]) or not 1 <= opts["d_ssm"] <= self.d_inner
        ):
            fail("d_ssm", f"None (= d_inner) or an integer in [1, d_inner = {self.d_inner}]")
        for key in ("rmsnorm", "norm_before_gate", "D_has_hdim"):
            if not isinstance(opts[key], bool):
                fail(key, "a bool")
        eps = opts["norm_eps"]
        if not _is_number(eps) or not math.isfinite(eps) or eps <= 0:
            fail("norm_eps", "a positive finite number")
        low_high = _pair(opts["A_init_range"])
        if low_high is None or not (0 < low_high[0] <= low_high[1] < math.inf):
            fail("A_init_range", "a pair (low, high) with 0 < low <= high, finite")
        low_high = _pair(opts["dt_limit"])
        if low_high is None or not (0 <= low_high[0] <= low_high[1]):
            fail("dt_limit", "a pair (low, high) with 0 <= low <= high (high may be inf)")
        d_ssm = self.d_inner if opts["d_ssm"] is None else opts["d_ssm"]
        if d_ssm % opts["headdim"] != 0:
            fail("headdim", f"a divisor of d_ssm = {d_ssm} (heads = d_ssm / headdim)")
        heads = d_ssm // opts["headdim"]
        if heads % opts["ngroups"] != 0:
            fail("ngroups", f"a divisor of the number of heads d_ssm / headdim = {d_ssm} / {opts['headdim']} "
                 f"= {heads}")

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
    def mamba2_options(self) -> dict[str, Any]:
        """The Mamba-2 block's options (:data:`MAMBA2_DEFAULTS` overridden by ``mixer_cfg``)."""
        return _with_mamba2_defaults(self.mixer_cfg)

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
        or "mamba2" and norm_epsilon is the default)."""
        ssm_cfg: dict[str, Any] = {
            "d_state": self.d_state,
            "d_conv": self.d_conv,
            "expand": self.expand,
            "dt_min": self.dt_min,
            "dt_max": self.dt_max,
            "dt_init_floor": self.dt_init_floor,
            "conv_bias": self.conv_bias,
            "bias": self.bias,
        }
        # Keys the official code does not know are written only when they differ from its behaviour.
        extra: dict[str, Any] = {}
        if self.mixer == "mamba2":
            options = self.mamba2_options
            norm_eps = options.pop("norm_eps")  # mamba_ssm hard-codes 1e-5: any other value is a mambakit key
            ssm_cfg.update({k: list(v) if k in _MAMBA2_PAIRS else v for k, v in options.items()})
            ssm_cfg["layer"] = "Mamba2"
            if norm_eps != MAMBA2_DEFAULTS["norm_eps"]:
                extra["mixer_cfg"] = {"norm_eps": norm_eps}
        else:
            ssm_cfg["dt_rank"] = self.dt_rank
            if self.mixer == "mamba":
                ssm_cfg["layer"] = "Mamba1"
            else:
                extra["mixer"] = self.mixer
                if self.mixer_cfg:
                    extra["mixer_cfg"] = dict(self.mixer_cfg)
        if self.norm_epsilon != 1e-5:
            extra["norm_epsilon"] = self.norm_epsilon
        return {
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
            **extra,
        }

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
        layer = ssm_cfg.get("layer", "Mamba1")
        if layer not in ("Mamba1", "Mamba2"):
            raise ConfigError(f"config.ssm_cfg.layer: expected 'Mamba1' or 'Mamba2', got {layer!r}")
        mixer = d.get("mixer", "mamba2" if layer == "Mamba2" else "mamba")
        if layer == "Mamba2" and mixer != "mamba2":
            raise ConfigError(
                f"config.mixer: expected 'mamba2' (or no 'mixer' key) with ssm_cfg.layer 'Mamba2', "
                f"got {mixer!r}"
            )
        if mixer == "mamba2" and layer != "Mamba2":
            raise ConfigError(
                f"config.ssm_cfg.layer: expected 'Mamba2' for mixer 'mamba2', got {layer!r}"
            )
        own, other = (
            (_SSM_CFG_MAMBA2_KEYS, _SSM_CFG_MAMBA1_KEYS)
            if mixer == "mamba2"
            else (_SSM_CFG_MAMBA1_KEYS, _SSM_CFG_MAMBA2_KEYS)
        )
        foreign = sorted(set(ssm_cfg) & other)
        if foreign:
            kind = "Mamba-1" if mixer == "mamba2" else "Mamba-2"
            raise ConfigError(
                f"config.ssm_cfg: key(s) {foreign} are {kind} options, not accepted with ssm_cfg.layer "
                f"{layer!r}"
            )
        # initialisation-only options: only the defaults are reproduced
        for key, default in (("dt_init", "random"), ("dt_scale", 1.0), ("conv_init", None)):
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
        if mixer == "mamba2":
            extra = kwargs.get("mixer_cfg", {})
            _require_mapping(extra, "config.mixer_cfg")
            kwargs["mixer_cfg"] = {
                **{k: ssm_cfg[k] for k in MAMBA2_DEFAULTS if k in ssm_cfg},
                **extra,
            }
        return cls(**kwargs)

    # ------------------------------------------------------------------------------------------ Hugging Face
    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` of a transformers ``MambaForCausalLM`` with these hyper-parameters.

        For ``mixer="mamba2"``, the ``config.json`` of a transformers ``Mamba2ForCausalLM``; ``A_init_range``
        only steers initialisation and is not stored there.

        Raises :class:`ConfigError` for what transformers' Mamba cannot express (LayerNorm, other mixers).
        """
        if self.mixer not in ("mamba", "mamba2"):
            raise ConfigError(
                "MambaConfig.mixer: the Hugging Face format holds only 'mamba' or 'mamba2', "
                f"got {self.mixer!r}"
            )
        if not self.rms_norm:
            raise ConfigError("MambaConfig.rms_norm: the Hugging Face Mamba uses RMSNorm only, got False")
        if self.mixer == "mamba2":
            return self._to_hf_mamba2_dict()
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

    def _to_hf_mamba2_dict(self) -> dict[str, Any]:
        o = self.mamba2_options

        def refuse(key: str, expected: str) -> None:
            raise ConfigError(
                f"MambaConfig.mixer_cfg['{key}']: the Hugging Face Mamba-2 holds only {expected}, "
                f"got {o[key]!r}"
            )

        if o["d_ssm"] not in (None, self.d_inner):
            refuse("d_ssm", f"None (= d_inner = {self.d_inner}; no gated-MLP channels)")
        for key, value in (("rmsnorm", True), ("norm_before_gate", False), ("D_has_hdim", False)):
            if o[key] is not value:
                refuse(key, repr(value))
        if o["norm_eps"] != self.norm_epsilon:
            refuse("norm_eps", f"norm_epsilon = {self.norm_epsilon} (layer_norm_epsilon serves both norms)")
        return {
            "architectures": ["Mamba2ForCausalLM"],
            "model_type": "mamba2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "state_size": self.d_state,
            "num_hidden_layers": self.n_layer,
            "layer_norm_epsilon": self.norm_epsilon,
            "expand": self.expand,
            "conv_kernel": self.d_conv,
            "num_heads": self.d_inner // o["headdim"],
            "head_dim": o["headdim"],
            "n_groups": o["ngroups"],
            "chunk_size": o["chunk_size"],
            "use_bias": self.bias,
            "use_conv_bias": self.conv_bias,
            "hidden_act": "silu",
            "residual_in_fp32": self.residual_in_fp32,
            "time_step_min": self.dt_min,
            "time_step_max": self.dt_max,
            "time_step_floor": self.dt_init_floor,
            "time_step_limit": list(o["dt_limit"]),
            "rescale_prenorm_residual": False,  # see to_hf_dict: init-only, and harmful on load if true
            "tie_word_embeddings": self.tie_embeddings,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            # mambakit models know no special tokens; transformers' defaults (eos 2...) would stop generation
            "bos_token_id": None,
            "eos_token_id": None,
            "pad_token_id": None,
            "dtype": "float32",
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> MambaConfig:
        """Read a transformers ``MambaConfig`` ``config.json`` dict (model_type "mamba"), or a
        ``Mamba2Config`` one (model_type "mamba2", giving ``mixer="mamba2"``).

        Missing keys take transformers' defaults, as transformers itself does; unknown keys raise
        :class:`ConfigError`. ``pad_vocab_size_multiple`` is read when present (older HF exports carry it).
        Keys that only steer transformers' initialisation or implementation (time_step_scale,
        time_step_init_scheme, initializer_range, rescale_prenorm_residual, use_mambapy, ...) are accepted and
        do not change the model.
        """
        _require_mapping(d, "config")
        if d.get("model_type") not in ("mamba", "mamba2"):
            raise ConfigError(f"config.model_type: expected 'mamba' or 'mamba2', got {d.get('model_type')!r}")
        mamba2 = d["model_type"] == "mamba2"
        keys, other = (_HF2_KEYS, _HF_KEYS) if mamba2 else (_HF_KEYS, _HF2_KEYS)
        unknown = sorted(set(d) - keys)
        if unknown:
            hint = ""
            if set(unknown) <= other:  # e.g. a Mamba-1 config relabelled "mamba2"
                hint = f"; they are keys of model_type {'mamba' if mamba2 else 'mamba2'!r}"
            raise ConfigError(
                f"config: unknown key(s) {unknown} for a Hugging Face Mamba{'-2' if mamba2 else ''} config "
                f"(model_type {d['model_type']!r}){hint}"
            )
        d = _decode_special_floats(dict(d))
        # Converted checkpoints also carry the state-spaces names; they must agree with the HF ones.
        for ours, theirs in (("d_model", "hidden_size"), ("n_layer", "num_hidden_layers")):
            if ours in d:
                if theirs in d and d[theirs] != d[ours]:
                    raise ConfigError(
                        f"config.{ours}: expected the same value as {theirs}={d[theirs]!r}, got {d[ours]!r}"
                    )
                d.setdefault(theirs, d[ours])
        g = {**(_HF2_DEFAULTS if mamba2 else _HF_DEFAULTS), **d}
        if g["hidden_act"] not in ("silu", "swish"):
            raise ConfigError(f"config.hidden_act: expected 'silu', got {g['hidden_act']!r}")
        if mamba2:
            return cls._from_hf_mamba2(g)
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

    @classmethod
    def _from_hf_mamba2(cls, g: dict[str, Any]) -> MambaConfig:
        """``g``: a transformers Mamba2Config dict with the defaults filled in."""
        for key, value in (("rms_norm", True), ("norm_before_gate", False)):  # keys of older transformers
            if key in g and g[key] is not value:
                raise ConfigError(f"config.{key}: expected {value} (the HF Mamba-2 variant), got {g[key]!r}")
        heads, head_dim, groups = g["num_heads"], g["head_dim"], g["n_groups"]
        for key in ("num_heads", "head_dim", "n_groups", "hidden_size", "expand"):
            if not _is_int(g[key]) or g[key] < 1:
                raise ConfigError(f"config.{key}: expected a positive integer, got {g[key]!r}")
        d_inner = g["expand"] * g["hidden_size"]
        if heads * head_dim != d_inner:
            raise ConfigError(
                f"config.num_heads: expected num_heads * head_dim = expand * hidden_size = {d_inner}, "
                f"got num_heads={heads} with head_dim={head_dim} (headdim mismatch)"
            )
        if heads % groups != 0:
            raise ConfigError(f"config.n_groups: expected a divisor of num_heads={heads}, got {groups!r}")
        limit = _pair(g["time_step_limit"])
        if limit is None:
            raise ConfigError(
                f"config.time_step_limit: expected a pair [low, high], got {g['time_step_limit']!r}"
            )
        return cls(
            d_model=g["hidden_size"],
            n_layer=g["num_hidden_layers"],
            vocab_size=g["vocab_size"],
            d_state=g["state_size"],
            d_conv=g["conv_kernel"],
            expand=g["expand"],
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
            mixer="mamba2",
            mixer_cfg={
                "headdim": head_dim,
                "ngroups": groups,
                "chunk_size": g["chunk_size"],
                "dt_limit": limit,
                "norm_eps": g["layer_norm_epsilon"],  # transformers' gated norm uses it too
            },
        )


def _decode_special_floats(obj: Any) -> Any:
    """transformers 5 writes inf/nan in config.json as {"__float__": "Infinity"}; turn those into floats."""
    if isinstance(obj, dict):
        if set(obj) == {"__float__"} and obj["__float__"] in ("Infinity", "-Infinity", "NaN"):
            return float(obj["__float__"].replace("Infinity", "inf"))
        return {k: _decode_special_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_special_floats(v) for v in obj]
    return obj


def _require_mapping(d: object, name: str) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{name}: expected a JSON object (dict), got {type(d).__name__}")


_SSM_CFG_MAMBA1_KEYS = frozenset("dt_rank dt_init dt_scale use_fast_path".split())
# mamba_ssm Mamba2's constructor options (conv_init and use_mem_eff_path steer initialisation or the kernel)
_SSM_CFG_MAMBA2_KEYS = frozenset(MAMBA2_DEFAULTS) - {"norm_eps"} | {"conv_init", "use_mem_eff_path"}
_SSM_CFG_KEYS = (
    frozenset("d_state d_conv expand dt_min dt_max dt_init_floor conv_bias bias layer".split())
    | _SSM_CFG_MAMBA1_KEYS
    | _SSM_CFG_MAMBA2_KEYS
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

# transformers' Mamba2Config defaults (transformers 5.x), used for keys a config.json leaves out.
_HF2_DEFAULTS: dict[str, Any] = {
    "num_heads": 128,
    "head_dim": 64,
    "vocab_size": 32768,
    "hidden_size": 4096,
    "state_size": 128,
    "num_hidden_layers": 64,
    "layer_norm_epsilon": 1e-5,
    "expand": 2,
    "conv_kernel": 4,
    "n_groups": 8,
    "use_bias": False,
    "use_conv_bias": True,
    "hidden_act": "silu",
    "residual_in_fp32": True,
    "time_step_min": 0.001,
    "time_step_max": 0.1,
    "time_step_floor": 1e-4,
    "time_step_limit": (0.0, math.inf),
    "chunk_size": 256,
    "tie_word_embeddings": False,
}

# Keys any transformers config.json may hold (generic PretrainedConfig ones) and the state-spaces leftovers
# found in converted checkpoints (e.g. d_model, n_layer, ssm_cfg).
_HF_GENERIC_KEYS = frozenset(
    "bos_token_id eos_token_id pad_token_id sep_token_id decoder_start_token_id dtype torch_dtype "
    "transformers_version _name_or_path _commit_hash output_hidden_states output_attentions return_dict "
    "torchscript chunk_size_feed_forward is_encoder_decoder is_decoder add_cross_attention "
    "cross_attention_hidden_size tie_encoder_decoder id2label label2id num_labels problem_type "
    "finetuning_task task_specific_params tokenizer_class prefix pruned_heads max_length min_length "
    "_attn_implementation_autoset "
    # state-spaces leftovers in converted checkpoints
    "d_model n_layer ssm_cfg fused_add_norm".split()
)

# Keys a transformers Mamba config.json may hold: the Mamba ones, and those that only affect initialisation
# or the implementation choice ("rms_norm": a state-spaces leftover of the converted checkpoints).
_HF_KEYS = (
    frozenset(_HF_DEFAULTS)
    | frozenset(
        "model_type architectures intermediate_size initializer_range time_step_scale time_step_init_scheme "
        "rescale_prenorm_residual use_cache use_mambapy use_associative_scan pad_vocab_size_multiple "
        "layer_types rms_norm".split()
    )
    | _HF_GENERIC_KEYS
)

# The same for Mamba2Config (rms_norm and norm_before_gate: keys of older transformers versions).
_HF2_KEYS = (
    frozenset(_HF2_DEFAULTS)
    | frozenset(
        "model_type architectures time_step_rank initializer_range rescale_prenorm_residual use_cache "
        "pad_vocab_size_multiple layer_types rms_norm norm_before_gate".split()
    )
    | _HF_GENERIC_KEYS
)
