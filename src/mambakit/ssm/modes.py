"""The three ways to run a diagonal linear time-invariant SSM over a sequence, which must agree.

Every channel d has its own diagonal SSM h_t = Ā_d ⊙ h_{t-1} + B̄_d u_t, y_t = Re(Σ_n C_dn h_tn) (the real part
makes a complex diagonal SSM a real map; for real parameters it changes nothing):

* :func:`diag_ssm_recurrent`   one step at a time (what generation does)
* :func:`diag_ssm_convolution` the kernel by a Vandermonde product, applied by causal FFT convolution
* :func:`diag_ssm_scan`        the associative parallel scan over time (works for time-varying Ā too)

Shapes: u (batch, D, L) real; A_bar, B_bar, C (D, N) real or complex; y (batch, D, L); states (batch, D, N).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_tensor
from ..errors import ShapeError
from .kernels import causal_fft_conv, diag_powers, kernel_vandermonde
from .scan import associative_scan


def _check(A_bar: Tensor, B_bar: Tensor, C: Tensor, u: Tensor) -> None:
    check_tensor("u", u, ndim=3)
    for name, t in (("A_bar", A_bar), ("B_bar", B_bar), ("C", C)):
        check_tensor(name, t, ndim=2, complex_ok=True)
    d, n = A_bar.shape
    if n == 0:
        raise ShapeError("A_bar: the state size N must be at least 1, got N = 0")
    for name, t in (("B_bar", B_bar), ("C", C)):
        if tuple(t.shape) != (d, n):
            raise ShapeError(f"{name}: expected shape ({d}, {n}) to match A_bar, got {tuple(t.shape)}")
    if u.shape[1] != d:
        raise ShapeError(f"u: expected shape (batch, {d}, L) to match A_bar's {d} channels, "
                         f"got {tuple(u.shape)}")
    if u.shape[2] == 0:
        raise ShapeError(f"u: expected a sequence length L >= 1, got shape {tuple(u.shape)}")


def _read_out(C: Tensor, h: Tensor) -> Tensor:
    """y = Re(Σ_n C_dn h_dn) for h (batch, D, N, ...) -> (batch, D, ...)."""
    y = torch.einsum("dn,bdn...->bd...", C.to(torch.promote_types(C.dtype, h.dtype)), h.to(
        torch.promote_types(C.dtype, h.dtype)))
    return y.real if y.is_complex() else y


def diag_ssm_recurrent(A_bar: Tensor, B_bar: Tensor, C: Tensor, u: Tensor,
                       h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference: run the recurrence step by step. Returns (y (batch, D, L), last state (batch, D, N))."""
    _check(A_bar, B_bar, C, u)
    dtype = torch.promote_types(torch.promote_types(A_bar.dtype, B_bar.dtype), u.dtype)
    h = torch.zeros(u.shape[0], *A_bar.shape, dtype=dtype, device=u.device) if h0 is None else h0.to(dtype)
    outputs = []
    for t in range(u.shape[2]):
        h = A_bar * h + B_bar * u[:, :, t, None]
        outputs.append(_read_out(C, h))
    return torch.stack(outputs, dim=-1), h


def diag_ssm_convolution(A_bar: Tensor, B_bar: Tensor, C: Tensor, u: Tensor) -> Tensor:
    """Convolution mode from a zero state: y = K * u, K_l = Re(Σ_n C_n B̄_n Ā_n^l). Returns (batch, D, L)."""
    _check(A_bar, B_bar, C, u)
    K = kernel_vandermonde(A_bar, B_bar, C, u.shape[2])
    K = K.real if K.is_complex() else K
    return causal_fft_conv(u, K.to(u.dtype))


def diag_ssm_final_state(A_bar: Tensor, B_bar: Tensor, u: Tensor) -> Tensor:
    """The state after the whole sequence from a zero state, h_{L-1} = Σ_t Ā^{L-1-t} B̄ u_t (batch, D, N)."""
    check_tensor("u", u, ndim=3)
    powers = diag_powers(A_bar, 0, u.shape[2]).flip(-1)                  # (D, N, L): Ā^{L-1-t}
    dtype = torch.promote_types(torch.promote_types(powers.dtype, B_bar.dtype), u.dtype)
    return torch.einsum("dnl,dn,bdl->bdn", powers.to(dtype), B_bar.to(dtype), u.to(dtype))


def diag_ssm_scan(A_bar: Tensor, B_bar: Tensor, C: Tensor, u: Tensor,
                  h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Scan mode: every state by the associative scan. Returns (y (batch, D, L), last state (batch, D, N))."""
    _check(A_bar, B_bar, C, u)
    inputs = B_bar[None, :, :, None] * u[:, :, None, :]                   # (batch, D, N, L)
    states = associative_scan(A_bar[None, :, :, None], inputs, h0=h0)
    return _read_out(C, states), states[..., -1]


def dense_ssm_recurrent(A_bar: Tensor, B_bar: Tensor, C: Tensor, u: Tensor) -> Tensor:
    """Reference for a dense SSM per channel: A_bar (D, N, N), B_bar and C (D, N), u (batch, D, L) -> y."""
    check_tensor("u", u, ndim=3)
    dtype = torch.promote_types(A_bar.dtype, u.dtype)
    h = torch.zeros(u.shape[0], *B_bar.shape, dtype=dtype, device=u.device)
    outputs = []
    for t in range(u.shape[2]):
        h = torch.einsum("dnm,bdm->bdn", A_bar, h) + B_bar * u[:, :, t, None]
        outputs.append(_read_out(C, h))
    return torch.stack(outputs, dim=-1)


def mode_agreement(dtype: torch.dtype = torch.float32, length: int = 16384, channels: int = 2, N: int = 4,
                   seed: int = 0) -> dict[str, float]:
    """Relative L2 gaps between the three modes (and each against a float64 convolution) on a random system.

    |Ā| = 1 − 10^U(−4, −2) (memories of 100 to 10 000 steps), random phases, Gaussian B̄, C and input.
    Returns {"recurrent-convolution": gap, "recurrent-scan": ..., "convolution-scan": ...,
    "<mode>-truth": ...}.
    """
    gen = torch.Generator().manual_seed(seed)
    ctype = torch.complex128 if dtype == torch.float64 else torch.complex64
    radius = 1 - 10 ** (-2 - 2 * torch.rand(channels, N, generator=gen, dtype=torch.float64))
    A_bar = torch.polar(radius, 3.1 * torch.rand(channels, N, generator=gen, dtype=torch.float64)).to(ctype)
    B_bar = torch.randn(channels, N, generator=gen, dtype=ctype)
    C = torch.randn(channels, N, generator=gen, dtype=ctype)
    u = torch.randn(1, channels, length, generator=gen, dtype=torch.float64).to(dtype)
    wide = [t.to(torch.complex128) for t in (A_bar, B_bar, C)]
    outputs = {
        "recurrent": diag_ssm_recurrent(A_bar, B_bar, C, u)[0],
        "convolution": diag_ssm_convolution(A_bar, B_bar, C, u),
        "scan": diag_ssm_scan(A_bar, B_bar, C, u)[0],
    }
    truth = diag_ssm_convolution(*wide, u.double())

    def gap(x: Tensor, ref: Tensor) -> float:
        return float((x.double() - ref.double()).norm() / ref.double().norm())

    names = list(outputs)
    result = {f"{a}-{b}": gap(outputs[a], outputs[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    result.update({f"{a}-truth": gap(outputs[a], truth) for a in names})
    return result

