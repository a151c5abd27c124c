"""The chunked Mamba-3 against the recurrence: forward, final state and every gradient, in float64 and
float32, for chunk lengths that do and do not divide L, with initial states and packed sequences."""

from __future__ import annotations

import pytest
import torch
from mamba3_inputs import ARG_NAMES, leaves, make_inputs, rel_err

from mambakit.ops import mamba3, mamba3_chunked, mamba3_ref
from mambakit.ops.mamba3 import Mamba3State

FORMS = [(False, 1), (True, 3)]     # (mimo, rank)


def _random_state(batch, heads, p, rank, N, n_angles, dtype=torch.float64, requires_grad=False):
    state = Mamba3State(torch.rand(batch, heads, n_angles, dtype=dtype) * 6.0,
                        torch.randn(batch, heads, p, N, dtype=dtype),
                        torch.randn(batch, rank, heads, N, dtype=dtype),
                        torch.randn(batch, heads, p, dtype=dtype))
    return Mamba3State(*(s.requires_grad_(requires_grad) for s in state))


def _grads(out, inputs: dict[str, torch.Tensor], cotangent):
    return dict(zip(inputs, torch.autograd.grad(out, list(inputs.values()), cotangent), strict=True))


@pytest.mark.parametrize("mimo, rank", FORMS)
@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 64])
def test_chunked_matches_ref_fp64(mimo, rank, chunk):
    args, kwargs = make_inputs(L=13, rank=rank, mimo=mimo, requires_grad=True)
    state = _random_state(2, 4, 3, rank, 8, 2, requires_grad=True)
    y_ref, s_ref = mamba3_ref(*args, **kwargs, initial_state=state, return_final_state=True)
    y, s = mamba3_chunked(*args, **kwargs, initial_state=state, return_final_state=True, chunk_size=chunk)
    assert rel_err(y, y_ref) < 1e-10
    for a, b in zip(s, s_ref, strict=True):
        assert rel_err(a, b) < 1e-10
    inputs = leaves(args, kwargs) | {f"state.{k}": v for k, v in state._asdict().items()}
    dy, dS = torch.randn_like(y), torch.randn_like(s.ssm)
    loss_ref = (y_ref * dy).sum() + (s_ref.ssm * dS).sum()
    loss = (y * dy).sum() + (s.ssm * dS).sum()
    g_ref, g = _grads(loss_ref, inputs, None), _grads(loss, inputs, None)
    for name in inputs:
        assert rel_err(g[name], g_ref[name]) < 1e-10, name


@pytest.mark.parametrize("mimo, rank", FORMS)
def test_chunked_fp32_matches_fp64_ref(mimo, rank):
    args, kwargs = make_inputs(L=40, heads=4, p=8, N=16, n_angles=4, rank=rank, mimo=mimo, requires_grad=True)
    y_ref = mamba3_ref(*args, **kwargs)
    args32 = [a.detach().float().requires_grad_() for a in args]
    kwargs32 = {k: v.detach().float().requires_grad_() for k, v in kwargs.items()}
    y = mamba3_chunked(*args32, **kwargs32, chunk_size=16)
    assert y.dtype == torch.float32 and rel_err(y.double(), y_ref) < 1e-4
    dy = torch.randn_like(y_ref)
    g_ref = _grads((y_ref * dy).sum(), leaves(args, kwargs), None)
    g = _grads((y * dy.float()).sum(), leaves(args32, kwargs32), None)
    for name in g_ref:
        assert rel_err(g[name].double(), g_ref[name]) < 1e-4, name


@pytest.mark.parametrize("mimo, rank", FORMS)
@pytest.mark.parametrize("pairwise", [True, False])
def test_both_pairings_and_packed_sequences(mimo, rank, pairwise):
    args, kwargs = make_inputs(L=14, rank=rank, mimo=mimo)
    seq_idx = torch.tensor([[0] * 5 + [1] * 6 + [2] * 3, [3] * 14])
    y = mamba3_chunked(*args, **kwargs, seq_idx=seq_idx, rotate_pairwise=pairwise, chunk_size=4)
    assert rel_err(y, mamba3_ref(*args, **kwargs, seq_idx=seq_idx, rotate_pairwise=pairwise)) < 1e-10
    # each packed sequence alone, from a zero state
    for lo, hi in ((0, 5), (5, 11), (11, 14)):
        part = [a[:1, lo:hi] for a in args[:7]] + list(args[7:])
        alone = mamba3_ref(*part, **dict(kwargs, z=kwargs["z"][:1, lo:hi]), rotate_pairwise=pairwise)
        assert rel_err(y[:1, lo:hi], alone) < 1e-10


def test_chunked_gradcheck():
    args, kwargs = make_inputs(batch=1, L=5, heads=2, p=2, rank=2, groups=1, N=4, n_angles=1, mimo=True,
                               requires_grad=True)
    n = len(ARG_NAMES)

    def f(*tensors):
        return mamba3_chunked(*tensors[:n], **dict(zip(kwargs, tensors[n:], strict=True)), chunk_size=2)

    assert torch.autograd.gradcheck(f, (*args, *kwargs.values()))


def test_no_per_position_state_is_kept_for_backward():
    """Nothing saved for the backward is as large as a (batch, L, heads, p, N) tensor."""
    args, kwargs = make_inputs(batch=1, L=256, heads=2, p=16, N=16, n_angles=4, groups=1, dtype=torch.float32,
                               requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mamba3(*args, **kwargs, chunk_size=32)
    assert max(sizes) < 256 * 2 * 16 * 16 // 4


def test_empty_and_backend_dispatch():
    args, kwargs = make_inputs(L=0)
    assert mamba3_chunked(*args, **kwargs).shape == (2, 0, 4, 3)
    args, kwargs = make_inputs(L=6, rank=2, mimo=True)
    assert rel_err(mamba3(*args, **kwargs, backend="ref"), mamba3(*args, **kwargs, chunk_size=4)) < 1e-10
