"""The chunked SSD's hand-written backward (mambakit.ops.ssd.chunked) against the recurrence ssd_ref.

Every option the public function takes is swept: chunk sizes 1, 3, 64 and longer than L (L not a multiple of
the chunk), one and several groups, D per head and per channel, the gate z, dt_bias, softplus, dt_limit,
initial states, returned final states and packed sequences (seq_idx). The oracle is ssd_ref run in float64
under autograd, on fresh random inputs; outputs and all gradients must agree to 1e-10 (float64) or 1e-4
(float32) relative to the largest entry.
"""

from __future__ import annotations

import pytest
import torch

from mambakit.ops.ssd import chunked as chunked_module
from mambakit.ops.ssd import ssd, ssd_ref

INPUTS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


@pytest.fixture(params=["factored", "masked"])
def inside_form(request, monkeypatch):
    """Both forms of the inside-chunk product: factored per group (the default where decays allow; a case
    whose decays are too strong falls back) and the per-head masked form (forced: no decay meets the
    limit; worked through one chunk at a time)."""
    calls = []
    split_heads = chunked_module._split_heads

    def spy(c, mm_dtype):
        result = split_heads(c, mm_dtype)
        calls.append(result[2])
        return result

    monkeypatch.setattr(chunked_module, "_split_heads", spy)
    if request.param == "masked":
        monkeypatch.setattr(chunked_module, "_FACTOR_LIMIT", {torch.float32: -1.0, torch.float64: -1.0})
        monkeypatch.setattr(chunked_module, "_SLAB_BYTES", 1)    # one chunk per slab: buffers are reused
    else:                           # the float32 limit for float64 too, so that both see mixed heads
        monkeypatch.setattr(chunked_module, "_FACTOR_LIMIT", {torch.float32: 60.0, torch.float64: 60.0})
    yield request.param
    if request.param == "masked":
        assert calls and all(isinstance(m, str) and m == "all" for m in calls)


