"""Recurrence, FFT convolution and parallel scan of a diagonal LTI SSM agree, also for long L and |Ā| ≈ 1."""

import pytest
import torch

from mambakit.errors import ShapeError
from mambakit.ssm.modes import (
    dense_ssm_recurrent,
    diag_ssm_convolution,
    diag_ssm_final_state,
    diag_ssm_recurrent,
    diag_ssm_scan,
)

F64, C128 = torch.float64, torch.complex128


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 distance, computed in double precision (complex kept complex)."""
    wide = C128 if x.is_complex() or ref.is_complex() else F64
    return float((x.to(wide) - ref.to(wide)).norm() / ref.to(wide).norm())


def slow_decay_system(channels: int, n: int, dtype=C128):
    """Ā with |Ā| = 1 − 10^U(−4, −2) (memories of 100 to 10 000 steps) and random phases."""
    radius = 1 - 10 ** torch.empty(channels, n, dtype=F64).uniform_(-4, -2)
    A_bar = torch.polar(radius, torch.rand(channels, n, dtype=F64) * 3.1)
    return A_bar.to(dtype), torch.randn(channels, n, dtype=dtype), torch.randn(channels, n, dtype=dtype)


def test_float64_modes_agree():
    A_bar, B_bar, C = slow_decay_system(3, 6)
    u = torch.randn(2, 3, 2048, dtype=F64)
    y_rec, h_rec = diag_ssm_recurrent(A_bar, B_bar, C, u)
    y_conv = diag_ssm_convolution(A_bar, B_bar, C, u)
    y_scan, h_scan = diag_ssm_scan(A_bar, B_bar, C, u)
    assert rel(y_conv, y_rec) <= 1e-10
    assert rel(y_scan, y_rec) <= 1e-10
    assert rel(y_scan, y_conv) <= 1e-10
    assert rel(h_scan, h_rec) <= 1e-10
    assert rel(diag_ssm_final_state(A_bar, B_bar, u), h_rec) <= 1e-10


def test_real_diagonal_and_dense_reference():
    A_bar = torch.rand(2, 4, dtype=F64) * 0.98
    B_bar, C = torch.randn(2, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    u = torch.randn(3, 2, 50, dtype=F64)
    y_dense = dense_ssm_recurrent(torch.diag_embed(A_bar), B_bar, C, u)
    assert not y_dense.is_complex()
    for y in (diag_ssm_recurrent(A_bar, B_bar, C, u)[0], diag_ssm_convolution(A_bar, B_bar, C, u),
              diag_ssm_scan(A_bar, B_bar, C, u)[0]):
        torch.testing.assert_close(y, y_dense, rtol=1e-11, atol=1e-11)


def test_initial_state_is_carried():
    A_bar, B_bar, C = slow_decay_system(2, 3)
    u = torch.randn(1, 2, 40, dtype=F64)
    y_full, _ = diag_ssm_recurrent(A_bar, B_bar, C, u)
    _, h_mid = diag_ssm_recurrent(A_bar, B_bar, C, u[..., :15])
    for fn in (diag_ssm_recurrent, diag_ssm_scan):
        y_rest, _ = fn(A_bar, B_bar, C, u[..., 15:], h0=h_mid)
        torch.testing.assert_close(y_rest, y_full[..., 15:], rtol=1e-11, atol=1e-11)


def test_float32_long_sequence_modes_agree():
    # L = 16 384 in float32 with memories up to 10⁴ steps: every pair within 1e-5 relative, and each mode
    # within 1e-5 of the float64 truth.
    A_bar, B_bar, C = slow_decay_system(2, 4, dtype=torch.complex64)
    u = torch.randn(1, 2, 16384)
    truth = diag_ssm_convolution(A_bar.to(C128), B_bar.to(C128), C.to(C128), u.double())
    y_rec, h_rec = diag_ssm_recurrent(A_bar, B_bar, C, u)
    y_conv = diag_ssm_convolution(A_bar, B_bar, C, u)
    y_scan, h_scan = diag_ssm_scan(A_bar, B_bar, C, u)
    assert y_rec.dtype == y_conv.dtype == y_scan.dtype == torch.float32
    for y in (y_rec, y_conv, y_scan):
        assert rel(y, truth) <= 1e-5
    assert rel(y_conv, y_rec) <= 1e-5 and rel(y_scan, y_rec) <= 1e-5 and rel(y_scan, y_conv) <= 1e-5
    assert rel(h_scan, h_rec) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.complex64, C128])
def test_no_overflow_at_65536_steps_with_decay_close_to_one(dtype):
    # Constant input 1 has the closed form h_t = B̄ (1 − Ā^{t+1}) / (1 − Ā); nothing may overflow.
    L = 2 ** 16
    radius = torch.tensor([[1 - 1e-6, 1 - 1e-5, 1 - 1e-4]], dtype=F64)
    # The system is rounded to the tested precision first, so the float64 closed form describes it exactly.
    A_bar = torch.polar(radius, torch.tensor([[1e-3, 0.5, 2.0]], dtype=F64)).to(dtype)
    B_bar = (torch.ones(1, 3, dtype=C128) * (1 - radius)).to(dtype)
    C = torch.ones(1, 3, dtype=dtype)
    a, b = A_bar.to(C128)[..., None], B_bar.to(C128)[..., None]
    t = torch.arange(L, dtype=F64)
    expected = (b * (1 - a ** (t + 1)) / (1 - a)).sum(1).real[None]      # (1, 1, L)
    u = torch.ones(1, 1, L, dtype=F64 if dtype == C128 else torch.float32)
    tol = 1e-10 if dtype == C128 else 1e-5
    for y in (diag_ssm_convolution(A_bar, B_bar, C, u), diag_ssm_scan(A_bar, B_bar, C, u)[0]):
        assert bool(torch.isfinite(y).all())
        assert rel(y, expected) <= tol


def test_bad_input():
    A_bar, B_bar, C = slow_decay_system(2, 3)
    u = torch.randn(1, 2, 10, dtype=F64)
    with pytest.raises(ShapeError, match="C: expected shape"):
        diag_ssm_scan(A_bar, B_bar, C[:, :2], u)
    with pytest.raises(ShapeError, match="u: expected shape"):
        diag_ssm_convolution(A_bar, B_bar, C, torch.randn(1, 3, 10, dtype=F64))
    with pytest.raises(ShapeError, match="L >= 1"):
        diag_ssm_recurrent(A_bar, B_bar, C, torch.randn(1, 2, 0, dtype=F64))
    with pytest.raises(ShapeError, match="N must be at least 1"):
        diag_ssm_recurrent(A_bar[:, :0], B_bar[:, :0], C[:, :0], u)
