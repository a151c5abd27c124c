"""The fused CPU causal conv1d (+ SiLU) against causal_conv1d_ref: outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from mambakit.errors import ConfigError, ShapeError
from mambakit.ops.conv1d import causal_conv1d, causal_conv1d_ref
from mambakit.ops.conv1d.cpu import causal_conv1d_cpu


def _inputs(batch: int, dim: int, L: int, width: int, dtype: torch.dtype, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, dim, L, generator=gen, dtype=torch.float64).to(dtype),
                weight=torch.randn(dim, width, generator=gen, dtype=torch.float64).to(dtype),
                bias=torch.randn(dim, generator=gen, dtype=torch.float64).to(dtype))


def _out_and_grads(fn, inputs: dict, activation, with_bias: bool) -> list[torch.Tensor]:
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    out = fn(leaves["x"], leaves["weight"], leaves["bias"] if with_bias else None, activation)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    names = ["x", "weight"] + (["bias"] if with_bias else [])
    grads = torch.autograd.grad((out * weights.to(out.dtype)).sum(), [leaves[k] for k in names])
    return [out.detach(), *grads]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("batch,dim,L,width", [(2, 5, 37, 4), (1, 3, 1, 4), (3, 2, 3, 4), (2, 4, 20, 1),
                                               (1, 6, 50, 7)])
def test_matches_reference(batch, dim, L, width, activation, with_bias, dtype, tol):
    inputs = _inputs(batch, dim, L, width, dtype, seed=batch * 100 + L)
    as_float64 = {k: v.double() for k, v in inputs.items()}
    want = _out_and_grads(causal_conv1d_ref, as_float64, activation, with_bias)
    got = _out_and_grads(causal_conv1d_cpu, inputs, activation, with_bias)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == dtype
        err = (g.double() - w).abs().max() / w.abs().max().clamp_min(1e-30)
        assert err <= tol, f"tensor {i}: relative error {err:.2e}"


def test_large_problem_uses_several_threads_and_still_matches():
    # Big enough that the work is split over threads (see cpu_threads.MIN_WORK_PER_THREAD).
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inputs = _inputs(2, 64, 2048, 4, torch.float32, seed=3)
        want = _out_and_grads(causal_conv1d_ref, {k: v.double() for k, v in inputs.items()}, "silu", True)
        got = _out_and_grads(causal_conv1d_cpu, inputs, "silu", True)
    finally:
        torch.set_num_threads(threads)
    for g, w in zip(got, want, strict=True):
        assert (g.double() - w).abs().max() / w.abs().max() <= 1e-5


def test_gradcheck_float64():
    inputs = _inputs(2, 3, 6, 4, torch.float64, seed=5)
    tensors = [inputs[k].requires_grad_(True) for k in ("x", "weight", "bias")]
    assert torch.autograd.gradcheck(lambda x, w, b: causal_conv1d_cpu(x, w, b, "silu"), tensors)


def test_extreme_values_stay_finite():
    x = torch.tensor([[[-1e4, 1e4, -50.0, 50.0, 0.0]]])
    weight = torch.tensor([[0.5, 1.0]])
    x.requires_grad_(True)
    out = causal_conv1d_cpu(x, weight, None, "silu")
    out.sum().backward()
    want = causal_conv1d_ref(x.detach(), weight, None, "silu")
    torch.testing.assert_close(out.detach(), want, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(x.grad).all()


def test_low_precision_returns_input_dtype():
    inputs = _inputs(1, 4, 9, 4, torch.bfloat16, seed=6)
    out = causal_conv1d_cpu(inputs["x"], inputs["weight"], inputs["bias"], "silu")
    want = causal_conv1d_ref(*(inputs[k].float() for k in ("x", "weight", "bias")), "silu")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)


def test_bad_input_names_the_argument():
    inputs = _inputs(1, 4, 9, 4, torch.float32, seed=7)
    with pytest.raises(ShapeError, match="weight"):
        causal_conv1d_cpu(inputs["x"], inputs["weight"][:3], None)
    with pytest.raises(ConfigError, match="activation"):
        causal_conv1d_cpu(inputs["x"], inputs["weight"], None, "relu")


@pytest.mark.parametrize("backend", ["auto", "cpu", "ref"])
def test_dispatcher_matches_reference_forward_and_backward(backend):
    x = torch.randn(2, 5, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    out = causal_conv1d(x, w, b, "silu", backend=backend)
    ref = causal_conv1d_ref(x, w, b, "silu")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, w, b), g)
    grads_ref = torch.autograd.grad(ref, (x, w, b), g)
    for a, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-10)


def test_dispatcher_rejects_unknown_backend():
    x, w = torch.randn(1, 2, 3), torch.randn(2, 2)
    with pytest.raises(ConfigError, match=r"backend: expected one of \['auto', 'ref', 'cpu'\], got 'gpu'"):
        causal_conv1d(x, w, backend="gpu")
