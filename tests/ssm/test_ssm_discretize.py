"""Discretisation: dense and diagonal, against direct formulas, matrix_exp and scipy.signal.cont2discrete."""

import pytest
import torch

from mambakit.errors import ConfigError, MambakitError, ShapeError
from mambakit.ssm.discretize import discretize_dense, discretize_diag

F64 = torch.float64


def random_stable(n: int, channels: int = 3) -> torch.Tensor:
    """Dense (channels, n, n) matrices with eigenvalues in the left half-plane."""
    M = torch.randn(channels, n, n, dtype=F64) / n ** 0.5
    return M - 1.5 * torch.eye(n, dtype=F64)


def test_dense_formulas():
    A, B = random_stable(5), torch.randn(3, 5, dtype=F64)
    dt = torch.tensor([0.01, 0.1, 0.7], dtype=F64)
    eye = torch.eye(5, dtype=F64)
    for c in range(3):
        dA, dB = dt[c] * A[c], dt[c] * B[c]
        Ae, Be = discretize_dense(A[c], B[c], dt[c], "euler")
        torch.testing.assert_close(Ae, eye + dA)
        torch.testing.assert_close(Be, dB)
        Ab, Bb = discretize_dense(A[c], B[c], dt[c], "bilinear")
        inv = torch.linalg.inv(eye - dA / 2)
        torch.testing.assert_close(Ab, inv @ (eye + dA / 2))
        torch.testing.assert_close(Bb, inv @ dB)
        Az, Bz = discretize_dense(A[c], B[c], dt[c], "zoh")
        expo = torch.linalg.matrix_exp(dA)
        torch.testing.assert_close(Az, expo)
        # A is invertible here, so the textbook A⁻¹(exp(ΔA) − I)B applies.
        torch.testing.assert_close(Bz, torch.linalg.solve(A[c], (expo - eye) @ B[c]))


def test_dense_is_batched_over_channels():
    A, B = random_stable(4, channels=6), torch.randn(6, 4, dtype=F64)
    dt = torch.rand(6, dtype=F64) + 0.05
    for method in ("euler", "bilinear", "zoh"):
        Ab, Bb = discretize_dense(A, B, dt, method)
        for c in range(6):
            a1, b1 = discretize_dense(A[c], B[c], float(dt[c]), method)
            torch.testing.assert_close(Ab[c], a1)
            torch.testing.assert_close(Bb[c], b1)


def test_zoh_handles_a_singular_matrix():
    # An integrator (A = 0) has B̄ = ΔB exactly; the block-exponential form needs no inverse of A.
    A, B = torch.zeros(3, 3, dtype=F64), torch.randn(3, dtype=F64)
    Ab, Bb = discretize_dense(A, B, 0.3, "zoh")
    torch.testing.assert_close(Ab, torch.eye(3, dtype=F64))
    torch.testing.assert_close(Bb, 0.3 * B)


def test_against_scipy_cont2discrete():
    signal = pytest.importorskip("scipy.signal")
    A, B = random_stable(4, channels=1)[0], torch.randn(4, dtype=F64)
    C, D = torch.randn(1, 4, dtype=F64).numpy(), torch.zeros(1, 1, dtype=F64).numpy()
    dt = 0.23
    for method in ("zoh", "bilinear", "euler"):
        Ad, Bd, *_ = signal.cont2discrete((A.numpy(), B[:, None].numpy(), C, D), dt, method=method)
        Ab, Bb = discretize_dense(A, B, dt, method)
        torch.testing.assert_close(Ab, torch.from_numpy(Ad), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(Bb, torch.from_numpy(Bd[:, 0]), rtol=1e-10, atol=1e-12)


def test_diagonal_matches_dense_for_complex_A():
    A = torch.complex(-torch.rand(2, 5, dtype=F64) - 0.1, 3 * torch.randn(2, 5, dtype=F64))
    B = torch.randn(2, 5, dtype=torch.complex128)
    dt = torch.tensor([0.05, 0.4], dtype=F64)
    for method in ("euler", "bilinear", "zoh"):
        Ab, Bb = discretize_diag(A, B, dt, method)
        Ad, Bd = discretize_dense(torch.diag_embed(A), B, dt, method)
        torch.testing.assert_close(torch.diag_embed(Ab), Ad)
        torch.testing.assert_close(Bb, Bd)


def test_diagonal_zoh_closed_form_and_zero_eigenvalue():
    A = torch.tensor([-2.0, -0.5 + 3j, 0.0], dtype=torch.complex128)
    B = torch.ones(3, dtype=torch.complex128)
    Ab, Bb = discretize_diag(A, B, 0.2, "zoh")
    torch.testing.assert_close(Ab, torch.exp(0.2 * A))
    torch.testing.assert_close(Bb[:2], (torch.exp(0.2 * A[:2]) - 1) / A[:2])
    torch.testing.assert_close(Bb[2], torch.tensor(0.2, dtype=torch.complex128))  # the integrator's limit


@pytest.mark.parametrize("bad_dt", [0.0, -0.1, float("nan")])
def test_rejects_non_positive_step(bad_dt):
    A, B = random_stable(3, channels=1)[0], torch.randn(3, dtype=F64)
    with pytest.raises(ConfigError, match="dt"):
        discretize_dense(A, B, bad_dt)
    with pytest.raises(ConfigError, match="dt"):
        discretize_diag(torch.full((3,), -1.0, dtype=F64), B, torch.tensor([0.1, bad_dt, 0.2], dtype=F64)[1])


def test_rejects_bad_shapes_and_method():
    B = torch.randn(3, dtype=F64)
    with pytest.raises(ShapeError, match="A: expected a square"):
        discretize_dense(torch.randn(3, 4, dtype=F64), B, 0.1)
    with pytest.raises(ShapeError, match="B: expected shape"):
        discretize_dense(random_stable(3, 1)[0], torch.randn(4, dtype=F64), 0.1)
    with pytest.raises(ShapeError, match="N must be at least 1"):
        discretize_dense(torch.zeros(0, 0, dtype=F64), torch.zeros(0, dtype=F64), 0.1)
    with pytest.raises(ShapeError, match="A: expected the diagonal"):
        discretize_diag(torch.zeros(2, 0, dtype=F64), torch.zeros(2, 0, dtype=F64), 0.1)
    with pytest.raises(ShapeError, match="B"):
        discretize_diag(-torch.ones(3, dtype=F64), torch.ones(4, dtype=F64), 0.1)
    with pytest.raises(ShapeError, match="dt"):
        discretize_diag(-torch.ones(2, 3, dtype=F64), torch.ones(2, 3, dtype=F64), torch.ones(5, dtype=F64))
    with pytest.raises(ConfigError, match="method"):
        discretize_diag(-torch.ones(3, dtype=F64), B, 0.1, "rk4")
    with pytest.raises(MambakitError, match="A"):
        discretize_diag(torch.ones(3, dtype=torch.int64), B, 0.1)
