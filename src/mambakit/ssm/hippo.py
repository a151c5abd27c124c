"""HiPPO: the (A, B) matrices that make an SSM's state the running projection of its input on a basis.

Gu, Dao, Ermon, Rudra, Ré, "HiPPO: Recurrent Memory with Optimal Polynomial Projections" (NeurIPS 2020).
Each family fixes a measure over the past and an orthonormal basis for it; the state h(t) holds the basis
coefficients of the input's history, and h' = A h + B f keeps them up to date. Conventions here:

* ``"legs"``: all of [0, t], Legendre scaled to it; h' = (A h + B f) / t (time-varying); points s = x / t.
* ``"legt"``: the window [t − θ, t], Legendre; h' = A h + B f; points s = (x − t + θ) / θ.
* ``"lagt"``: all of (−∞, t] weighted by e^{−(t − x)}, Laguerre in the lag; h' = A h + B f; points are the
  lags y = t − x >= 0.
* ``"fout"``: the window [t − θ, t], Fourier; h' = A h + B f; points s = (x − t + θ) / θ.

The history is read back as f(point) ≈ Σ_n h_n g_n(point) with the basis g of :func:`hippo_basis`.
All matrices are in orthonormal coordinates (for Legendre, h_n = √(2n+1) times the plain coefficient), so
LegS has the form of the S4 paper: A_nk = −√((2n+1)(2k+1)) below the diagonal, −(n+1) on it, 0 above.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_tensor
from ..errors import ConfigError, ShapeError
from .discretize import discretize_dense

KINDS = ("legs", "legt", "lagt", "fout")


def _check_kind_and_size(kind: str, N: int) -> None:
    if kind not in KINDS:
        raise ConfigError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(N, int) or isinstance(N, bool) or N < 1:
        raise ShapeError(f"N: expected a state size >= 1, got {N!r}")


def hippo_matrices(kind: str, N: int, theta: float = 1.0, dtype: torch.dtype = torch.float64,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """The HiPPO (A, B) of a family, in the convention h' = A h + B f (LegS: divided by t).

    Args:
        kind: ``"legs"``, ``"legt"``, ``"lagt"`` or ``"fout"``.
        N: state size.
        theta: window length of LegT and FouT (ignored by the others).

    Returns:
        A: (N, N), B: (N,).
    """
    _check_kind_and_size(kind, N)
    if theta <= 0:
        raise ConfigError(f"theta: expected a window length > 0, got {theta}")
    n = torch.arange(N, dtype=torch.float64)
    row, col = n[:, None], n[None, :]
    root = torch.sqrt(2 * n + 1)
    if kind == "legs":
        A = -torch.where(row > col, root[:, None] * root[None, :], torch.diag(n + 1))
        B = root.clone()
    elif kind == "legt":
        # d/dt of the window's Legendre coefficients: f enters at the new end (P_n(1) = 1), leaves at the old
        # end (P_n(−1) = (−1)^n, f(t − θ) read back from the state), and the window's shift adds P_n'.
        sign = torch.where(col <= row, torch.ones_like(row * col), (-1.0) ** (row - col))
        A = -(root[:, None] * root[None, :]) * sign / theta
        B = root / theta
    elif kind == "lagt":
        # Laguerre: L_n(0) = 1 and L_n' = −Σ_{k<n} L_k, and the weight's decay adds −h_n.
        A = -(col <= row).to(torch.float64)
        B = torch.ones(N, dtype=torch.float64)
    else:
        # Basis 1, √2 cos(2πks), √2 sin(2πks), ...: derivatives rotate each (cos, sin) pair, and f(t − θ)
        # leaving the window is read back from the state as Bᵀh (each basis function's value at s = 0).
        B = torch.zeros(N, dtype=torch.float64)
        B[0] = 1.0
        B[1::2] = math.sqrt(2.0)
        rot = torch.zeros(N, N, dtype=torch.float64)
        for cos_idx in range(1, N - 1, 2):
            freq = 2 * math.pi * ((cos_idx + 1) // 2)
            rot[cos_idx, cos_idx + 1] = freq
            rot[cos_idx + 1, cos_idx] = -freq
        A = (rot - B[:, None] * B[None, :]) / theta
        B = B / theta
    return A.to(dtype=dtype, device=device), B.to(dtype=dtype, device=device)


def legendre(N: int, x: Tensor) -> Tensor:
    """Legendre polynomials P_0..P_{N-1} at x (..., M) by the three-term recurrence; returns (..., M, N)."""
    values = [torch.ones_like(x), x]
    for k in range(1, N - 1):
        values.append(((2 * k + 1) * x * values[k] - k * values[k - 1]) / (k + 1))
    return torch.stack(values[:N], dim=-1)


def laguerre(N: int, y: Tensor) -> Tensor:
    """Laguerre polynomials L_0..L_{N-1} at y (..., M) by the three-term recurrence; returns (..., M, N)."""
    values = [torch.ones_like(y), 1 - y]
    for k in range(1, N - 1):
        values.append(((2 * k + 1 - y) * values[k] - k * values[k - 1]) / (k + 1))
    return torch.stack(values[:N], dim=-1)


def hippo_basis(kind: str, N: int, points: Tensor) -> Tensor:
    """The reconstruction functions g_n of a family at ``points`` (their meaning per kind: module doc).

    Args:
        points: (M,) positions: s in [0, 1] for legs / legt / fout, a lag y >= 0 for lagt.

    Returns:
        G: (M, N) with f(points) ≈ G @ h.
    """
    _check_kind_and_size(kind, N)
    check_tensor("points", points, ndim=1)
    if kind in ("legs", "legt"):
        root = torch.sqrt(2 * torch.arange(N, dtype=points.dtype, device=points.device) + 1)
        return legendre(N, 2 * points - 1) * root
    if kind == "lagt":
        return laguerre(N, points)
    columns = [torch.ones_like(points)]
    for idx in range(1, N):
        freq = 2 * math.pi * ((idx + 1) // 2)
        trig = torch.cos if idx % 2 == 1 else torch.sin
        columns.append(math.sqrt(2.0) * trig(freq * points))
    return torch.stack(columns, dim=-1)


def hippo_online(kind: str, f: Tensor, N: int, dt: float, method: str = "bilinear",
                 theta: float = 1.0) -> Tensor:
    """Feed samples f_k = f(k·dt) through the discretised HiPPO SSM and return every state.

    LTI families are discretised once (``method`` of :mod:`.discretize`). LegS is time-varying: its step from
    t_k = k·dt to t_{k+1} uses the rule with Δ/t replaced by 1/(k + ½) (bilinear) or 1/(k + 1) (Euler), which
    does not depend on dt, and starts from h(0) = f_0 e_0 (the projection of the constant f(0)).

    Args:
        f: (L,) samples (float64 recommended).
        N: state size; dt: sample spacing > 0.
        method: ``"bilinear"``, ``"euler"`` or ``"zoh"`` (not for LegS).

    Returns:
        states: (L, N), row k the state after seeing f_0..f_k.
    """
    _check_kind_and_size(kind, N)
    check_tensor("f", f, ndim=1)
    if f.shape[0] == 0:
        raise ShapeError("f: expected at least one sample, got L = 0")
    if dt <= 0:
        raise ConfigError(f"dt: expected a sample spacing > 0, got {dt}")
    A, B = hippo_matrices(kind, N, theta=theta, dtype=f.dtype, device=f.device)
    states = []
    if kind == "legs":
        if method not in ("bilinear", "euler"):
            raise ConfigError(f"method: LegS supports 'bilinear' or 'euler', got {method!r}")
        eye = torch.eye(N, dtype=f.dtype, device=f.device)
        h = torch.zeros(N, dtype=f.dtype, device=f.device)
        h[0] = f[0]
        states.append(h)
        for k in range(f.shape[0] - 1):
            if method == "euler":
                h = h + (A @ h + B * f[k + 1]) / (k + 1)
            else:
                alpha = 1.0 / (2 * k + 1)
                rhs = h + alpha * (A @ h) + alpha * B * (f[k] + f[k + 1])
                h = torch.linalg.solve_triangular(eye - alpha * A, rhs[:, None], upper=False)[:, 0]
            states.append(h)
        return torch.stack(states)
    A_bar, B_bar = discretize_dense(A, B, dt, method)
    h = torch.zeros(N, dtype=f.dtype, device=f.device)
    for k in range(f.shape[0]):
        h = A_bar @ h + B_bar * f[k]
        states.append(h)
    return torch.stack(states)


def legs_nplr(N: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normal-plus-low-rank form of the LegS matrix: A = V diag(Λ) V* − P Pᵀ (S4 paper, Theorem 1).

    Adding P Pᵀ with P_n = √(n + ½) turns A into −½ I plus a skew-symmetric matrix, which is normal, so a
    unitary V diagonalises it with eigenvalues Λ = −½ + iω. (The eigenvectors come from ``eigh`` of the
    Hermitian matrix −i·skew, so V is unitary to rounding even where eigenvalues are close.)

    Args:
        N: state size.
        dtype: real dtype of the result (complex parts use the matching complex dtype).

    Returns:
        Lambda: (N,) complex; V: (N, N) complex unitary; P: (N,) real; B: (N,) real (the LegS B).
    """
    _check_kind_and_size("legs", N)
    A, B = hippo_matrices("legs", N, dtype=torch.float64)
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    normal = A + P[:, None] * P[None, :]
    skew = normal + 0.5 * torch.eye(N, dtype=torch.float64)
    omega, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    Lambda = torch.complex(torch.full_like(omega, -0.5), omega)
    ctype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return Lambda.to(ctype), V.to(ctype), P.to(dtype), B.to(dtype)


