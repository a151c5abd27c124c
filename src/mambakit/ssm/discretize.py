"""Discretisation of a continuous linear state-space model.

The continuous model, one per channel, is h'(t) = A h(t) + B x(t), y(t) = C h(t) + D x(t) with a scalar
input x per channel (the S4 convention: every channel has its own single-input single-output SSM).
Sampling it with a step Δ gives h_k = Ā h_{k-1} + B̄ x_k. Three rules are offered:

* ``"euler"``    (forward Euler)       Ā = I + ΔA,                   B̄ = ΔB
* ``"bilinear"`` (Tustin / trapezoid)  Ā = (I − ΔA/2)⁻¹(I + ΔA/2),   B̄ = (I − ΔA/2)⁻¹ ΔB
* ``"zoh"``      (zero-order hold)     Ā = exp(ΔA),                   B̄ = A⁻¹(exp(ΔA) − I) B

Dense A is an (N, N) matrix per channel; diagonal A is given as its (N,) diagonal, real or complex, which is
the form S4D, S4 (in its eigenbasis) and the LRU use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_tensor
from ..errors import ConfigError, ShapeError

METHODS = ("euler", "bilinear", "zoh")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")


def check_step(dt: Tensor | float, batch_shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Return Δ as a real tensor broadcastable to ``batch_shape``, after checking that every Δ is > 0."""
    if not isinstance(dt, Tensor):
        dt = torch.tensor(float(dt), dtype=like.real.dtype, device=like.device)
    check_tensor("dt", dt)
    try:
        fits = torch.broadcast_shapes(dt.shape, batch_shape) == torch.Size(batch_shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise ShapeError(f"dt: expected a scalar or a shape broadcastable to {tuple(batch_shape)} "
                         f"(one step per channel), got {tuple(dt.shape)}")
    if not bool(torch.isfinite(dt).all()) or bool((dt <= 0).any()):
        raise ConfigError(f"dt: every step must be finite and > 0, got min {float(dt.min()):.3g}")
    return dt


def _check_dense(A: Tensor, B: Tensor) -> int:
    check_tensor("A", A, complex_ok=True)
    check_tensor("B", B, complex_ok=True)
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ShapeError(f"A: expected a square matrix (..., N, N), got shape {tuple(A.shape)}")
    n = A.shape[-1]
    if n == 0:
        raise ShapeError("A: the state size N must be at least 1, got N = 0")
    if B.dim() < 1 or B.shape[-1] != n:
        raise ShapeError(f"B: expected shape (..., {n}) to match A of shape {tuple(A.shape)}, "
                         f"got {tuple(B.shape)}")
    return n


def discretize_dense(A: Tensor, B: Tensor, dt: Tensor | float, method: str = "zoh") -> tuple[Tensor, Tensor]:
    """Discretise a dense SSM.

    Args:
        A: (*channels, N, N) state matrix.
        B: (*channels, N) input vector (broadcastable over the channel dimensions).
        dt: a scalar or (*channels,) step sizes, each > 0.
        method: ``"euler"``, ``"bilinear"`` or ``"zoh"``.

    Returns:
        (A_bar (*channels, N, N), B_bar (*channels, N)).
    """
    _check_method(method)
    n = _check_dense(A, B)
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-1])
    dt = check_step(dt, tuple(batch), A)
    dtype = torch.promote_types(torch.promote_types(A.dtype, B.dtype), dt.dtype)
    A, B, dt = A.to(dtype), B.to(dtype), dt.to(dtype)
    eye = torch.eye(n, dtype=dtype, device=A.device)
    dA = dt[..., None, None] * A
    dB = dt[..., None] * B
    if method == "euler":
        return eye + dA, dB.expand(*batch, n)
    if method == "bilinear":
        left = eye - dA / 2
        A_bar = torch.linalg.solve(left, eye + dA / 2)
        B_bar = torch.linalg.solve(left, dB.expand(*batch, n).unsqueeze(-1)).squeeze(-1)
        return A_bar, B_bar
    # Zero-order hold via one exponential of the block matrix [[ΔA, ΔB], [0, 0]]: its top row is [Ā, B̄],
    # which needs no inverse of A, so singular A (an integrator) is fine.
    dA = dA.expand(*batch, n, n)
    block = torch.zeros(*batch, n + 1, n + 1, dtype=dtype, device=A.device)
    block[..., :n, :n] = dA
    block[..., :n, n] = dB.expand(*batch, n)
    expo = torch.linalg.matrix_exp(block)
    return expo[..., :n, :n], expo[..., :n, n]


def discretize_diag(A: Tensor, B: Tensor, dt: Tensor | float, method: str = "zoh") -> tuple[Tensor, Tensor]:
    """Discretise a diagonal SSM (A given by its diagonal, real or complex).

    Args:
        A: (*channels, N) eigenvalues of the state matrix.
        B: (*channels, N) input vector (broadcastable with A).
        dt: a scalar or (*channels,) step sizes, each > 0.
        method: ``"euler"``, ``"bilinear"`` or ``"zoh"``.

    Returns:
        (A_bar (*channels, N), B_bar (*channels, N)), complex when A or B is.
    """
    _check_method(method)
    check_tensor("A", A, complex_ok=True)
    check_tensor("B", B, complex_ok=True)
    if A.dim() < 1 or A.shape[-1] == 0:
        raise ShapeError(f"A: expected the diagonal (..., N) with N >= 1, got shape {tuple(A.shape)}")
    try:
        shape = torch.broadcast_shapes(A.shape, B.shape)
    except RuntimeError:
        raise ShapeError(f"B: expected a shape broadcastable with A {tuple(A.shape)}, "
                         f"got {tuple(B.shape)}") from None
    if B.dim() < 1 or B.shape[-1] != A.shape[-1]:
        raise ShapeError(f"B: expected last size N = {A.shape[-1]} to match A, got shape {tuple(B.shape)}")
    dt = check_step(dt, tuple(shape[:-1]), A)
    dt = dt.to(A.real.dtype)[..., None]
    dA = dt * A
    if method == "euler":
        return 1 + dA, dt * B
    if method == "bilinear":
        left = 1 - dA / 2
        return (1 + dA / 2) / left, dt * B / left
    A_bar = torch.exp(dA)
    # (exp(ΔA) − 1)/A written as Δ·expm1(ΔA)/(ΔA), with its limit Δ where ΔA = 0 (an integrator mode).
    safe = torch.where(dA == 0, torch.ones_like(dA), dA)
    ratio = torch.where(dA == 0, torch.ones_like(dA), torch.expm1(safe) / safe)
    return A_bar, dt * ratio * B
