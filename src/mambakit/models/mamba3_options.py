"""The Mamba-3 options of :class:`~mambakit.models.config.MambaConfig` (``mixer="mamba3"``).

As for Mamba-2, the options Mamba-3 shares with the other Mamba blocks are fields of the config (d_state,
default 128 for Mamba-3, expand, dt_min, dt_max, dt_init_floor); the others live in ``mixer_cfg`` under the
official ``mamba_ssm`` ``Mamba3`` keyword names, with its defaults filled in (:data:`MAMBA3_DEFAULTS`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .._checks import check_int
from ..errors import ConfigError

if TYPE_CHECKING:
    from .config import MambaConfig

#: Options of the Mamba-3 block held in ``MambaConfig.mixer_cfg``, with the official defaults.
MAMBA3_DEFAULTS: dict[str, Any] = {
    "headdim": 64,
    "ngroups": 1,
    "rope_fraction": 0.5,
    "A_floor": 1e-4,
    "is_outproj_norm": False,
    "is_mimo": False,
    "mimo_rank": 4,
    "chunk_size": 64,
}
#: The MambaConfig fields the Mamba-3 block takes (under the same names).
MAMBA3_FIELDS = ("d_state", "expand", "dt_min", "dt_max", "dt_init_floor")


def with_mamba3_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """The Mamba-3 options with the official defaults filled in."""
    return {**MAMBA3_DEFAULTS, **options}


def mamba3_block_options(config: MambaConfig) -> dict[str, Any]:
    """Keyword arguments of :class:`~mambakit.layers.mamba3.Mamba3Block` (besides d_model) for ``config``."""
    fields = {name: getattr(config, name) for name in MAMBA3_FIELDS}
    return {**fields, **with_mamba3_defaults(config.mixer_cfg)}


def validate_mamba3_options(config: MambaConfig) -> None:
    """Raise :class:`ConfigError` naming the first Mamba-3 option of ``config`` that is wrong."""
    cfg = config.mixer_cfg
    fields = sorted(set(cfg) & {*MAMBA3_FIELDS, "d_conv", "bias", "conv_bias"})
    if fields:
        raise ConfigError(f"MambaConfig.mixer_cfg: key(s) {fields} are MambaConfig fields for mixer "
                          f"'mamba3'; set them there")
    unknown = sorted(set(cfg) - set(MAMBA3_DEFAULTS))
    if unknown:
        raise ConfigError(f"MambaConfig.mixer_cfg: unknown key(s) {unknown} for mixer 'mamba3'; "
                          f"expected a subset of {sorted(MAMBA3_DEFAULTS)}")
    if config.dt_rank != "auto":
        raise ConfigError(f"MambaConfig.dt_rank: expected 'auto' for mixer 'mamba3' (no Δ projection whose "
                          f"rank to set), got {config.dt_rank!r}")
    if config.bias:
        raise ConfigError("MambaConfig.bias: expected False for mixer 'mamba3' (its projections have no "
                          "bias), got True")
    opts = with_mamba3_defaults(cfg)

    def fail(key: str, expected: str) -> None:
        raise ConfigError(f"MambaConfig.mixer_cfg['{key}']: expected {expected}, got {opts[key]!r}")

    for key in ("headdim", "ngroups", "mimo_rank", "chunk_size"):
        check_int(f"MambaConfig.mixer_cfg['{key}']", opts[key])
    for key in ("is_outproj_norm", "is_mimo"):
        if not isinstance(opts[key], bool):
            fail(key, "a bool")
    if opts["rope_fraction"] not in (0.5, 1.0) or isinstance(opts["rope_fraction"], bool):
        fail("rope_fraction", "0.5 or 1.0")
    floor = opts["A_floor"]
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not (0 <= floor < math.inf):
        fail("A_floor", "a non-negative finite number")
    if config.d_inner % opts["headdim"]:
        fail("headdim", f"a divisor of d_inner = expand · d_model = {config.d_inner}")
    heads = config.d_inner // opts["headdim"]
    if heads % opts["ngroups"]:
        fail("ngroups", f"a divisor of the number of heads d_inner / headdim = {heads}")
    if int(config.d_state * opts["rope_fraction"]) < 2:
        fail("rope_fraction", f"a fraction that rotates at least one pair of d_state = {config.d_state}")
