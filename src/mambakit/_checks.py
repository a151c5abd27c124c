"""Argument checks shared by the public functions.

Each raises a :mod:`mambakit.errors` exception whose message says which argument, what was expected and
what was given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import ConfigError, DeviceError, DTypeError, ShapeError, TokenIdError


def check_tensor(name: str, t: object, ndim: int | Sequence[int] | None = None,
                 floating: bool = True, complex_ok: bool = False) -> torch.Tensor:
    """Check that ``t`` is a tensor of an allowed rank and (by default) a floating dtype."""
    if not isinstance(t, torch.Tensor):
        raise DTypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ShapeError(f"{name}: expected {want} dimensions, got {t.dim()} (shape {tuple(t.shape)})")
    if floating:
        if t.is_complex():
            if not complex_ok:
                raise DTypeError(f"{name}: expected a real floating-point tensor, got {t.dtype}")
        elif not t.is_floating_point():
            raise DTypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    return t


def check_integer_tensor(name: str, t: object, ndim: int | Sequence[int] | None = None) -> torch.Tensor:
    """Check that ``t`` is a tensor of an integer dtype (not bool) of an allowed rank."""
    check_tensor(name, t, ndim=ndim, floating=False)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise DTypeError(f"{name}: expected an integer tensor, got {t.dtype}")
    return t


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int | None], what: str = "") -> None:
    """Check ``t.shape`` against ``expected``; ``None`` entries match any size."""
    shape = tuple(t.shape)
    mismatch = len(shape) != len(expected) or any(
        e is not None and s != e for s, e in zip(shape, expected, strict=True)
    )
    if mismatch:
        sizes = ["*" if e is None else str(e) for e in expected]
        want = "(" + ", ".join(sizes) + ("," if len(sizes) == 1 else "") + ")"
        extra = f" ({what})" if what else ""
        raise ShapeError(f"{name}: expected shape {want}{extra}, got {shape}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """All given tensors (``None`` skipped) must be on one device."""
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise DeviceError(f"tensors must be on one device, got {listing}")


def check_same_real_dtype(**tensors: torch.Tensor | None) -> None:
    """Real floating tensors that are combined elementwise must share one precision."""
    present = {k: v for k, v in tensors.items() if v is not None and not v.is_complex()}
    dtypes = {k: v.dtype for k, v in present.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{k}: {d}" for k, d in dtypes.items())
        raise DTypeError(f"mixed floating-point dtypes: {listing}; cast them to one dtype")


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """Raise :class:`ConfigError` naming ``name`` unless ``value`` is an int (not a bool) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        want = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ConfigError(f"{name}: expected {want}, got {value!r}")
    return value


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The precision the operations compute in: float64 if any given tensor is float64 (or complex128), else
    float32 (half precisions are upcast, as the official kernels do). ``None`` entries are skipped."""
    for t in tensors:
        if t is not None and t.dtype in (torch.float64, torch.complex128):
            return torch.float64
    return torch.float32


def check_mapping(name: str, value: object) -> dict:
    """Raise :class:`ConfigError` naming ``name`` unless ``value`` is a dict (a JSON object)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a JSON object (dict), got {type(value).__name__}")
    return value


def check_input_ids(
    input_ids: object, vocab_size: int, ndim: int = 2, name: str = "input_ids"
) -> torch.Tensor:
    """Token ids: an integer tensor of rank ``ndim`` ((batch, L) by default, (batch,) for one step) with
    every id in [0, vocab_size); raises :class:`DTypeError`, :class:`ShapeError` or :class:`TokenIdError`."""
    if not isinstance(input_ids, torch.Tensor):
        raise DTypeError(f"{name}: expected a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype == torch.bool or input_ids.is_floating_point() or input_ids.is_complex():
        raise DTypeError(
            f"{name}: expected an integer tensor (torch.long) of token ids, got {input_ids.dtype}"
        )
    if input_ids.dim() != ndim:
        want = "(batch, L)" if ndim == 2 else "(batch,)"
        raise ShapeError(f"{name}: expected {ndim} dimensions {want}, got shape {tuple(input_ids.shape)}")
    if input_ids.numel() > 0:
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise TokenIdError(f"{name}: expected token ids in [0, {vocab_size}) (vocab_size), got {bad}")
    return input_ids
