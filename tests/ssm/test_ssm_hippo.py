"""HiPPO matrices, bases, online reconstruction and the normal-plus-low-rank form of LegS."""

import math

import numpy as np
import pytest
import torch

from mambakit.errors import ConfigError, ShapeError
from mambakit.ssm.hippo import (
    KINDS,
    hippo_basis,
    hippo_matrices,
    hippo_online,
    legs_nplr,
    reconstruction_error,
)

F64 = torch.float64


def test_legs_entries():
    A, B = hippo_matrices("legs", 6)
    for n in range(6):
        assert B[n] == pytest.approx(math.sqrt(2 * n + 1))
        for k in range(6):
            expected = -math.sqrt((2 * n + 1) * (2 * k + 1)) if n > k else (-(n + 1) if n == k else 0.0)
            assert A[n, k] == pytest.approx(expected)


@pytest.mark.parametrize("kind", KINDS)
def test_constant_signal_is_a_fixed_point(kind):
    # A constant f = 1 has the coefficients e_0 in every family (the first basis function is the constant 1),
    # and they must not move: A e_0 + B = 0.
    A, B = hippo_matrices(kind, 9)
    torch.testing.assert_close(A[:, 0] + B, torch.zeros(9, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["legs", "legt", "fout"])
def test_bases_are_orthonormal_on_their_window(kind):
    nodes, weights = np.polynomial.legendre.leggauss(80)
    s = torch.from_numpy((nodes + 1) / 2)
    G = hippo_basis(kind, 8, s)
    gram = G.T @ (G * torch.from_numpy(weights / 2)[:, None])
    torch.testing.assert_close(gram, torch.eye(8, dtype=F64), rtol=0, atol=1e-10)


def test_laguerre_basis_is_orthonormal_under_exponential_weight():
    nodes, weights = np.polynomial.laguerre.laggauss(40)
    G = hippo_basis("lagt", 8, torch.from_numpy(nodes))
    gram = G.T @ (G * torch.from_numpy(weights)[:, None])
    torch.testing.assert_close(gram, torch.eye(8, dtype=F64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_reconstruction_error_falls_as_N_grows(kind):
    errors = [reconstruction_error(kind, n, length=1000) for n in (4, 16, 64)]
    assert errors[1] < 0.6 * errors[0]
    assert errors[2] <= errors[1] * 1.001


def test_legs_at_64_is_within_the_stated_bound():
    """LegS, N = 64, 2000 samples of the sum of sines on [0, 1]: relative L2 error < 1e-4.

    Why 1e-4: with N = 64 the Legendre truncation error of this signal (bandwidth 5 cycles on the window) is
    far below 1e-8 (Legendre coefficients of sin(ωx) fall like (eω/4n)^n), so what remains is the bilinear
    (trapezoid) rule's O(Δ²) error. The checks below confirm both: N = 32 and N = 64 give the same error
    (truncation is gone), and halving Δ divides it by about 4 (second order). With Δ = 1/1999 the measured
    error is about 4e-5, so 1e-4 leaves a factor 2.5 of margin.
    """
    err_64 = reconstruction_error("legs", 64, length=2000)
    assert err_64 < 1e-4
    assert reconstruction_error("legs", 32, length=2000) == pytest.approx(err_64, rel=0.05)
    ratio = reconstruction_error("legs", 64, length=1000) / err_64
    assert 3.5 < ratio < 4.5


def test_legs_online_states_follow_a_polynomial_exactly():
    # f(x) = x² has exactly three Legendre terms; the bilinear LegS step integrates it with error O(Δ²) only
    # in the first coefficients, and the reconstruction at every point is close to x².
    x = torch.linspace(0, 1, 801, dtype=F64)
    h = hippo_online("legs", x ** 2, 8, dt=1 / 800)[-1]
    torch.testing.assert_close(hippo_basis("legs", 8, x) @ h, x ** 2, rtol=0, atol=2e-5)
    assert float(h[3:].abs().max()) < 1e-5


@pytest.mark.parametrize("N", [8, 64])
def test_legs_nplr_structure(N):
    Lambda, V, P, B = legs_nplr(N)
    A, B_ref = hippo_matrices("legs", N)
    torch.testing.assert_close(B, B_ref)
    eye = torch.eye(N, dtype=torch.complex128)
    torch.testing.assert_close(V.conj().T @ V, eye, rtol=0, atol=1e-10)              # V unitary
    torch.testing.assert_close(Lambda.real, torch.full((N,), -0.5, dtype=F64))       # Re Λ = −½
    normal = A + P[:, None] * P[None, :]
    torch.testing.assert_close(normal @ normal.T, normal.T @ normal, rtol=0, atol=1e-9)  # A + PPᵀ is normal
    rebuilt = V @ torch.diag(Lambda) @ V.conj().T - (P[:, None] * P[None, :]).to(torch.complex128)
    torch.testing.assert_close(rebuilt, A.to(torch.complex128), rtol=0, atol=1e-9 * N)
    # Eigenvalues of a real skew-symmetric part come in conjugate pairs.
    torch.testing.assert_close(Lambda.imag.sort().values, (-Lambda.imag).sort().values, rtol=0, atol=1e-9 * N)


def test_bad_input():
    with pytest.raises(ConfigError, match="kind"):
        hippo_matrices("legx", 4)
    with pytest.raises(ShapeError, match="N: expected a state size >= 1"):
        hippo_matrices("legs", 0)
    with pytest.raises(ConfigError, match="theta"):
        hippo_matrices("legt", 4, theta=0.0)
    with pytest.raises(ConfigError, match="dt"):
        hippo_online("legt", torch.ones(5, dtype=F64), 4, dt=0.0)
    with pytest.raises(ShapeError, match="f: expected at least one sample"):
        hippo_online("legs", torch.ones(0, dtype=F64), 4, dt=0.1)