def make_case(batch, length, heads, headdim, groups, state, *, seed, D="heads", z=True, dt_bias=True,
              init=True, softplus=True, seq=False, strong_head=False) -> dict:
    """Random arguments of ssd_ref in float64 (dt positive when no softplus follows, so that Δ >= 0)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    dt = randn(batch, length, heads, scale=0.7)
    kw = dict(
        x=randn(batch, length, heads, headdim),
        dt=dt if softplus else dt.abs() * 0.5,
        A=-torch.exp(randn(heads, scale=0.5)),
        B=randn(batch, length, groups, state),
        C=randn(batch, length, groups, state),
        D={"heads": randn(heads), "headdim": randn(heads, headdim), None: None}[D],
        z=randn(batch, length, heads, headdim) if z else None,
        dt_bias=randn(heads, scale=0.3) if dt_bias else None,
        initial_states=randn(batch, heads, headdim, state) if init else None,
        seq_idx=None,
    )
    if strong_head:                 # head 1 decays by ~e^-70 per step: too strong for the factored form
        kw["A"][1] = -100.0
    if seq:
        # Random packed sequences per batch row; one boundary lands on a chunk start of chunk size 3.
        rows = []
        for _ in range(batch):
            cuts = torch.zeros(length, dtype=torch.long)
            cuts[torch.randint(1, max(length, 2), (3,), generator=gen)] = 1
            if length > 6:
                cuts[6] = 1
            cuts[0] = 0
            rows.append(cuts.cumsum(0))
        kw["seq_idx"] = torch.stack(rows)
    return kw


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def outputs_and_grads(fn, kw: dict, dtype, weights, **flags):
    """Run ``fn`` on ``kw`` cast to ``dtype`` (A, D, dt_bias stay float64 -> cast too; seq_idx as is) and
    backpropagate sum(weights · outputs); returns (outputs, {name: grad})."""
    leaves = {k: kw[k].to(dtype).detach().requires_grad_() for k in INPUTS if kw[k] is not None}
    args = {k: leaves.get(k) for k in INPUTS}
    result = fn(args.pop("x"), args.pop("dt"), args.pop("A"), args.pop("B"), args.pop("C"), **args,
                seq_idx=kw["seq_idx"], **flags)
    outs = result if isinstance(result, tuple) else (result,)
    loss = sum((o.double() * w).sum() for o, w in zip(outs, weights, strict=False))
    loss.backward()
    return outs, {k: v.grad for k, v in leaves.items()}


SHAPES = [  # (batch, L, heads, headdim, groups, N, chunk)
    (2, 13, 4, 3, 1, 5, 1),       # one step per chunk
    (2, 13, 4, 3, 2, 5, 3),       # ragged last chunk, 2 groups
    (1, 70, 2, 4, 2, 3, 64),      # chunk 64, L not a multiple, groups == heads
    (2, 11, 6, 2, 3, 4, 16),      # chunk longer than L, 3 groups of 2 heads
]

OPTIONS = {
    "plain": dict(make=dict(D=None, z=False, dt_bias=False, init=False, softplus=False),
                  flags=dict(dt_softplus=False)),
    "all-D-per-head": dict(make=dict(D="heads"), flags=dict(dt_softplus=True, return_final_states=True)),
    "all-D-per-channel": dict(make=dict(D="headdim"), flags=dict(dt_softplus=True, return_final_states=True)),
    "dt-limit": dict(make=dict(D="heads", z=False, init=False),
                     flags=dict(dt_softplus=True, dt_limit=(0.3, 0.9))),
    "no-softplus-final": dict(make=dict(D=None, z=True, dt_bias=True, softplus=False),
                              flags=dict(dt_softplus=False, return_final_states=True)),
    "seq-idx": dict(make=dict(D="headdim", seq=True), flags=dict(dt_softplus=True, return_final_states=True)),
    "one-strong-head": dict(make=dict(D="heads", strong_head=True),
                            flags=dict(dt_softplus=True, return_final_states=True)),
}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}L{}h{}p{}g{}n{}Q{}".format(*s))
def test_chunked_matches_ref_forward_and_every_gradient(shape, option, dtype, tol, inside_form):
    b, L, h, p, g, n, Q = shape
    spec = OPTIONS[option]
    seed = 10 * SHAPES.index(shape) + list(OPTIONS).index(option)
    kw = make_case(b, L, h, p, g, n, seed=seed, **spec["make"])
    gen = torch.Generator().manual_seed(1)
    weights = (torch.randn(b, L, h, p, generator=gen, dtype=torch.float64),
               torch.randn(b, h, p, n, generator=gen, dtype=torch.float64))
    ref_outs, ref_grads = outputs_and_grads(ssd_ref, kw, torch.float64, weights, **spec["flags"])
    outs, grads = outputs_and_grads(lambda *a, **k: ssd(*a[:5], Q, **k), kw, dtype, weights, **spec["flags"])
    assert type(outs[0].grad_fn).__name__ == "ChunkedSSDBackward"          # the hand-written backward ran
    assert outs[0].dtype == dtype and len(outs) == len(ref_outs)
    for out, ref in zip(outs, ref_outs, strict=True):
        assert rel_err(out, ref) <= tol
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert grad.dtype == dtype and torch.isfinite(grad).all(), name
        assert rel_err(grad, ref_grads[name]) <= tol, name


@pytest.mark.parametrize("masked_heads", ["all", "one"])
def test_masked_form_in_uneven_slabs(masked_heads, monkeypatch):
    """The masked form split into slabs of two chunks, the last one shorter (5 chunks), for all heads and for
    one head of several (the others factored): forward and every gradient as ssd_ref's."""
    b, L, h, p, g, n, Q = 1, 70, 4, 3, 2, 5, 16
    limit = -1.0 if masked_heads == "all" else 60.0
    monkeypatch.setattr(chunked_module, "_FACTOR_LIMIT", {torch.float32: limit, torch.float64: limit})
    monkeypatch.setattr(chunked_module, "_SLAB_BYTES", 2 * (h if masked_heads == "all" else 1) * Q * Q * 8)
    slab_lists = []
    slabs = chunked_module._slabs
    monkeypatch.setattr(chunked_module, "_slabs", lambda *a: slab_lists.append(slabs(*a)) or slab_lists[-1])
    kw = make_case(b, L, h, p, g, n, seed=31, D="heads", strong_head=masked_heads == "one")
    gen = torch.Generator().manual_seed(2)
    weights = (torch.randn(b, L, h, p, generator=gen, dtype=torch.float64),
               torch.randn(b, h, p, n, generator=gen, dtype=torch.float64))
    flags = dict(dt_softplus=True, return_final_states=True)
    ref_outs, ref_grads = outputs_and_grads(ssd_ref, kw, torch.float64, weights, **flags)
    outs, grads = outputs_and_grads(lambda *a, **k: ssd(*a[:5], Q, **k), kw, torch.float64, weights, **flags)
    bounds = [[(s.start, s.stop) for s in slab_list] for slab_list in slab_lists]
    assert bounds == [[(0, 2), (2, 4), (4, 5)]] * 2                 # forward, backward
    for out, ref in zip(outs, ref_outs, strict=True):
        assert rel_err(out, ref) <= 1e-10
    for name, grad in grads.items():
        assert rel_err(grad, ref_grads[name]) <= 1e-10, name


