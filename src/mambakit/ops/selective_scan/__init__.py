"""The selective scan (S6) of Mamba: :func:`selective_scan` and the registry of its implementations.

Modules: ``ref`` (the readable reference ``selective_scan_ref`` and the one-token step
``selective_state_update``), ``common`` (argument checks, kernel layout, prologue and epilogue shared by the
backends), ``chunked``, ``cpu`` (with ``cpu_lanes``, its channel-vectorised float32 forward) and ``triton``.

Every backend takes the arguments of ``selective_scan_ref`` positionally and returns the same results.
Backends are imported on first use, so ``import mambakit`` does not pay for numba or Triton.

Which backends take what:

============  ==========  ===========  =============================================
name          device      complex A    notes
============  ==========  ===========  =============================================
``ref``       any         yes          the readable loop; slow
``chunked``   any         no           pure torch, chunked parallel scan
``cpu``       CPU         no           fused numba kernels (forward and backward)
``triton``    CUDA        no           fused Triton kernels; needs ``triton``
============  ==========  ===========  =============================================

All of them take an ``initial_state`` and packed sequences' ``seq_idx`` (keyword-only; ``triton`` runs
packed calls on the chunked core). A backend that cannot take complex A hands such calls
to ``ref`` (correct, never a silent wrong answer). ``"auto"`` picks ``cpu`` on the CPU, ``triton`` on CUDA
where Triton imports, ``chunked`` elsewhere.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from ...errors import ConfigError
from .ref import selective_scan_ref, selective_state_update

__all__ = ["auto_backend", "available_backends", "resolve_backend", "selective_scan", "selective_scan_ref",
           "selective_state_update", "triton_available"]

# name -> (module, function); resolved lazily.
_BACKENDS: dict[str, tuple[str, str]] = {
    "ref": ("mambakit.ops.selective_scan.ref", "selective_scan_ref"),
    "chunked": ("mambakit.ops.selective_scan.chunked", "selective_scan_chunked"),
    "cpu": ("mambakit.ops.selective_scan.cpu", "selective_scan_cpu"),
    "triton": ("mambakit.ops.selective_scan.triton", "selective_scan_triton"),
}
_COMPLEX_CAPABLE = {"ref"}


def available_backends() -> list[str]:
    """Names accepted by ``selective_scan(..., backend=...)`` besides ``"auto"``."""
    return sorted(_BACKENDS)


def _load(name: str) -> Callable:
    module, function = _BACKENDS[name]
    return getattr(importlib.import_module(module), function)


def triton_available() -> bool:
    """Whether the ``triton`` backend can run here (Triton installed and importable)."""
    try:
        importlib.import_module("triton")
    except Exception:  # noqa: BLE001 - any failure to import means "not available"
        return False
    return True


def auto_backend(u: torch.Tensor, A: torch.Tensor) -> str:
    """The backend ``"auto"`` picks for inputs like ``u`` (batch, dim, L) and ``A`` (dim, N)."""
    if A.is_complex():
        return "ref"
    if u.device.type == "cpu":
        return "cpu"
    if u.device.type == "cuda" and triton_available():
        return "triton"
    return "chunked"


def resolve_backend(backend: str, u: torch.Tensor, A: torch.Tensor) -> Callable:
    """The implementation to run for ``backend`` on inputs like ``u`` and ``A``.

    Raises:
        ConfigError: ``backend`` is not ``"auto"`` or a registered name.
    """
    if not isinstance(backend, str) or (backend != "auto" and backend not in _BACKENDS):
        raise ConfigError(f"backend: expected 'auto' or one of {available_backends()}, got {backend!r}")
    if not (isinstance(u, torch.Tensor) and isinstance(A, torch.Tensor)):
        return selective_scan_ref  # its argument checks name the bad argument
    name = auto_backend(u, A) if backend == "auto" else backend
    if A.is_complex() and name not in _COMPLEX_CAPABLE:
        name = "ref"
    if name == "ref":
        return selective_scan_ref
    return _load(name)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
    *,
    initial_state: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with a choice of implementation; arguments and results as :func:`selective_scan_ref`.

    ``backend``: ``"auto"`` picks the fastest correct implementation for the inputs' device and dtype;
    ``mambakit.ops.available_backends()`` lists the names accepted.
    """
    fn = resolve_backend(backend, u, A)
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
              initial_state=initial_state, seq_idx=seq_idx)
