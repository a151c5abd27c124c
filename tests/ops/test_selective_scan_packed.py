"""Packed sequences in the selective scan (``seq_idx``): a packed row equals its sequences scanned alone in
the reference (forward, last state, gradients; real and complex A; with an initial state), and every
backend (the fused CPU kernels, both forward kernels, and the chunked one) matches the reference with
packing in outputs and every gradient, fp64 and fp32, with boundaries on and off chunk edges; float64
gradcheck through the fused kernels; bad ``seq_idx`` are named errors."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from scan_inputs import random_scan_inputs
from test_selective_scan_backends import _assert_close_relative, _outputs_and_grads, _stable

from mambakit.errors import DTypeError, ShapeError
from mambakit.ops import selective_scan, selective_scan_ref
from mambakit.ops.packing import seq_idx_from_cu_seqlens
from mambakit.ops.selective_scan import chunked as scan_chunked
from mambakit.ops.selective_scan import cpu as scan_cpu
from mambakit.ops.selective_scan.chunked import selective_scan_chunked
from mambakit.ops.selective_scan.cpu import selective_scan_cpu

TIMED = ("u", "delta", "z", "B", "C")   # arguments with a time axis (the last), when not (dim, N)


def _slice(kwargs: dict, a: int, b: int, complex_A: bool) -> dict:
    out = {}
    for k, v in kwargs.items():
        if v is not None and k in TIMED and v.dim() > 2:
            out[k] = v[..., 2 * a : 2 * b] if complex_A and k in ("B", "C") else v[..., a:b]
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("complex_A", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("layout", ["shared", "grouped", "fixed"])
def test_reference_packed_row_equals_sequences_alone(complex_A, layout):
    lengths = [5, 1, 7, 3]
    L = sum(lengths)
    kwargs = random_scan_inputs(1, 4, 3, L, b_layout=layout, c_layout=layout, complex_A=complex_A, groups=2,
                                seed=0)
    h0_dtype = torch.complex128 if complex_A else torch.float64
    h0 = torch.randn(1, 4, 3, dtype=h0_dtype, generator=torch.Generator().manual_seed(1))
    cu = torch.tensor([0, *itertools.accumulate(lengths)])
    seq_idx = seq_idx_from_cu_seqlens(cu)
    out, last = selective_scan_ref(**kwargs, delta_softplus=True, return_last_state=True, seq_idx=seq_idx,
                                   initial_state=h0)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        alone, alone_last = selective_scan_ref(**_slice(kwargs, a, b, complex_A), delta_softplus=True,
                                               return_last_state=True, initial_state=h0 if i == 0 else None)
        assert torch.allclose(out[..., a:b], alone, atol=1e-12), f"sequence {i}"
    assert torch.allclose(last, alone_last, atol=1e-12)   # the last state is the last sequence's


def test_reference_packed_gradients_are_the_sequences_gradients():
    lengths = [6, 4, 5]
    L = sum(lengths)
    kwargs = random_scan_inputs(2, 3, 4, L, b_layout="shared", c_layout="shared", complex_A=False, seed=2)
    seq_idx = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths)).expand(2, L)
    u = kwargs.pop("u").requires_grad_(True)
    weights = torch.randn(2, 3, L, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (selective_scan_ref(u, **kwargs, delta_softplus=True, seq_idx=seq_idx) * weights).sum().backward()
    cu = [0, *itertools.accumulate(lengths)]
    for a, b in zip(cu[:-1], cu[1:], strict=True):
        piece = u.detach()[..., a:b].clone().requires_grad_(True)
        rest = _slice(kwargs, a, b, False)
        (selective_scan_ref(piece, **rest, delta_softplus=True) * weights[..., a:b]).sum().backward()
        assert torch.allclose(u.grad[..., a:b], piece.grad, atol=1e-12)


def _random_seq_idx(batch: int, L: int, seed: int) -> torch.Tensor:
    """Per row: random starts (some at 0/1 and on chunk edges of 4), ids increasing."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.rand(batch, L, generator=gen) < 0.15
    starts[:, 4] = True     # on a chunk edge of the small chunk
    starts[0, 1] = True     # a one-step first sequence
    starts[:, 0] = False
    return starts.cumsum(1).to(torch.int32)


