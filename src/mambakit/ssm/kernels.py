"""Convolution kernels of a discrete linear time-invariant SSM, and the causal FFT convolution applying them.

Unrolling h_k = Ā h_{k-1} + B̄ x_k, y_k = C h_k from h_{-1} = 0 gives y = K * x with the kernel
K = (C B̄, C Ā B̄, C Ā² B̄, ..., C Ā^{L-1} B̄). Three ways to build it:

* :func:`kernel_powers`      dense Ā, one matrix-vector product per lag: the plain reference.
* :func:`kernel_vandermonde` diagonal Ā: K_l = Σ_n C_n B̄_n Ā_n^l, a Vandermonde matrix product (S4D).
* :func:`kernel_dplr`        A = diag(Λ) − P Q* (diagonal plus low rank), bilinear discretisation: the
                             kernel's truncated generating function at the L-th roots of unity from Cauchy
                             sums and the Woodbury identity, then one inverse FFT (S4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_tensor
from ..errors import ShapeError
from .discretize import check_step


def _check_length(L: int) -> None:
    if not isinstance(L, int) or isinstance(L, bool) or L < 1:
        raise ShapeError(f"L: expected a kernel length >= 1, got {L!r}")


def kernel_powers(A_bar: Tensor, B_bar: Tensor, C: Tensor, L: int) -> Tensor:
    """Reference kernel of a dense discrete SSM, by repeated multiplication with Ā.

    Args:
        A_bar: (*channels, N, N); B_bar: (*channels, N); C: (*channels, N) (all broadcastable).
        L: kernel length.

    Returns:
        K: (*channels, L) with K_l = C · Ā^l B̄ (no conjugation of C).
    """
    _check_length(L)
    for name, t in (("A_bar", A_bar), ("B_bar", B_bar), ("C", C)):
        check_tensor(name, t, complex_ok=True)
    if A_bar.dim() < 2 or A_bar.shape[-1] != A_bar.shape[-2]:
        raise ShapeError(f"A_bar: expected a square matrix (..., N, N), got shape {tuple(A_bar.shape)}")
    n = A_bar.shape[-1]
    for name, t in (("B_bar", B_bar), ("C", C)):
        if t.shape[-1:] != (n,):
            raise ShapeError(f"{name}: expected shape (..., {n}) to match A_bar, got {tuple(t.shape)}")
    v = B_bar
    terms = []
    for _ in range(L):
        terms.append((C * v).sum(-1))
        v = (A_bar @ v.unsqueeze(-1)).squeeze(-1)
    return torch.stack(terms, dim=-1)


def krylov(A_bar: Tensor, B_bar: Tensor, L: int) -> Tensor:
    """The vectors Ā^l B̄ for l < L, by doubling: [V, Ā^m V] with Ā^m squared each round (log₂ L products).

    Args:
        A_bar: (*channels, N, N); B_bar: (*channels, N); L: how many vectors.

    Returns:
        (*channels, N, L), column l being Ā^l B̄.
    """
    _check_length(L)
    vectors = B_bar.unsqueeze(-1)
    power = A_bar
    while vectors.shape[-1] < L:
        vectors = torch.cat([vectors, power @ vectors], dim=-1)
        power = power @ power
    return vectors[..., :L]


def _wide_powers(base: Tensor, exps: Tensor) -> Tensor:
    """base^exps for base (..., N) in double precision and exps (E,) >= 0: returns (..., N, E)."""
    if not base.is_complex():
        return torch.pow(base.unsqueeze(-1), exps)
    # exp(e · log base), with log 0 = −inf patched: 0^0 = 1 and 0^e = 0 for e > 0.
    zero = base == 0
    log_base = torch.log(torch.where(zero, torch.ones_like(base), base))
    powers = torch.exp(log_base.unsqueeze(-1) * exps)
    return torch.where(zero.unsqueeze(-1) & (exps > 0), torch.zeros_like(powers), powers)


def diag_powers(A_bar: Tensor, start: int, count: int) -> Tensor:
    """Ā_n^l for l in [start, start + count), accurate to a few ulps of the dtype of ``A_bar``, for any count.

    Computing Ā^l as exp(l · log Ā) in single precision would lose about l · 6e-8 of phase (1e-3 by l ~ 10⁴).
    Instead l = q·b + r with b ≈ √count: the √count factors Ā^r and Ā^(start + q·b) are computed in double
    precision and rounded, and each power is one product of two of them, so the big (..., N, count) tensor
    stays in the input precision. |Ā| < 1 means nothing can overflow.

    Args:
        A_bar: (..., N) real or complex.

    Returns:
        (..., N, count) in the dtype of ``A_bar``.
    """
    wide = torch.complex128 if A_bar.is_complex() else torch.float64
    base = A_bar.to(wide)
    block = max(1, math.isqrt(max(count - 1, 0)) + 1)
    n_blocks = -(-count // block)
    exps_low = torch.arange(block, device=A_bar.device, dtype=torch.float64)
    exps_high = start + block * torch.arange(n_blocks, device=A_bar.device, dtype=torch.float64)
    low = _wide_powers(base, exps_low).to(A_bar.dtype)                  # (..., N, block): Ā^r
    high = _wide_powers(base, exps_high).to(A_bar.dtype)                # (..., N, n_blocks): Ā^(start + q·b)
    powers = (high.unsqueeze(-1) * low.unsqueeze(-2)).flatten(-2)
    return powers[..., :count]


def kernel_vandermonde(A_bar: Tensor, B_bar: Tensor, C: Tensor, L: int) -> Tensor:
    """Kernel of a diagonal discrete SSM: K_l = Σ_n C_n B̄_n Ā_n^l.

    Args:
        A_bar: (*channels, N); B_bar, C: (*channels, N) (broadcastable with A_bar).
        L: kernel length.

    Returns:
        K: (*channels, L), complex when any input is.
    """
    _check_length(L)
    for name, t in (("A_bar", A_bar), ("B_bar", B_bar), ("C", C)):
        check_tensor(name, t, complex_ok=True)
        if t.dim() < 1 or t.shape[-1] != A_bar.shape[-1]:
            raise ShapeError(f"{name}: expected shape (..., {A_bar.shape[-1]}) to match A_bar, "
                             f"got {tuple(t.shape)}")
    if A_bar.shape[-1] == 0:
        raise ShapeError("A_bar: the state size N must be at least 1, got N = 0")
    weights = C * B_bar
    return torch.einsum("...n,...nl->...l", weights.to(torch.promote_types(weights.dtype, A_bar.dtype)),
                        diag_powers(A_bar, 0, L).to(torch.promote_types(weights.dtype, A_bar.dtype)))


def dplr_dense(Lambda: Tensor, P: Tensor, Q: Tensor) -> Tensor:
    """The dense matrix diag(Λ) − Σ_r P_r Q_r* for Λ (..., N) and P, Q (..., r, N); returns (..., N, N)."""
    return torch.diag_embed(Lambda) - P.transpose(-1, -2) @ Q.conj()


def kernel_dplr(Lambda: Tensor, P: Tensor, Q: Tensor, B: Tensor, C: Tensor, dt: Tensor | float,
                L: int) -> Tensor:
    """S4 kernel of the bilinear discretisation of A = diag(Λ) − P Q*, via Cauchy sums at roots of unity.

    With ζ ranging over the L-th roots of unity, Σ_{l<L} K_l ζ^l = C̃ (I − ζĀ)⁻¹ B̄ where C̃ = C (I − Ā^L).
    For the bilinear rule (I − ζĀ)⁻¹ B̄ = 2 [D_ζ + (1+ζ) P Q*]⁻¹ B with the diagonal
    D_ζ = (2/Δ)(1 − ζ) − (1 + ζ) Λ, and the Woodbury identity turns that inverse into Cauchy sums
    Σ_n u_n v_n / D_ζ,n. This form has no division by 1 + ζ, so ζ = −1 needs no special case.
    The inverse FFT of the L values gives K.

    Args:
        Lambda: (*channels, N) complex diagonal, Re < 0 for a stable kernel.
        P, Q: (*channels, r, N) low-rank factors (or (*channels, N) for rank 1).
        B, C: (*channels, N) input and output vectors (C is applied without conjugation).
        dt: a scalar or (*channels,) step sizes > 0.
        L: kernel length.

    Returns:
        K: (*channels, L) complex, equal to :func:`kernel_powers` of the bilinear-discretised dense SSM.
    """
    _check_length(L)
    for name, t in (("Lambda", Lambda), ("P", P), ("Q", Q), ("B", B), ("C", C)):
        check_tensor(name, t, complex_ok=True)
    n = Lambda.shape[-1]
    if n == 0:
        raise ShapeError("Lambda: the state size N must be at least 1, got N = 0")
    if P.dim() == Lambda.dim():
        P = P.unsqueeze(-2)
    if Q.dim() == Lambda.dim():
        Q = Q.unsqueeze(-2)
    for name, t in (("P", P), ("Q", Q), ("B", B), ("C", C)):
        if t.shape[-1] != n:
            raise ShapeError(f"{name}: expected last size N = {n} to match Lambda, "
                             f"got shape {tuple(t.shape)}")
    if P.shape[-2] != Q.shape[-2]:
        raise ShapeError(f"Q: expected rank {P.shape[-2]} to match P, got shape {tuple(Q.shape)}")
    batch = torch.broadcast_shapes(Lambda.shape[:-1], P.shape[:-2], Q.shape[:-2], B.shape[:-1], C.shape[:-1])
    dt = check_step(dt, tuple(batch), Lambda)
    ctype = torch.promote_types(torch.complex64, torch.promote_types(Lambda.dtype, P.dtype))
    ctype = torch.promote_types(ctype, torch.promote_types(Q.dtype, torch.promote_types(B.dtype, C.dtype)))
    Lambda, P, Q, B, C = (t.to(ctype) for t in (Lambda, P, Q, B, C))
    dt = dt.to(Lambda.real.dtype)
    rank = P.shape[-2]

    # C̃ = C (I − Ā^L), with Ā the dense bilinear discretisation (Ā^L by repeated squaring).
    A = dplr_dense(Lambda, P, Q)
    eye = torch.eye(n, dtype=ctype, device=A.device)
    half = (dt[..., None, None] / 2) * A
    A_bar = torch.linalg.solve(eye - half, eye + half)
    A_bar_L = torch.linalg.matrix_power(A_bar, L)
    C_tilde = C - (A_bar_L.transpose(-1, -2) @ C.unsqueeze(-1)).squeeze(-1)

    k = torch.arange(L, device=A.device, dtype=Lambda.real.dtype)
    zeta = torch.polar(torch.ones_like(k), -2 * math.pi * k / L).to(ctype)          # (L,)
    denom = (2 / dt)[..., None, None] * (1 - zeta)[:, None] - (1 + zeta)[:, None] * Lambda.unsqueeze(-2)
    r = 1 / denom                                                                     # (*, L, N)
    k00 = torch.einsum("...n,...ln->...l", C_tilde * B, r)
    k01 = torch.einsum("...n,...sn,...ln->...ls", C_tilde, P, r)                      # (*, L, r)
    k10 = torch.einsum("...rn,...n,...ln->...lr", Q.conj(), B, r)                     # (*, L, r)
    k11 = torch.einsum("...rn,...sn,...ln->...lrs", Q.conj(), P, r)                   # (*, L, r, r)
    scale = (1 + zeta)[:, None]                                                       # (L, 1)
    eye_r = torch.eye(rank, dtype=ctype, device=A.device)
    inner = torch.linalg.solve(eye_r + scale[..., None] * k11, k10.unsqueeze(-1)).squeeze(-1)
    spectrum = 2 * (k00 - (1 + zeta) * (k01 * inner).sum(-1))
    return torch.fft.ifft(spectrum, n=L, dim=-1)


def causal_fft_conv(u: Tensor, K: Tensor) -> Tensor:
    """Causal convolution y_t = Σ_{j<=t} K_j u_{t-j} along the last dimension, by FFT.

    Both signals are zero-padded to length 2L so that the circular convolution the FFT computes has no
    wrap-around: the output at t never sees u from the end of the sequence.

    Args:
        u: (..., L) signal; K: (..., L) kernel (broadcastable with u). Real or complex.

    Returns:
        y: (..., L), real when both inputs are real.
    """
    check_tensor("u", u, complex_ok=True)
    check_tensor("K", K, complex_ok=True)
    L = u.shape[-1]
    if L == 0:
        raise ShapeError(f"u: expected a sequence length L >= 1, got shape {tuple(u.shape)}")
    if K.shape[-1] != L:
        raise ShapeError(f"K: expected length {L} to match u, got shape {tuple(K.shape)}")
    n = 2 * L
    if u.is_complex() or K.is_complex():
        y = torch.fft.ifft(torch.fft.fft(u, n=n) * torch.fft.fft(K, n=n), n=n)
    else:
        y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(K, n=n), n=n)
    return y[..., :L]