def reconstruction_error(kind: str, N: int, length: int = 2000, method: str = "bilinear") -> float:
    """Relative L2 error of the online reconstruction of a smooth test signal (float64).

    The signal is :func:`smooth_signal`, sampled ``length`` times. LegS sees it on [0, 1] and reconstructs all
    of it; LegT and FouT (θ = 1) see [0, 2] and reconstruct the window [1, 2]; LagT sees [0, 2] on a clock
    running 10 times faster (time scale τ = 0.1, so its weight e^{-lag/τ} spans about the last 0.2) and
    reconstructs the lags [0, 2τ]. The error is measured at the sample points of the reconstructed range.
    """
    span = 1.0 if kind == "legs" else 2.0
    x = torch.linspace(0.0, span, length, dtype=torch.float64)
    f = smooth_signal(x)
    dt = span / (length - 1)
    if kind == "lagt":
        tau = 0.1
        state = hippo_online(kind, f, N, dt / tau, method=method)[-1]
        lags = (span - x) / tau
        keep = lags <= 2.0
        points, target = lags[keep], f[keep]
    else:
        state = hippo_online(kind, f, N, dt, method=method)[-1]
        if kind == "legs":
            points, target = x / span, f
        else:
            keep = x >= span - 1.0
            points, target = x[keep] - (span - 1.0), f[keep]
    approx = hippo_basis(kind, N, points) @ state
    return float(torch.linalg.vector_norm(approx - target) / torch.linalg.vector_norm(target))


def smooth_signal(x: Tensor) -> Tensor:
    """The smooth signal used by :func:`reconstruction_error` and the figures: a sum of three sinusoids."""
    return (torch.sin(2 * math.pi * 2 * x) + 0.5 * torch.sin(2 * math.pi * 5 * x + 1)
            + 0.3 * torch.cos(2 * math.pi * 3 * x))

