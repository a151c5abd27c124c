"""SSM kernels (powers, Vandermonde, Cauchy + Woodbury) and the causal FFT convolution."""

import pytest
import torch

from mambakit.errors import ShapeError
from mambakit.ssm.discretize import discretize_dense, discretize_diag
from mambakit.ssm.kernels import (
    causal_fft_conv,
    diag_powers,
    dplr_dense,
    kernel_dplr,
    kernel_powers,
    kernel_vandermonde,
    krylov,
)

F64, C128 = torch.float64, torch.complex128


def random_dplr(channels: int, n: int, rank: int):
    real = -torch.rand(channels, n, dtype=F64) - 0.05
    Lambda = torch.complex(real, 4 * torch.randn(channels, n, dtype=F64))
    P = 0.5 * torch.randn(channels, rank, n, dtype=C128)
    Q = 0.5 * torch.randn(channels, rank, n, dtype=C128)
    return Lambda, P, Q, torch.randn(channels, n, dtype=C128), torch.randn(channels, n, dtype=C128)


def test_powers_matches_explicit_matrix_powers():
    A = torch.randn(2, 4, 4, dtype=F64) * 0.4
    B, C = torch.randn(2, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    K = kernel_powers(A, B, C, 6)
    for c in range(2):
        for l in range(6):
            expected = C[c] @ torch.linalg.matrix_power(A[c], l) @ B[c]
            torch.testing.assert_close(K[c, l], expected)


def test_vandermonde_matches_powers():
    A = torch.complex(-torch.rand(3, 5, dtype=F64), torch.randn(3, 5, dtype=F64))
    A_bar, B_bar = discretize_diag(A, torch.randn(3, 5, dtype=C128), torch.tensor([0.1, 0.5, 1.0], dtype=F64))
    C = torch.randn(3, 5, dtype=C128)
    torch.testing.assert_close(kernel_vandermonde(A_bar, B_bar, C, 40),
                               kernel_powers(torch.diag_embed(A_bar), B_bar, C, 40), rtol=1e-12, atol=1e-12)


def test_vandermonde_real_and_zero_eigenvalue():
    A_bar = torch.tensor([[0.0, 0.5, -0.9]], dtype=F64)
    B_bar, C = torch.ones(1, 3, dtype=F64), torch.ones(1, 3, dtype=F64)
    K = kernel_vandermonde(A_bar, B_bar, C, 4)
    expected = torch.tensor([[3.0, 0.5 - 0.9, 0.25 + 0.81, 0.125 - 0.729]], dtype=F64)
    torch.testing.assert_close(K, expected)
    Kc = kernel_vandermonde(A_bar.to(C128), B_bar.to(C128), C.to(C128), 4)
    torch.testing.assert_close(Kc.real, expected)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("length", [1, 2, 17, 64])
def test_dplr_matches_dense_powers(rank, length):
    Lambda, P, Q, B, C = random_dplr(channels=3, n=6, rank=rank)
    dt = torch.tensor([0.02, 0.2, 1.0], dtype=F64)
    K = kernel_dplr(Lambda, P, Q, B, C, dt, length)
    A_bar, B_bar = discretize_dense(dplr_dense(Lambda, P, Q), B, dt, "bilinear")
    expected = kernel_powers(A_bar, B_bar, C, length)
    torch.testing.assert_close(K, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))


def test_dplr_float32_close_to_float64():
    Lambda, P, Q, B, C = random_dplr(channels=2, n=8, rank=1)
    K64 = kernel_dplr(Lambda, P, Q, B, C, 0.1, 256)
    K32 = kernel_dplr(*(t.to(torch.complex64) for t in (Lambda, P, Q, B, C)), 0.1, 256)
    assert K32.dtype == torch.complex64
    assert float((K32.to(C128) - K64).norm() / K64.norm()) < 1e-4


def test_krylov_columns_are_powers_times_b():
    A, B = torch.randn(2, 3, 3, dtype=F64) * 0.5, torch.randn(2, 3, dtype=F64)
    V = krylov(A, B, 11)
    for l in range(11):
        torch.testing.assert_close(V[..., l], (torch.linalg.matrix_power(A, l) @ B[..., None])[..., 0])


