"""The fused Mamba-3 (hand-written backward) against the recurrence: forward, final state and every gradient
(x, dt, A, B, C, trap, angles, biases, D, z, mimo_x/z/o, the initial state), SISO and MIMO, in float64 and
float32, both RoPE pairings, chunk lengths that do and do not divide L, packed sequences; gradcheck; what it
keeps for the backward; and that a wrong backward is caught."""

from __future__ import annotations

import pytest
import torch
from mamba3_inputs import ARG_NAMES, leaves, make_inputs, rel_err

from mambakit.ops import mamba3
from mambakit.ops.mamba3 import Mamba3State, fused, mamba3_fused, mamba3_ref

FORMS = [(False, 1), (True, 3)]     # (mimo, rank)


def _random_state(batch, heads, p, rank, N, n_angles, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    state = Mamba3State(torch.rand(batch, heads, n_angles, generator=g, dtype=dtype) * 6.0,
                        torch.randn(batch, heads, p, N, generator=g, dtype=dtype),
                        torch.randn(batch, rank, heads, N, generator=g, dtype=dtype),
                        torch.randn(batch, heads, p, generator=g, dtype=dtype))
    return Mamba3State(*(s.requires_grad_(True) for s in state))


def _compare(args, kwargs, state=None, tol=1e-10, **options):
    """Forward, final state and every gradient of the fused form against the recurrence (float64)."""
    extra = {} if state is None else {"initial_state": state}
    y_ref, s_ref = mamba3_ref(*args, **kwargs, **extra, return_final_state=True,
                              **{k: v for k, v in options.items() if k != "chunk_size"})
    y, s = mamba3_fused(*args, **kwargs, **extra, return_final_state=True, **options)
    errors = {"y": rel_err(y, y_ref)} | {f"final.{k}": rel_err(a, b)
                                         for k, a, b in zip(s._fields, s, s_ref, strict=True)}
    inputs = leaves(args, kwargs)
    if state is not None:
        inputs |= {f"state.{k}": v for k, v in state._asdict().items()}
    g = torch.Generator().manual_seed(7)
    dy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    dS = torch.randn(s.ssm.shape, generator=g, dtype=s.ssm.dtype)
    names = list(inputs)
    g_ref = torch.autograd.grad((y_ref * dy).sum() + (s_ref.ssm * dS).sum(), [inputs[k] for k in names],
                                allow_unused=True)
    g_new = torch.autograd.grad((y * dy).sum() + (s.ssm * dS).sum(), [inputs[k] for k in names],
                                allow_unused=True)
    for name, a, b in zip(names, g_new, g_ref, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            errors[f"d{name}"] = rel_err(a, b)
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, bad
    return errors


@pytest.mark.parametrize("mimo, rank", FORMS)
@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 64])
def test_fused_matches_ref_fp64(mimo, rank, chunk):
    args, kwargs = make_inputs(L=13, rank=rank, mimo=mimo, requires_grad=True)
    _compare(args, kwargs, _random_state(2, 4, 3, rank, 8, 2), chunk_size=chunk)


@pytest.mark.parametrize("mimo, rank", FORMS)
@pytest.mark.parametrize("pairwise", [True, False])
def test_both_pairings_and_packed_sequences_with_gradients(mimo, rank, pairwise):
    args, kwargs = make_inputs(L=14, rank=rank, mimo=mimo, requires_grad=True)
    seq_idx = torch.tensor([[0] * 5 + [1] * 6 + [2] * 3, [3] * 14])
    _compare(args, kwargs, _random_state(2, 4, 3, rank, 8, 2), seq_idx=seq_idx, rotate_pairwise=pairwise,
             chunk_size=4)


@pytest.mark.parametrize("variant", ["per-rank output", "no gate", "no skip", "no gate, skip or mimo_o",
                                     "groups = heads, all angles"])
def test_optional_parts(variant):
    options = {"groups = heads, all angles": dict(groups=4, n_angles=4)}.get(variant, {})
    args, kwargs = make_inputs(L=9, rank=2, mimo=True, requires_grad=True,
                               gate=variant not in ("no gate", "no gate, skip or mimo_o"), **options)
    if variant in ("per-rank output", "no gate, skip or mimo_o"):
        kwargs["mimo_o"] = None
    if variant in ("no skip", "no gate, skip or mimo_o"):
        kwargs["D"] = None
    if kwargs["z"] is None:
        kwargs["mimo_z"] = None
    _compare(args, kwargs, chunk_size=4)


def test_siso_without_gate_or_skip():
    args, kwargs = make_inputs(L=10, gate=False, requires_grad=True)
    kwargs["D"] = None
    _compare(args, kwargs, _random_state(2, 4, 3, 1, 8, 2), chunk_size=3)


@pytest.mark.parametrize("mimo, rank", FORMS)
def test_odd_state_size(mimo, rank):
    """An odd N (only the (i, i + N/2) pairing applies) takes the real-arithmetic rotation."""
    args, kwargs = make_inputs(L=9, N=7, n_angles=3, rank=rank, mimo=mimo, requires_grad=True)
    _compare(args, kwargs, _random_state(2, 4, 3, rank, 7, 3), rotate_pairwise=False, chunk_size=4)