@pytest.mark.parametrize("loss_on", ["final-only", "y-only-with-final-returned"])
def test_gradient_through_one_output_only(loss_on):
    """Only the final state (or only y while the final state is returned and unused) carries a gradient."""
    kw = make_case(2, 17, 4, 3, 2, 5, seed=20, D="headdim")
    leaves = {k: kw[k].detach().clone().requires_grad_() for k in INPUTS}
    ref_leaves = {k: kw[k].detach().clone().requires_grad_() for k in INPUTS}
    pos = ("x", "dt", "A", "B", "C")
    y, s = ssd(*(leaves[k] for k in pos), 4, **{k: leaves[k] for k in INPUTS[5:]}, dt_softplus=True,
               return_final_states=True)
    y_ref, s_ref = ssd_ref(*(ref_leaves[k] for k in pos), **{k: ref_leaves[k] for k in INPUTS[5:]},
                           dt_softplus=True, return_final_states=True)
    w = torch.randn(s.shape if loss_on == "final-only" else y.shape, dtype=torch.float64)
    ((s if loss_on == "final-only" else y) * w).sum().backward()
    ((s_ref if loss_on == "final-only" else y_ref) * w).sum().backward()
    for k in INPUTS:
        # z cannot reach the final state: autograd leaves the reference's gradient unset, ours is zero.
        want = ref_leaves[k].grad if ref_leaves[k].grad is not None else torch.zeros_like(kw[k])
        if want.abs().max() == 0:
            assert (leaves[k].grad == 0).all(), k
        else:
            assert rel_err(leaves[k].grad, want) <= 1e-10, k


@pytest.mark.parametrize("seq", [False, True], ids=["plain", "seq-idx"])
def test_gradcheck_float64(seq, inside_form):
    kw = make_case(1, 8, 2, 2, 1, 2, seed=21, D="heads", seq=seq)
    names = [k for k in INPUTS if kw[k] is not None]

    def f(*tensors):
        args = dict(zip(names, tensors, strict=True))
        return ssd(args.pop("x"), args.pop("dt"), args.pop("A"), args.pop("B"), args.pop("C"), 3, **args,
                   seq_idx=kw["seq_idx"], dt_softplus=True, return_final_states=True)

    inputs = tuple(kw[k].detach().clone().requires_grad_() for k in names)
    # fast_mode checks random projections of the Jacobian (every entry is compared with ssd_ref above).
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_clamped_steps_get_zero_gradient():
    """dt_limit: where softplus(dt + bias) is outside the limits, dt's gradient is exactly zero (as autograd
    gives through clamp), and it is not zero elsewhere."""
    kw = make_case(1, 24, 2, 2, 1, 3, seed=22, D=None, z=False, init=False)
    limit = (0.4, 0.8)
    dt = kw["dt"].clone().requires_grad_()
    y = ssd(kw["x"], dt, kw["A"], kw["B"], kw["C"], 5, dt_bias=kw["dt_bias"], dt_softplus=True,
            dt_limit=limit)
    y.square().sum().backward()
    delta = torch.nn.functional.softplus(kw["dt"] + kw["dt_bias"])
    outside = (delta < limit[0]) | (delta > limit[1])
    assert outside.any() and (~outside).any()
    assert (dt.grad[outside] == 0).all()
    assert (dt.grad[~outside] != 0).all()


