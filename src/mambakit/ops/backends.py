"""Registry of selective-scan implementations behind :func:`mambakit.ops.selective_scan`.

Every backend takes the arguments of ``selective_scan_ref`` positionally and returns the same results.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ConfigError
from .selective_scan import selective_scan_ref

_BACKENDS: dict[str, Callable] = {"ref": selective_scan_ref}


def available_backends() -> list[str]:
    """Names accepted by ``selective_scan(..., backend=...)`` besides ``"auto"``."""
    return sorted(_BACKENDS)


def resolve_backend(backend: str, u: torch.Tensor, A: torch.Tensor) -> Callable:
    """The implementation to run for ``backend`` on inputs like ``u`` and ``A``."""
    if backend == "auto":
        return selective_scan_ref
    if backend not in _BACKENDS:
        raise ConfigError(f"backend: expected 'auto' or one of {available_backends()}, got {backend!r}")
    return _BACKENDS[backend]
