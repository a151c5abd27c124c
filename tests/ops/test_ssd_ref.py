"""SSD (Mamba-2): the recurrence, the quadratic form and the chunked form agree, forward and backward.

Independent oracles besides the three forms: the Mamba-1 reference scan (an SSD head is a selective scan whose
A is one scalar shared by all channels and states), transformers' torch implementation, and running packed
sequences one by one.
"""

from __future__ import annotations

import math

import pytest
import torch

from mambakit.errors import ConfigError, DTypeError, MambakitError, ShapeError
from mambakit.ops import selective_scan_ref
from mambakit.ops.ssd import (
    segment_sum,
    ssd,
    ssd_chunked,
    ssd_quadratic,
    ssd_ref,
    ssd_state_update,
)


def make_inputs(batch=2, length=13, heads=4, headdim=3, groups=2, state=5, *, dtype=torch.float64, seed=0,
                with_D="heads", with_z=True, with_bias=True, with_init=True) -> dict:
    """Random SSD arguments (keywords of ssd_ref), with dt given raw (to be passed through softplus)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    D = {"heads": randn(heads), "headdim": randn(heads, headdim), None: None}[with_D]
    return dict(
        x=randn(batch, length, heads, headdim),
        dt=randn(batch, length, heads, scale=0.7),
        A=-torch.exp(randn(heads, scale=0.5)),
        B=randn(batch, length, groups, state),
        C=randn(batch, length, groups, state),
        D=D,
        z=randn(batch, length, heads, headdim) if with_z else None,
        dt_bias=randn(heads, scale=0.3) if with_bias else None,
        initial_states=randn(batch, heads, headdim, state) if with_init else None,
    )


def run(form: str, kw: dict, chunk_size: int = 4, **flags):
    args = (kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"])
    rest = {k: v for k, v in kw.items() if k not in ("x", "dt", "A", "B", "C")}
    rest.update(flags)
    if form == "chunked":
        return ssd_chunked(*args, chunk_size, **rest)
    return {"ref": ssd_ref, "quadratic": ssd_quadratic}[form](*args, **rest)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


CASES = [  # (batch, L, heads, headdim, groups, N, chunk_size)
    (2, 13, 4, 3, 2, 5, 4),     # L not a multiple of the chunk
    (1, 16, 2, 4, 1, 3, 8),     # exact multiple
    (2, 9, 6, 2, 6, 4, 1),      # one step per chunk; groups == heads
    (1, 7, 4, 2, 1, 2, 32),     # chunk longer than the sequence
    (2, 24, 4, 2, 2, 3, 5),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}L{}h{}p{}g{}n{}Q{}".format(*c))
@pytest.mark.parametrize("options", ["all", "plain", "Dhdim-noinit"])
def test_forms_agree_fp64(case, options):
    b, L, h, p, g, n, Q = case
    extra = {"all": {}, "plain": dict(with_D=None, with_z=False, with_bias=False, with_init=False),
             "Dhdim-noinit": dict(with_D="headdim", with_init=False)}[options]
    kw = make_inputs(b, L, h, p, g, n, **extra)
    y_ref, s_ref = run("ref", kw, dt_softplus=True, return_final_states=True)
    for form in ("quadratic", "chunked"):
        y, s = run(form, kw, Q, dt_softplus=True, return_final_states=True)
        assert y.dtype == torch.float64 and s.shape == (b, h, p, n)
        assert rel_err(y, y_ref) <= 1e-10, form
        assert rel_err(s, s_ref) <= 1e-10, form


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64])
def test_forms_agree_fp32(chunk_size):
    kw = make_inputs(2, 40, 4, 8, 2, 16, dtype=torch.float32, seed=1)
    kw64 = {k: (v.double() if v is not None else None) for k, v in kw.items()}
    y_ref, s_ref = run("ref", kw64, dt_softplus=True, return_final_states=True)
    for form in ("ref", "quadratic", "chunked"):
        y, s = run(form, kw, chunk_size, dt_softplus=True, return_final_states=True)
        assert y.dtype == torch.float32
        assert rel_err(y.double(), y_ref) <= 1e-4, form
        assert rel_err(s.double(), s_ref) <= 1e-4, form


def _grads(form: str, kw: dict, chunk_size: int, weights: tuple[torch.Tensor, torch.Tensor]):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in kw.items() if v is not None}
    y, s = run(form, {**kw, **leaves}, chunk_size, dt_softplus=True, return_final_states=True)
    ((y * weights[0]).sum() + (s * weights[1]).sum()).backward()
    return {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("case", [(2, 11, 4, 3, 2, 4, 4), (1, 12, 2, 2, 1, 3, 3)], ids=["ragged", "exact"])
def test_backward_forms_agree(dtype, tol, case):
    b, L, h, p, g, n, Q = case
    kw = make_inputs(b, L, h, p, g, n, dtype=dtype, seed=2, with_D="headdim")
    gen = torch.Generator().manual_seed(3)
    weights = (torch.randn(b, L, h, p, generator=gen, dtype=torch.float64).to(dtype),
               torch.randn(b, h, p, n, generator=gen, dtype=torch.float64).to(dtype))
    kw64 = {k: (v.double() if v is not None else None) for k, v in kw.items()}
    reference = _grads("ref", kw64, Q, tuple(w.double() for w in weights))
    for form in ("quadratic", "chunked"):
        grads = _grads(form, kw, Q, weights)
        assert grads.keys() == reference.keys()
        for name, grad in grads.items():
            assert torch.isfinite(grad).all(), (form, name)
            assert rel_err(grad.double(), reference[name]) <= tol, (form, name)


@pytest.mark.parametrize("form", ["chunked", "ref"])  # quadratic: its gradients are compared with ref's
def test_gradcheck_fp64(form):
    kw = make_inputs(1, 5, 2, 2, 1, 2, seed=4, with_D="heads")
    names = [k for k, v in kw.items() if v is not None]

    def f(*tensors):
        return run(form, dict(zip(names, tensors, strict=True)), 2, dt_softplus=True,
                   return_final_states=True)

    inputs = tuple(kw[k].detach().clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_ref_is_a_selective_scan_with_a_shared_scalar_A():
    """An SSD head = a Mamba-1 selective scan over headdim channels sharing one scalar A for all N states."""
    b, L, h, p, g, n = 2, 9, 4, 3, 2, 5
    kw = make_inputs(b, L, h, p, g, n, seed=5, with_init=False, with_D="headdim")
    y = run("ref", kw, dt_softplus=True)
    dim = h * p
    u = kw["x"].reshape(b, L, dim).transpose(1, 2)
    delta = kw["dt"].repeat_interleave(p, dim=2).transpose(1, 2)
    A = kw["A"].repeat_interleave(p)[:, None].expand(dim, n)
    B = kw["B"].permute(0, 2, 3, 1)                                   # (batch, groups, N, L)
    C = kw["C"].permute(0, 2, 3, 1)
    expected = selective_scan_ref(u, delta, A, B, C, D=kw["D"].reshape(dim),
                                  z=kw["z"].reshape(b, L, dim).transpose(1, 2),
                                  delta_bias=kw["dt_bias"].repeat_interleave(p), delta_softplus=True)
    assert rel_err(y.reshape(b, L, dim).transpose(1, 2), expected) <= 1e-12


def test_segment_sum_is_the_decay_exponent():
    a = torch.randn(3, 6, dtype=torch.float64)
    S = segment_sum(a)
    for t in range(6):
        for s in range(6):
            want = a[:, s + 1:t + 1].sum(-1) if s <= t else torch.full((3,), -math.inf, dtype=torch.float64)
            assert torch.allclose(S[:, t, s], want, atol=1e-14)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_steps_equal_chunked(dtype, tol):
    b, L, h, p, g, n = 2, 10, 4, 3, 2, 4
    kw = make_inputs(b, L, h, p, g, n, dtype=dtype, seed=6, with_D="headdim")
    y_chunked, s_chunked = run("chunked", kw, 4, dt_softplus=True, return_final_states=True)
    state = kw["initial_states"].clone()
    storage = state.data_ptr()
    ys = [ssd_state_update(state, kw["x"][:, t], kw["dt"][:, t], kw["A"], kw["B"][:, t], kw["C"][:, t],
                           D=kw["D"], z=kw["z"][:, t], dt_bias=kw["dt_bias"], dt_softplus=True)
          for t in range(L)]
    assert state.data_ptr() == storage
    assert rel_err(torch.stack(ys, 1), y_chunked) <= tol
    assert rel_err(state, s_chunked.to(dtype)) <= tol


def test_chunks_continue_from_final_states():
    """Splitting a sequence and passing the final state on as initial state changes nothing."""
    kw = make_inputs(2, 21, 4, 2, 2, 3, seed=7)
    y, s = run("chunked", kw, 4, dt_softplus=True, return_final_states=True)
    first = {k: (v[:, :8] if k in ("x", "dt", "B", "C", "z") else v) for k, v in kw.items()}
    second = {k: (v[:, 8:] if k in ("x", "dt", "B", "C", "z") else v) for k, v in kw.items()}
    y1, s1 = run("chunked", first, 4, dt_softplus=True, return_final_states=True)
    y2, s2 = run("chunked", {**second, "initial_states": s1}, 4, dt_softplus=True, return_final_states=True)
    assert rel_err(torch.cat([y1, y2], 1), y) <= 1e-12
    assert rel_err(s2, s) <= 1e-12


@pytest.mark.parametrize("form,chunk_size", [("ref", 1), ("quadratic", 1), ("chunked", 3), ("chunked", 8)])
def test_packed_sequences_equal_separate_runs(form, chunk_size):
    lengths = [5, 1, 7, 4]
    total = sum(lengths)
    kw = make_inputs(1, total, 4, 2, 2, 3, seed=8)
    seq_idx = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    y, s = run(form, kw, chunk_size, seq_idx=seq_idx, dt_softplus=True, return_final_states=True)
    start = 0
    for i, n in enumerate(lengths):
        part = {k: (v[:, start:start + n] if k in ("x", "dt", "B", "C", "z") else v) for k, v in kw.items()}
        if i > 0:                                   # the initial state belongs to the first sequence only
            part["initial_states"] = None
        y_i, s_i = run("ref", part, dt_softplus=True, return_final_states=True)
        assert rel_err(y[:, start:start + n], y_i) <= 1e-10, i
        start += n
    assert rel_err(s, s_i) <= 1e-10


def test_public_function_official_layout_and_methods():
    kw = make_inputs(2, 11, 4, 3, 2, 4, seed=9, with_D="headdim")
    args = (kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"])
    rest = dict(D=kw["D"], z=kw["z"], dt_bias=kw["dt_bias"], initial_states=kw["initial_states"],
                dt_softplus=True, return_final_states=True)
    y_ref, s_ref = ssd(*args, 4, backend="ref", **rest)
    for method in ("chunked", "quadratic"):
        y, s = ssd(*args, 4, backend=method, **rest)
        assert rel_err(y, y_ref) <= 1e-10 and rel_err(s, s_ref) <= 1e-10
    y_only = ssd(*args, chunk_size=4, D=kw["D"], z=kw["z"], dt_bias=kw["dt_bias"],
                 initial_states=kw["initial_states"], dt_softplus=True)
    assert isinstance(y_only, torch.Tensor) and rel_err(y_only, y_ref) <= 1e-10


def test_dt_limit_clamps_after_softplus():
    kw = make_inputs(1, 9, 2, 2, 1, 3, seed=10)
    limit = (0.3, 0.8)
    y = run("chunked", kw, 4, dt_softplus=True, dt_limit=limit)
    delta = torch.nn.functional.softplus(kw["dt"] + kw["dt_bias"]).clamp(*limit)
    # Feeding the clamped Δ directly as dt (no bias, no softplus) gives the same output.
    y_direct = run("ref", {**kw, "dt": delta, "dt_bias": None})
    assert rel_err(y, y_direct) <= 1e-12


def test_matches_transformers_torch_path():
    modeling = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
    kw = make_inputs(2, 23, 6, 4, 3, 8, dtype=torch.float32, seed=11, with_z=False)
    theirs, their_state = modeling.mamba2_chunk_scan(
        kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], 8, D=kw["D"], dt_bias=kw["dt_bias"],
        initial_states=kw["initial_states"], dt_softplus=True, return_final_states=True)
    ours, our_state = ssd(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], 8, D=kw["D"], dt_bias=kw["dt_bias"],
                          initial_states=kw["initial_states"], dt_softplus=True, return_final_states=True)
    assert rel_err(ours, theirs) <= 1e-5
    assert rel_err(our_state, their_state) <= 1e-5


@pytest.mark.parametrize("native_bf16_matmuls", [False, True])
def test_bfloat16_chunked_stays_in_bfloat16_and_close(native_bf16_matmuls, monkeypatch):
    from mambakit.ops.ssd import common as ssd_common

    # Both paths on any machine: bf16 matmuls (fast CPUs, GPUs) and the float32 fallback.
    monkeypatch.setattr(ssd_common, "cpu_has_fast_bf16_matmul", lambda: native_bf16_matmuls)
    kw = make_inputs(1, 50, 4, 16, 2, 16, dtype=torch.float32, seed=12)
    y32, s32 = run("chunked", kw, 16, dt_softplus=True, return_final_states=True)
    kw16 = {k: (v.bfloat16() if k in ("x", "B", "C", "z") else v) for k, v in kw.items()}
    y16, s16 = run("chunked", kw16, 16, dt_softplus=True, return_final_states=True)
    assert y16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    assert rel_err(y16.float(), y32) <= 5e-2
    assert rel_err(s16, s32) <= 5e-2


@pytest.mark.slow   # L >= 16k
def test_extreme_dt_stays_finite_over_a_long_sequence():
    """dt in [-50, 50] before softplus, L = 16384: no NaN or Inf, forward or backward."""
    L = 16384
    kw = make_inputs(1, L, 2, 2, 1, 4, dtype=torch.float32, seed=13)
    gen = torch.Generator().manual_seed(14)
    kw["dt"] = torch.rand(1, L, 2, generator=gen) * 100 - 50
    kw["A"] = -torch.tensor([1.0, 16.0])
    leaves = {k: kw[k].clone().requires_grad_() for k in ("x", "dt", "B", "C", "initial_states")}
    y, s = run("chunked", {**kw, **leaves}, 64, dt_softplus=True, return_final_states=True)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    (y.sum() + s.sum()).backward()
    for name, leaf in leaves.items():
        assert torch.isfinite(leaf.grad).all(), name
    # And on a stretch of it the chunked form still agrees with the recurrence.
    short = {k: (v[:, :512] if k in ("x", "dt", "B", "C", "z") else v) for k, v in kw.items()}
    y_ref = run("ref", short, dt_softplus=True)
    assert rel_err(run("chunked", short, 64, dt_softplus=True), y_ref) <= 1e-3


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------

def _bad(kw: dict, **changes) -> dict:
    return {**kw, **changes}


@pytest.mark.parametrize("change,error,field", [
    (lambda kw: _bad(kw, dt=kw["dt"][:, :, :3]), ShapeError, "dt"),
    (lambda kw: _bad(kw, dt=kw["dt"][..., None]), ShapeError, "dt"),
    (lambda kw: _bad(kw, B=kw["B"][:, :, :1].expand(-1, -1, 3, -1)), ShapeError, "B"),   # 3 groups, 4 heads
    (lambda kw: _bad(kw, C=kw["C"][:, :, :, :2]), ShapeError, "C"),
    (lambda kw: _bad(kw, A=kw["A"][:3]), ShapeError, "A"),
    (lambda kw: _bad(kw, D=torch.ones(4, 5, dtype=torch.float64)), ShapeError, "D"),      # headdim mismatch
    (lambda kw: _bad(kw, z=kw["z"][..., :2]), ShapeError, "z"),
    (lambda kw: _bad(kw, initial_states=kw["initial_states"][:, :, :2]), ShapeError, "initial_states"),
    (lambda kw: _bad(kw, dt_bias=torch.zeros(5, dtype=torch.float64)), ShapeError, "dt_bias"),
    (lambda kw: _bad(kw, x=kw["x"].to(torch.int64)), DTypeError, "x"),
    (lambda kw: _bad(kw, B=kw["B"].float()), DTypeError, "mixed .*B: torch.float32"),
], ids=["dt-heads", "dt-rank", "groups", "C-state", "A", "D-headdim", "z", "initial_states", "dt_bias",
        "x-int", "B-dtype"])
@pytest.mark.parametrize("form", ["ref", "quadratic", "chunked"])
def test_bad_input_names_the_field(change, error, field, form):
    kw = change(make_inputs(2, 6, 4, 3, 2, 4))
    with pytest.raises(error, match=rf"^{field}\b"):
        run(form, kw, 4)


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_bad_chunk_size(chunk_size):
    kw = make_inputs(1, 6, 2, 2, 1, 2)
    for method in ("chunked", "quadratic", "ref"):
        with pytest.raises(ConfigError, match="chunk_size"):
            ssd(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], chunk_size, backend=method)


def test_bad_method_limit_and_seq_idx():
    kw = make_inputs(1, 6, 2, 2, 1, 2)
    args = (kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], 4)
    with pytest.raises(ConfigError, match="backend"):
        ssd(*args, backend="fast")
    with pytest.raises(ConfigError, match="dt_limit"):
        ssd(*args, dt_limit=(1.0, 0.5))
    with pytest.raises(DTypeError, match="seq_idx"):
        ssd(*args, seq_idx=torch.zeros(1, 6))
    with pytest.raises(ShapeError, match="seq_idx"):
        ssd(*args, seq_idx=torch.zeros(1, 5, dtype=torch.long))


def test_state_update_bad_input_names_the_field():
    state = torch.zeros(2, 4, 3, 5)
    x, dt, A = torch.randn(2, 4, 3), torch.randn(2, 4), -torch.rand(4)
    B = C = torch.randn(2, 2, 5)
    cases = [
        (dict(dt=torch.randn(2, 3)), "dt"),
        (dict(dt=torch.randn(2, 1, 4)), "dt"),
        (dict(B=torch.randn(2, 3, 5)), "B"),
        (dict(state=torch.zeros(2, 4, 2, 5)), "state"),
        (dict(D=torch.ones(4, 2)), "D"),
        (dict(z=torch.randn(2, 4, 2)), "z"),
    ]
    for change, field in cases:
        kw = dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=None, z=None)
        kw.update(change)
        with pytest.raises(MambakitError, match=rf"^{field}\b"):
            ssd_state_update(**kw)