@pytest.mark.parametrize("length", [1, 5, 64, 101])
def test_fft_conv_matches_direct_causal_sum(length):
    u, K = torch.randn(2, 3, length, dtype=F64), torch.randn(3, length, dtype=F64)
    direct = torch.zeros(2, 3, length, dtype=F64)
    for t in range(length):
        for j in range(t + 1):
            direct[..., t] += K[:, j] * u[..., t - j]
    torch.testing.assert_close(causal_fft_conv(u, K), direct, rtol=1e-10, atol=1e-10)
    uc, Kc = u.to(C128) * (1 + 1j), K.to(C128)
    torch.testing.assert_close(causal_fft_conv(uc, Kc), direct * (1 + 1j), rtol=1e-10, atol=1e-10)


def test_fft_conv_has_no_wraparound():
    # A large value at the end of u must not leak into the start of y (it would with circular convolution).
    u = torch.zeros(16, dtype=F64)
    u[-1] = 1e6
    y = causal_fft_conv(u, torch.ones(16, dtype=F64))
    assert float(y[:-1].abs().max()) < 1e-6 and abs(float(y[-1]) - 1e6) < 1e-3


def test_bad_input():
    A = torch.randn(3, 3, dtype=F64)
    with pytest.raises(ShapeError, match="L: expected a kernel length >= 1"):
        kernel_powers(A, torch.ones(3, dtype=F64), torch.ones(3, dtype=F64), 0)
    with pytest.raises(ShapeError, match="C: expected shape"):
        kernel_powers(A, torch.ones(3, dtype=F64), torch.ones(4, dtype=F64), 5)
    with pytest.raises(ShapeError, match="A_bar: expected a square"):
        kernel_powers(torch.ones(3, 4, dtype=F64), torch.ones(3, dtype=F64), torch.ones(3, dtype=F64), 5)
    with pytest.raises(ShapeError, match="B_bar"):
        kernel_vandermonde(torch.ones(2, 3, dtype=F64), torch.ones(2, 4, dtype=F64),
                           torch.ones(2, 3, dtype=F64), 5)
    Lambda, P, Q, B, C = random_dplr(1, 4, 1)
    with pytest.raises(ShapeError, match="Q: expected rank"):
        kernel_dplr(Lambda, P, torch.ones(1, 2, 4, dtype=C128), B, C, 0.1, 8)
    with pytest.raises(ShapeError, match="C: expected last size"):
        kernel_dplr(Lambda, P, Q, B, torch.ones(1, 5, dtype=C128), 0.1, 8)
    with pytest.raises(ShapeError, match="K: expected length"):
        causal_fft_conv(torch.ones(2, 8), torch.ones(2, 7))
    with pytest.raises(ShapeError, match="u: expected a sequence length"):
        causal_fft_conv(torch.ones(2, 0), torch.ones(2, 0))


def test_single_precision_powers_stay_accurate_for_long_kernels():
    # Ā^l in complex64 for l up to 16 384 with |Ā| ≈ 1 and large phases: within a few ulps of the truth.
    radius = torch.tensor([1 - 1e-5, 0.9999, 0.99], dtype=F64)
    A64 = torch.polar(radius, torch.tensor([0.3, 2.0, 3.1], dtype=F64))
    A32 = A64.to(torch.complex64)
    powers = diag_powers(A32, 0, 16384)
    truth = diag_powers(A32.to(C128), 0, 16384)
    assert powers.dtype == torch.complex64
    # Relative error, except below 1e-30 where single precision underflows (0.99^16384 ≈ 1e-72).
    assert float(((powers.to(C128) - truth).abs() / truth.abs().clamp_min(1e-30)).max()) < 1e-6
    shifted = diag_powers(A32.to(C128), 100, 50)
    torch.testing.assert_close(shifted, truth[:, 100:150], rtol=1e-12, atol=0)
