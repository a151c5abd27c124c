"""The fused CPU scan and conv on strided inputs: the (batch, dim, L) tensors a Mamba block passes them are
transposes of (batch, L, dim) projections, z and x slices of a wider one; results and gradients must equal
the reference's on the same values, whatever the layout of the inputs and of the upstream gradient."""

from __future__ import annotations

import pytest
import torch

from mambakit.ops.conv1d.cpu import causal_conv1d_cpu
from mambakit.ops.conv1d.ref import causal_conv1d_ref
from mambakit.ops.selective_scan.cpu import selective_scan_cpu
from mambakit.ops.selective_scan.ref import selective_scan_ref

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}   # relative to each tensor's largest magnitude


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    scale = expected.abs().max().item() + 1e-30
    err = (actual - expected).abs().max().item() / scale
    assert err <= TOL[dtype], f"{what}: relative error {err:.2e}"


def _rows_last(gen, batch, L, dim, dtype, wider=0):
    """A (batch, dim, L) view of a (batch, L, dim + wider) tensor: dim's stride 1, L's stride dim + wider."""
    return torch.randn(batch, L, dim + wider, generator=gen, dtype=dtype)[..., :dim].transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel", ["auto", "channels"])
@pytest.mark.parametrize("grad_layout", ["rows_last", "contiguous"])
@pytest.mark.parametrize("packed", [False, True])
def test_scan_on_transposed_inputs_matches_the_reference(dtype, kernel, grad_layout, packed):
    seed = 100 * (dtype == torch.float32) + 10 * (kernel == "auto") + 2 * (grad_layout == "rows_last")
    seed += packed
    gen = torch.Generator().manual_seed(seed)
    batch, dim, L, N = 2, 40, 70, 8   # dim not a multiple of the lane width, L not of the chunk
    u = _rows_last(gen, batch, L, dim, dtype)
    delta = _rows_last(gen, batch, L, dim, dtype) * 0.5
    z = _rows_last(gen, batch, L, dim, dtype, wider=dim)           # a slice, as z of in_proj's output
    x_dbl = torch.randn(batch, L, 3 * N, generator=gen, dtype=dtype)
    B, C = x_dbl[..., N:2 * N].transpose(1, 2), x_dbl[..., 2 * N:].transpose(1, 2)   # (batch, N, L) views
    A = -torch.rand(dim, N, generator=gen, dtype=dtype) - 0.5
    D = torch.randn(dim, generator=gen, dtype=dtype)
    bias = torch.randn(dim, generator=gen, dtype=dtype) * 0.3
    assert not u.is_contiguous() and u.stride(1) == 1 and z.stride(2) == 2 * dim
    seq_idx = None
    if packed:
        seq_idx = torch.zeros(batch, L, dtype=torch.long)
        seq_idx[:, 30:] = 1
        seq_idx[1, 55:] = 2
    g = (_rows_last(gen, batch, L, dim, dtype) if grad_layout == "rows_last"
         else torch.randn(batch, dim, L, generator=gen, dtype=dtype))
    results = {}
    for name in ("cpu", "ref"):
        # detach() keeps the views' strides, so the fused op gets the strided tensors themselves
        leaves = [t.detach().requires_grad_(True) for t in (u, delta, A, B, C, D, z, bias)]
        if name == "cpu":
            out = selective_scan_cpu(*leaves, True, seq_idx=seq_idx, forward_kernel=kernel)
        else:
            out = selective_scan_ref(*leaves, True, seq_idx=seq_idx)
        grads = torch.autograd.grad(out, leaves, g)
        results[name] = (out.detach(), grads)
    _close(results["cpu"][0], results["ref"][0], dtype, "out")
    names = "u delta A B C D z bias".split()
    for label, a, b in zip(names, results["cpu"][1], results["ref"][1], strict=True):
        _close(a, b, dtype, f"d{label}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("grad_layout", ["rows_last", "contiguous"])
def test_conv_on_a_transposed_slice_matches_the_reference(dtype, packed, grad_layout):
    gen = torch.Generator().manual_seed(7 + packed + 2 * (grad_layout == "contiguous"))
    batch, dim, L = 3, 45, 50   # dim not a multiple of the conv's channel block
    x = _rows_last(gen, batch, L, dim, dtype, wider=dim)   # x of in_proj's (batch, L, 2·dim) output
    weight = torch.randn(dim, 4, generator=gen, dtype=dtype)
    bias = torch.randn(dim, generator=gen, dtype=dtype)
    seq_idx = None
    if packed:
        seq_idx = torch.zeros(batch, L, dtype=torch.long)
        seq_idx[:, 21:] = 1
        seq_idx[2, 23:] = 2
    g = (_rows_last(gen, batch, L, dim, dtype) if grad_layout == "rows_last"
         else torch.randn(batch, dim, L, generator=gen, dtype=dtype))
    results = {}
    for name, fn in (("cpu", causal_conv1d_cpu), ("ref", causal_conv1d_ref)):
        leaves = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
        out = fn(*leaves, "silu", seq_idx=seq_idx)
        results[name] = (out.detach(), torch.autograd.grad(out, leaves, g))
    _close(results["cpu"][0], results["ref"][0], dtype, "out")
    for label, a, b in zip(("x", "weight", "bias"), results["cpu"][1], results["ref"][1], strict=True):
        _close(a, b, dtype, f"d{label}")
