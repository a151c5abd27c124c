"""Packed sequences in the causal conv1d (``seq_idx``): the reference convolves each sequence as if alone
(no tap reaches into the previous one), and the fused CPU kernel matches it in outputs and every gradient,
fp64 and fp32, for widths 1 to 5 and sequences shorter than the width; float64 gradcheck."""

from __future__ import annotations

import pytest
import torch

from mambakit.errors import DTypeError, ShapeError
from mambakit.ops.conv1d import causal_conv1d, causal_conv1d_ref
from mambakit.ops.conv1d.cpu import causal_conv1d_cpu


def _inputs(batch, dim, L, width, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, dim, L, generator=gen, dtype=torch.float64).to(dtype),
            torch.randn(dim, width, generator=gen, dtype=torch.float64).to(dtype),
            torch.randn(dim, generator=gen, dtype=torch.float64).to(dtype))


def _seq_idx(batch, L, seed):
    gen = torch.Generator().manual_seed(seed)
    starts = torch.rand(batch, L, generator=gen) < 0.3
    starts[0, 1] = True     # a sequence of one position
    starts[:, 0] = False
    return starts.cumsum(1).to(torch.int32)


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("width", [1, 2, 4])
def test_reference_packed_row_equals_sequences_alone(width, activation):
    lengths = [3, 1, 6, 2]
    x, w, b = _inputs(1, 3, sum(lengths), width)
    seq_idx = torch.repeat_interleave(torch.arange(4), torch.tensor(lengths))[None]
    packed = causal_conv1d_ref(x, w, b, activation, seq_idx=seq_idx)
    start = 0
    for n in lengths:
        alone = causal_conv1d_ref(x[..., start : start + n], w, b, activation)
        assert torch.allclose(packed[..., start : start + n], alone, atol=1e-12)
        start += n
    one_id = torch.zeros_like(seq_idx)   # a single sequence: the plain convolution
    assert torch.allclose(causal_conv1d_ref(x, w, b, activation, seq_idx=one_id),
                          causal_conv1d_ref(x, w, b, activation), atol=1e-12)


def _out_and_grads(fn, x, w, b, activation, seq_idx, with_bias):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
    out = fn(leaves[0], leaves[1], leaves[2] if with_bias else None, activation, seq_idx=seq_idx)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    used = leaves if with_bias else leaves[:2]
    return [out.detach(), *torch.autograd.grad((out * weights.to(out.dtype)).sum(), used)]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("width", [1, 3, 4, 5])
def test_fused_kernel_matches_reference_with_packing(width, activation, with_bias, dtype, tol):
    x, w, b = _inputs(3, 5, 29, width, seed=width)
    seq_idx = _seq_idx(3, 29, seed=width)
    want = _out_and_grads(causal_conv1d_ref, x, w, b, activation, seq_idx, with_bias)
    got = _out_and_grads(causal_conv1d_cpu, x.to(dtype), w.to(dtype), b.to(dtype), activation, seq_idx,
                         with_bias)
    for i, (g, r) in enumerate(zip(got, want, strict=True)):
        err = (g.double() - r).abs().max() / r.abs().max()
        assert err <= tol, f"[{i}] relative error {err:.2e}"


def test_gradcheck_fused_kernel_with_packing():
    x, w, b = (t.requires_grad_(True) for t in _inputs(2, 2, 9, 4, seed=3))
    seq_idx = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 2, 2], [0, 1, 2, 2, 2, 2, 2, 2, 2]])
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d_cpu(*a, "silu", seq_idx=seq_idx), (x, w, b))


def test_dispatcher_and_bad_seq_idx():
    x, w, b = _inputs(2, 3, 7, 4)
    seq_idx = _seq_idx(2, 7, seed=1)
    want = causal_conv1d_ref(x, w, b, "silu", seq_idx=seq_idx)
    for backend in ("auto", "cpu", "ref"):
        assert torch.allclose(causal_conv1d(x, w, b, "silu", backend, seq_idx=seq_idx), want, atol=1e-12)
    for fn in (causal_conv1d_ref, causal_conv1d_cpu):
        with pytest.raises(DTypeError, match="seq_idx: expected an integer tensor"):
            fn(x, w, b, seq_idx=torch.zeros(2, 7))
        with pytest.raises(ShapeError, match=r"seq_idx: expected shape \(2, 7\)"):
            fn(x, w, b, seq_idx=torch.zeros(2, 6, dtype=torch.long))