@pytest.mark.parametrize("mimo, rank", FORMS)
def test_fused_fp32_matches_fp64_ref(mimo, rank):
    args, kwargs = make_inputs(L=70, heads=4, p=8, N=16, n_angles=4, rank=rank, mimo=mimo, requires_grad=True)
    state = _random_state(2, 4, 8, rank, 16, 4)
    y_ref, s_ref = mamba3_ref(*args, **kwargs, initial_state=state, return_final_state=True)
    args32 = [a.detach().float().requires_grad_() for a in args]
    kwargs32 = {k: v.detach().float().requires_grad_() for k, v in kwargs.items()}
    state32 = Mamba3State(*(t.detach().float().requires_grad_() for t in state))
    y, s = mamba3_fused(*args32, **kwargs32, initial_state=state32, return_final_state=True, chunk_size=16)
    assert y.dtype == torch.float32 and rel_err(y.double(), y_ref) < 1e-4
    for a, b in zip(s, s_ref, strict=True):
        assert rel_err(a.double(), b) < 1e-4
    dy, dS = torch.randn_like(y_ref), torch.randn_like(s_ref.ssm)
    names = list(leaves(args, kwargs)) + [f"state.{k}" for k in state._fields]
    g_ref = torch.autograd.grad((y_ref * dy).sum() + (s_ref.ssm * dS).sum(),
                                list(leaves(args, kwargs).values()) + list(state))
    g = torch.autograd.grad((y * dy.float()).sum() + (s.ssm * dS.float()).sum(),
                            list(leaves(args32, kwargs32).values()) + list(state32))
    for name, a, b in zip(names, g, g_ref, strict=True):
        assert rel_err(a.double(), b) < 1e-4, name


@pytest.mark.parametrize("mimo, rank", [(False, 1), (True, 2)])
def test_fused_gradcheck(mimo, rank):
    args, kwargs = make_inputs(batch=1, L=5, heads=2, p=2, rank=rank, groups=1, N=4, n_angles=1, mimo=mimo,
                               requires_grad=True)
    state = _random_state(1, 2, 2, rank, 4, 1)
    n = len(ARG_NAMES)
    names = list(kwargs)

    def f(*tensors):
        rest = dict(zip(names, tensors[n:n + len(names)], strict=True))
        y, s = mamba3_fused(*tensors[:n], **rest, initial_state=Mamba3State(*tensors[n + len(names):]),
                            return_final_state=True, chunk_size=2)
        return y, s.ssm

    assert torch.autograd.gradcheck(f, (*args, *kwargs.values(), *state))


@pytest.mark.parametrize("mimo, rank", FORMS)
def test_nothing_per_position_and_state_sized_is_kept(mimo, rank):
    """Nothing saved for the backward is as large as a (batch, L, heads, p, N) tensor: the largest are the
    per-rank output and the chunk start states."""
    b, L, h, p, N, chunk = 1, 256, 2, 16, 16, 32
    args, kwargs = make_inputs(batch=b, L=L, heads=h, p=p, N=N, n_angles=4, groups=1, rank=rank, mimo=mimo,
                               dtype=torch.float32, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mamba3(*args, **kwargs, chunk_size=chunk, backend="fused")
    per_position_state = b * L * h * p * N
    assert max(sizes) <= max(b * L * rank * h * p, b * h * (L // chunk) * p * N) < per_position_state // 4


def test_a_wrong_backward_is_caught(monkeypatch):
    """The comparison catches a deliberate bug: the rank pairs of the decay gradient summed transposed."""
    args, kwargs = make_inputs(L=12, rank=2, mimo=True, requires_grad=True)
    good = _compare(args, kwargs, chunk_size=4)
    right = fused._rank_sum

    def transposed(P, geo):
        return right(P, geo).transpose(1, 2)

    monkeypatch.setattr(fused, "_rank_sum", transposed)
    with pytest.raises(AssertionError, match="ddt"):
        _compare(args, kwargs, chunk_size=4)
    assert max(good.values()) < 1e-10


def test_dispatch_and_empty():
    args, kwargs = make_inputs(L=0)
    assert mamba3_fused(*args, **kwargs).shape == (2, 0, 4, 3)
    args, kwargs = make_inputs(L=6, rank=2, mimo=True)
    ref = mamba3(*args, **kwargs, backend="ref")
    for backend in ("fused", "auto"):
        assert rel_err(mamba3(*args, **kwargs, chunk_size=4, backend=backend), ref) < 1e-10


def test_calls_in_flight_together_share_the_kept_buffers_safely():
    """Buffers kept between calls: two forwards before either backward (as two layers), the same result
    on a second call, and again after release_buffers."""
    sets = [make_inputs(L=20, rank=2, mimo=True, seed=seed, requires_grad=True) for seed in (0, 1)]
    outs = [mamba3_fused(*a, **k, chunk_size=8) for a, k in sets]
    refs = [mamba3_ref(*a, **k) for a, k in sets]
    dys = [torch.randn_like(y) for y in outs]
    inputs = [list(leaves(a, k).values()) for a, k in sets]
    grads = torch.autograd.grad(sum((y * d).sum() for y, d in zip(outs, dys, strict=True)),
                                inputs[0] + inputs[1])
    grads_ref = torch.autograd.grad(sum((y * d).sum() for y, d in zip(refs, dys, strict=True)),
                                    inputs[0] + inputs[1])
    for y, ref in zip(outs, refs, strict=True):
        assert rel_err(y, ref) < 1e-10
    for a, b in zip(grads, grads_ref, strict=True):
        assert rel_err(a, b) < 1e-10
    again = mamba3_fused(*sets[0][0], **sets[0][1], chunk_size=8)
    fused.release_buffers()
    assert torch.equal(again, outs[0]) and torch.equal(mamba3_fused(*sets[0][0], **sets[0][1], chunk_size=8),
                                                        outs[0])