@pytest.fixture(params=[4, 64], ids=["chunk4", "chunk64"])
def chunk(request, monkeypatch):
    monkeypatch.setattr(scan_cpu, "CHUNK", request.param)
    monkeypatch.setattr(scan_chunked, "CHUNK", request.param)
    return request.param


BACKENDS = {
    "cpu-lanes": lambda **kw: selective_scan_cpu(**kw, forward_kernel="auto"),
    "cpu-channels": lambda **kw: selective_scan_cpu(**kw, forward_kernel="channels"),
    "chunked": selective_scan_chunked,
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("b_layout,c_layout", [("shared", "shared"), ("grouped", "shared"),
                                               ("fixed", "grouped")])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backends_match_reference_with_packing(backend, b_layout, c_layout, dtype, chunk):
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    batch, dim, N, L = 2, 6, 4, 23
    for seed, (with_h0, softplus) in enumerate([(False, True), (True, True), (True, False)]):
        kwargs = random_scan_inputs(batch, dim, N, L, b_layout=b_layout, c_layout=c_layout, complex_A=False,
                                    groups=2, seed=seed)
        kwargs = _stable(kwargs, softplus)
        if with_h0:
            kwargs["initial_state"] = torch.randn(batch, dim, N, dtype=torch.float64,
                                                  generator=torch.Generator().manual_seed(seed + 10))
        seq_idx = _random_seq_idx(batch, L, seed)
        want = _outputs_and_grads(functools.partial(selective_scan_ref, seq_idx=seq_idx), kwargs, softplus)
        cast = {k: (v.to(dtype) if v is not None else None) for k, v in kwargs.items()}
        got = _outputs_and_grads(functools.partial(BACKENDS[backend], seq_idx=seq_idx), cast, softplus)
        _assert_close_relative(got, want, tol, f"{backend} seed={seed}")


def test_dispatcher_passes_seq_idx_to_every_backend():
    kwargs = random_scan_inputs(1, 4, 2, 9, b_layout="shared", c_layout="shared", complex_A=False, seed=4)
    seq_idx = _random_seq_idx(1, 9, 4)
    want = selective_scan_ref(**kwargs, delta_softplus=True, seq_idx=seq_idx)
    assert not torch.allclose(want, selective_scan_ref(**kwargs, delta_softplus=True))  # packing matters
    for backend in ("auto", "cpu", "chunked", "ref"):
        got = selective_scan(**kwargs, delta_softplus=True, backend=backend, seq_idx=seq_idx)
        assert torch.allclose(got, want, atol=1e-10), backend


def test_gradcheck_fused_kernels_with_packing(monkeypatch):
    monkeypatch.setattr(scan_cpu, "CHUNK", 3)
    kwargs = random_scan_inputs(1, 2, 2, 8, b_layout="shared", c_layout="grouped", complex_A=False, groups=2,
                                seed=5)
    kwargs["initial_state"] = torch.randn(1, 2, 2, dtype=torch.float64)
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]])
    names = list(kwargs)

    def scan(*args):
        out, last = selective_scan_cpu(**dict(zip(names, args, strict=True)), delta_softplus=True,
                                       return_last_state=True, seq_idx=seq_idx)
        return out, last

    inputs = tuple(kwargs[k].detach().clone().requires_grad_(True) for k in names)
    assert torch.autograd.gradcheck(scan, inputs, eps=1e-6, atol=1e-6)


def test_bad_seq_idx_is_named():
    kwargs = random_scan_inputs(2, 3, 2, 5, b_layout="shared", c_layout="shared", complex_A=False, seed=6)
    for backend in ("ref", "cpu", "chunked"):
        with pytest.raises(DTypeError, match="seq_idx: expected an integer tensor"):
            selective_scan(**kwargs, backend=backend, seq_idx=torch.zeros(2, 5))
        with pytest.raises(ShapeError, match=r"seq_idx: expected shape \(2, 5\)"):
            selective_scan(**kwargs, backend=backend, seq_idx=torch.zeros(2, 4, dtype=torch.int32))
