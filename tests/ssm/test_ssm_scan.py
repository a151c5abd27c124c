"""The associative scan against a loop: real and complex, time-varying and constant a, gradients."""

import math

import pytest
import torch

from mambakit.errors import MambakitError, ShapeError
from mambakit.ssm import scan as scan_module
from mambakit.ssm.scan import associative_scan, sequential_scan

F64, C128 = torch.float64, torch.complex128


def loop(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Independent reference written out here: a Python loop over time on broadcast copies."""
    a, b = torch.broadcast_tensors(a, b)
    h = torch.zeros_like(b[..., 0]) if h0 is None else h0.to(b.dtype).expand_as(b[..., 0])
    out = torch.empty_like(b)
    for t in range(b.shape[-1]):
        h = a[..., t] * h + b[..., t]
        out[..., t] = h
    return out


@pytest.mark.parametrize("length", [1, 2, 3, 7, 16, 33, 100])
@pytest.mark.parametrize("dtype", [F64, C128])
def test_time_varying_matches_loop(length, dtype):
    a = torch.randn(2, 3, length, dtype=dtype) * 0.9
    b = torch.randn(2, 3, length, dtype=dtype)
    h0 = torch.randn(2, 3, dtype=dtype)
    expected = loop(a, b, h0)
    torch.testing.assert_close(sequential_scan(a, b, h0), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(associative_scan(a, b, h0), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length", [1, 5, 64, 129])
def test_constant_a_in_time_matches_loop(length):
    a = torch.polar(0.99 * torch.ones(4, 1, dtype=F64), torch.rand(4, 1, dtype=F64) * 3)   # (4, 1): LTI
    b = torch.randn(4, length, dtype=F64)                                                 # real b, complex a
    out = associative_scan(a, b)
    assert out.is_complex() and out.shape == (4, length)
    torch.testing.assert_close(out, loop(a.expand(4, length), b.to(C128)), rtol=1e-10, atol=1e-10)


def test_any_a_including_growth_and_zero():
    # Associativity does not need |a| < 1: growing, zero and sign-changing multipliers all work.
    a = torch.tensor([[2.0, 0.0, -1.5, 1.1, 3.0, -0.5, 1.0]], dtype=F64)
    b = torch.randn(1, 7, dtype=F64)
    torch.testing.assert_close(associative_scan(a, b), loop(a, b))


def test_float32_close_to_loop():
    a = torch.rand(3, 8, 500) * 0.2 + 0.8
    b = torch.randn(3, 8, 500)
    ref = loop(a.double(), b.double())
    for out in (associative_scan(a, b), sequential_scan(a, b)):
        assert out.dtype == torch.float32
        assert float((out.double() - ref).norm() / ref.norm()) <= 1e-6


def test_gradients_match_loop():
    a = (torch.rand(2, 37, dtype=F64) * 0.5 + 0.5).requires_grad_()
    b = torch.randn(2, 37, dtype=C128).requires_grad_()
    h0 = torch.randn(2, dtype=C128).requires_grad_()
    weight = torch.randn(2, 37, dtype=C128)
    grads = []
    for fn in (associative_scan, loop):
        (fn(a, b, h0) * weight).real.sum().backward()
        grads.append([t.grad.clone() for t in (a, b, h0)])
        for t in (a, b, h0):
            t.grad = None
    for g_fast, g_ref in zip(*grads, strict=True):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-10)


def test_depth_is_logarithmic(monkeypatch):
    # The recursion halves the length each round: floor(log2 L) + 1 levels of whole-tensor operations.
    calls = []
    original = scan_module._scan_last_dim

    def counting(a, b):
        calls.append(b.shape[-1])
        return original(a, b)

    monkeypatch.setattr(scan_module, "_scan_last_dim", counting)
    associative_scan(torch.full((1, 1000), 0.5), torch.randn(1, 1000))
    assert len(calls) == math.floor(math.log2(1000)) + 1 and calls[-1] == 1


def test_bad_input():
    with pytest.raises(ShapeError, match="L >= 1"):
        associative_scan(torch.ones(3, 0), torch.ones(3, 0))
    with pytest.raises(ShapeError, match="b: expected a shape broadcastable"):
        associative_scan(torch.ones(3, 5), torch.ones(4, 5))
    with pytest.raises(ShapeError, match="h0"):
        sequential_scan(torch.ones(3, 5), torch.ones(3, 5), h0=torch.ones(4))
    with pytest.raises(MambakitError, match="a"):
        associative_scan(torch.ones(3, 5, dtype=torch.int32), torch.ones(3, 5))