def test_inputs_are_not_modified():
    kw = make_case(2, 10, 4, 2, 2, 3, seed=23, D="headdim")
    before = {k: kw[k].clone() for k in INPUTS}
    leaves = {k: kw[k].requires_grad_() for k in INPUTS}
    y, s = ssd(*(leaves[k] for k in ("x", "dt", "A", "B", "C")), 4, **{k: leaves[k] for k in INPUTS[5:]},
               dt_softplus=True, return_final_states=True)
    (y.sum() + s.sum()).backward()
    for k in INPUTS:
        assert torch.equal(kw[k].detach(), before[k]), k


@pytest.mark.slow   # L >= 16k
@pytest.mark.parametrize("chunk_size", [64, 256])
def test_extreme_dt_long_sequence_finite(chunk_size):
    """dt in [-50, 50] before softplus, L = 16384: outputs and every gradient finite."""
    L = 16384
    kw = make_case(1, L, 2, 2, 1, 2, seed=24, D="heads")
    gen = torch.Generator().manual_seed(25)
    kw["dt"] = torch.rand(1, L, 2, generator=gen, dtype=torch.float64) * 100 - 50
    kw["A"] = torch.tensor([-1.0, -16.0], dtype=torch.float64)
    leaves = {k: kw[k].float().requires_grad_() for k in INPUTS}
    y, s = ssd(*(leaves[k] for k in ("x", "dt", "A", "B", "C")), chunk_size,
               **{k: leaves[k] for k in INPUTS[5:]}, dt_softplus=True, return_final_states=True)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    (y.sum() + s.sum()).backward()
    for k, leaf in leaves.items():
        assert torch.isfinite(leaf.grad).all(), k


@pytest.mark.parametrize("native_bf16_matmuls", [False, True])
def test_bfloat16_inputs(native_bf16_matmuls, monkeypatch):
    """bf16 x, B, C, z: output and gradients in bf16, close to the float32 computation; with or without
    bf16 matmuls (forced on here even where the CPU lacks them)."""
    from mambakit.ops.ssd import common as ssd_common
    monkeypatch.setattr(ssd_common, "cpu_has_fast_bf16_matmul", lambda: native_bf16_matmuls)
    kw = make_case(1, 40, 4, 8, 2, 8, seed=26, D="heads")
    low = ("x", "B", "C", "z")
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        leaves = {k: kw[k].to(dtype if k in low else torch.float32).requires_grad_() for k in INPUTS}
        y, s = ssd(*(leaves[k] for k in ("x", "dt", "A", "B", "C")), 16, **{k: leaves[k] for k in INPUTS[5:]},
                   dt_softplus=True, return_final_states=True)
        assert y.dtype == dtype and s.dtype == torch.float32
        (y.float().sum() + s.sum()).backward()
        results[dtype] = (y, s, {k: leaves[k].grad for k in INPUTS})
    y32, s32, g32 = results[torch.float32]
    y16, s16, g16 = results[torch.bfloat16]
    assert rel_err(y16, y32) <= 5e-2 and rel_err(s16, s32) <= 5e-2
    for k in INPUTS:
        assert g16[k].dtype == (torch.bfloat16 if k in low else torch.float32), k
        assert rel_err(g16[k], g32[k]) <= 5e-2, k


def test_only_some_inputs_require_grad():
    """Gradients that are not asked for are skipped; the ones asked for are unchanged (D and z given)."""
    kw = make_case(2, 15, 4, 3, 2, 4, seed=27, D="headdim")
    results = []
    for fn in (lambda *a, **k: ssd(*a, 4, **k), ssd_ref):
        x, B = kw["x"].clone().requires_grad_(), kw["B"].clone().requires_grad_()
        y = fn(x, kw["dt"], kw["A"], B, kw["C"], D=kw["D"], z=kw["z"], dt_bias=kw["dt_bias"],
               initial_states=kw["initial_states"], dt_softplus=True)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
        results.append((x.grad, B.grad))
    (gx, gB), (gx_ref, gB_ref) = results
    assert rel_err(gx, gx_ref) <= 1e-10 and rel_err(gB, gB_ref) <= 1e-10


