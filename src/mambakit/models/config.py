"""MambaConfig: the hyper-parameters of a Mamba language model, and their validation.

The dataclass's own JSON form is ``to_dict`` / ``from_dict`` (one flat dict of its fields). The checkpoint
formats' config.json forms live with their weight names in :mod:`mambakit.models.formats`
(``state_spaces``: the official ``mamba_ssm`` one; ``hf``: transformers' ``MambaForCausalLM`` /
``Mamba2ForCausalLM`` one).

Mamba-2 (``mixer="mamba2"``): the block's options that Mamba-1 lacks live in ``mixer_cfg`` (keys of
:data:`MAMBA2_DEFAULTS`: headdim, ngroups, d_ssm, chunk_size, rmsnorm, norm_before_gate, norm_eps,
D_has_hdim, A_init_range, dt_limit); the config fills in the official defaults for the keys not given, so two
configs of the same model compare equal. The shared options (d_state, d_conv, expand, dt_min, dt_max,
dt_init_floor, conv_bias, bias) are the fields. ``d_state`` defaults to the official value of the layer kind:
16 for Mamba-1 (and the other mixers), 128 for Mamba-2.

Mamba-3 (``mixer="mamba3"``): likewise, its own options in ``mixer_cfg`` under the official names
(:data:`~mambakit.models.mamba3_options.MAMBA3_DEFAULTS`, in :mod:`.mamba3_options`); d_state defaults to 128.

Padded vocabulary: mambakit (like the official model) pads the embedding and the head to a multiple of
``pad_vocab_size_multiple`` rows, while ``vocab_size`` stays the real vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .._checks import check_int, check_mapping
from ..errors import ConfigError
from .layer_types import parse_layer_types, validate_layer_types
from .mamba3_options import validate_mamba3_options, with_mamba3_defaults

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
#: The Mamba-2 options that are (low, high) pairs (JSON stores them as lists).
MAMBA2_PAIRS = ("A_init_range", "dt_limit")
# the official defaults; other mixers take Mamba-1's
_DEFAULT_D_STATE = {"mamba": 16, "mamba2": 128, "mamba3": 128}
REQUIRED_FIELDS = ("d_model", "n_layer", "vocab_size")
#: The block options Mamba and Mamba-2 both take, which are fields of MambaConfig (and keys of the
#: state-spaces ``ssm_cfg``).
SHARED_BLOCK_FIELDS = (
    "d_state", "d_conv", "expand", "dt_min", "dt_max", "dt_init_floor", "conv_bias", "bias",
)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_positive_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def as_pair(v: object) -> tuple[float, float] | None:
    """(low, high) as floats from a 2-element list/tuple of numbers (JSON gives lists), else None."""
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v):
        return float(v[0]), float(v[1])
    return None


def _with_mamba2_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """The Mamba-2 options with the defaults filled in and (low, high) pairs as tuples of floats, so that
    configs read from JSON (lists) compare equal to those built in Python (tuples)."""
    out = {**MAMBA2_DEFAULTS, **options}
    for key in MAMBA2_PAIRS:
        pair = as_pair(out[key])
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

    Hybrids (:mod:`mambakit.models.layer_types`): ``layer_types`` names the kind of each of the n_layer
    layers (or is a pattern string such as "M-M*-"); ``layer_cfg[kind]`` holds the options of each kind other
    than ``mixer``. ``embedding_multiplier`` scales the embeddings and ``logits_multiplier`` the logits (1 in
    Mamba; Granite 4.0 and Falcon-H1 set them). ``hf_model_type`` names the transformers family a hybrid is
    written as by ``save_pretrained(format="hf")`` (set when such a checkpoint is loaded). ``shared_cfg``
    describes transformer blocks shared by several layers (Zamba2), whose output joins the input of those
    layers' norms (:class:`~mambakit.layers.shared_transformer.SharedTransformer`'s options; {}: none).
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
    layer_types: list[str] | None = None
    layer_cfg: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    embedding_multiplier: float = 1.0
    logits_multiplier: float = 1.0
    hf_model_type: str | None = None
    shared_cfg: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layer_types = parse_layer_types(self.layer_types)
        if self.d_state is None:
            self.d_state = _DEFAULT_D_STATE.get(self.mixer, 16) if isinstance(self.mixer, str) else 16
        if self.mixer == "mamba2" and isinstance(self.mixer_cfg, dict):
            self.mixer_cfg = _with_mamba2_defaults(self.mixer_cfg)
        if self.mixer == "mamba3" and isinstance(self.mixer_cfg, dict):
            self.mixer_cfg = with_mamba3_defaults(self.mixer_cfg)
        self.validate()

    # ----------------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field that is out of range or of the wrong type."""

        def fail(field: str, expected: str) -> None:
            raise ConfigError(f"MambaConfig.{field}: expected {expected}, got {getattr(self, field)!r}")

        for field in (*REQUIRED_FIELDS, "d_state", "d_conv", "expand", "pad_vocab_size_multiple"):
            check_int(f"MambaConfig.{field}", getattr(self, field))
        if not (self.dt_rank == "auto" or _is_positive_int(self.dt_rank)):
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
        for field in ("embedding_multiplier", "logits_multiplier"):
            v = getattr(self, field)
            if not _is_number(v) or not math.isfinite(v) or v == 0:
                fail(field, "a finite non-zero number")
        if self.hf_model_type is not None and not isinstance(self.hf_model_type, str):
            fail("hf_model_type", "None or a transformers model_type such as 'bamba'")
        validate_layer_types(self)
        if not isinstance(self.shared_cfg, dict):
            fail("shared_cfg", "a dict of SharedTransformer options ({}: no shared blocks)")
        layers = self.shared_cfg.get("layers", [])
        if self.shared_cfg and (not isinstance(layers, (list, tuple)) or not layers or any(
                not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.n_layer for i in layers)):
            raise ConfigError(f"MambaConfig.shared_cfg['layers']: expected a non-empty list of layer indices "
                              f"in [0, {self.n_layer}), got {layers!r}")
        if self.mixer == "mamba" and self.mixer_cfg:
            fail("mixer_cfg", "{} for mixer 'mamba' (its options are MambaConfig fields)")
        if self.mixer == "mamba2":
            if self.dt_rank != "auto":
                fail("dt_rank", "'auto' for mixer 'mamba2' (Mamba-2 has no Δ projection whose rank to set)")
            self._validate_mamba2_options()
        if self.mixer == "mamba3":
            validate_mamba3_options(self)

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
            check_int(f"MambaConfig.mixer_cfg['{key}']", opts[key])
        d_ssm = opts["d_ssm"]
        if d_ssm is not None and (not _is_positive_int(d_ssm) or d_ssm > self.d_inner):
            fail("d_ssm", f"None (= d_inner) or an integer in [1, d_inner = {self.d_inner}]")
        for key in ("rmsnorm", "norm_before_gate", "D_has_hdim"):
            if not isinstance(opts[key], bool):
                fail(key, "a bool")
        eps = opts["norm_eps"]
        if not _is_number(eps) or not math.isfinite(eps) or eps <= 0:
            fail("norm_eps", "a positive finite number")
        low_high = as_pair(opts["A_init_range"])
        if low_high is None or not (0 < low_high[0] <= low_high[1] < math.inf):
            fail("A_init_range", "a pair (low, high) with 0 < low <= high, finite")
        low_high = as_pair(opts["dt_limit"])
        if low_high is None or not (0 <= low_high[0] <= low_high[1]):
            fail("dt_limit", "a pair (low, high) with 0 <= low <= high (high may be inf)")
        d_ssm = self.d_inner if d_ssm is None else d_ssm
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
    def shared_block_options(self) -> dict[str, Any]:
        """The options of :data:`SHARED_BLOCK_FIELDS` as keyword arguments of a Mamba or Mamba-2 block."""
        return {name: getattr(self, name) for name in SHARED_BLOCK_FIELDS}

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
        check_mapping("config", d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"config: unknown key(s) {unknown}; expected a subset of {sorted(names)}")
        missing = [k for k in REQUIRED_FIELDS if k not in d]
        if missing:
            raise ConfigError(f"config: missing required key(s) {missing}")
        return cls(**d)