def test_non_contiguous_inputs():
    """Views as a model produces them (slices of a projection, a transposed state) give the same results."""
    kw = make_case(2, 14, 4, 3, 2, 4, seed=28, D="heads")
    wide = torch.cat([kw["x"], torch.zeros_like(kw["x"])], dim=-1)[..., :3]          # strided x
    init_t = kw["initial_states"].transpose(-1, -2).contiguous().transpose(-1, -2)    # permuted layout
    args = (kw["dt"], kw["A"], kw["B"], kw["C"])
    rest = dict(D=kw["D"], z=kw["z"], dt_bias=kw["dt_bias"], dt_softplus=True, return_final_states=True)
    y, s = ssd(wide, *args, 4, initial_states=init_t, **rest)
    y_ref, s_ref = ssd_ref(kw["x"], *args, initial_states=kw["initial_states"], **rest)
    assert not wide.is_contiguous() and not init_t.is_contiguous()
    assert rel_err(y, y_ref) <= 1e-10 and rel_err(s, s_ref) <= 1e-10


def test_factored_form_is_taken_for_ordinary_decays_only():
    gen = torch.Generator().manual_seed(29)
    ordinary = (torch.rand(1, 4, 64, 3, generator=gen) * -0.5).cumsum(2)     # chunk decays down to e^-32
    mixed = ordinary.clone()
    mixed[..., 1] *= 100                                                       # head 1: down to e^-3200
    u, v, masked = chunked_module._split_heads(ordinary, torch.float32)
    assert masked is None
    u, v, masked = chunked_module._split_heads(mixed, torch.float32)
    assert masked.tolist() == [1] and (u[..., 1] == 0).all() and torch.isfinite(v).all()
    assert chunked_module._split_heads(mixed * 100, torch.float32)[2] == "all"
    assert chunked_module._split_heads(ordinary, torch.bfloat16)[2] == "all"     # half-precision matmuls
    u, v, _ = chunked_module._split_heads(ordinary.double(), torch.float64)
    L = torch.exp(ordinary.double()[..., :, None, :] - ordinary.double()[..., None, :, :])   # [t, s]
    assert torch.allclose(u[..., :, None, :] * v[..., None, :, :], L, rtol=1e-13, atol=0)


def test_masked_form_without_kept_decay_masks(monkeypatch):
    """A forward without grad keeps no decay masks (one slab's buffer serves every slab) and gives the same
    output; a backward after a forward that kept none recomputes them and gives ssd_ref's gradients."""
    monkeypatch.setattr(chunked_module, "_FACTOR_LIMIT", {torch.float32: -1.0, torch.float64: -1.0})
    monkeypatch.setattr(chunked_module, "_SLAB_BYTES", 1)
    kw = make_case(2, 23, 4, 3, 2, 5, seed=33, D=None, z=False, dt_bias=False, init=False, softplus=False)
    x, dt, A, B, C = (kw[k] for k in ("x", "dt", "A", "B", "C"))
    with torch.no_grad():
        y_no_grad, _ = chunked_module._apply_chunked(x, dt, A, B, C, 4, None, None, None, None, torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, dt, B, C)]
    y, _ = chunked_module.ChunkedSSD.apply(leaves[0], leaves[1], A, leaves[2], leaves[3], None, None, None,
                                           None, 4, torch.float64, False)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (y * weights).sum().backward()
    ref_leaves = [t.clone().requires_grad_() for t in (x, dt, B, C)]
    y_ref = ssd_ref(ref_leaves[0], ref_leaves[1], A, ref_leaves[2], ref_leaves[3])
    (y_ref * weights).sum().backward()
    assert rel_err(y_no_grad, y_ref) <= 1e-10 and rel_err(y, y_ref) <= 1e-10
    for leaf, ref_leaf in zip(leaves, ref_leaves, strict=True):
        assert rel_err(leaf.grad, ref_leaf.grad) <= 1e-10
