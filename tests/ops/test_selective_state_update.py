"""selective_state_update, run once per time step from a zero state, reproduces selective_scan_ref."""

from __future__ import annotations

import pytest
import torch
from scan_inputs import random_scan_inputs

from mambakit.ops import selective_scan_ref, selective_state_update


def _step_inputs(X: torch.Tensor, t: int, complex_A: bool) -> torch.Tensor:
    """B or C at step t from the scan layout (batch, N, L) / (batch, G, N, L); complex for complex A."""
    if complex_A:
        return torch.complex(X[..., 2 * t], X[..., 2 * t + 1])
    return X[..., t]


def _run_steps(kwargs: dict, softplus: bool, state_dtype: torch.dtype | None = None):
    u, delta, A, B, C = (kwargs[k] for k in ("u", "delta", "A", "B", "C"))
    batch, dim, L = u.shape
    state = torch.zeros(batch, dim, A.shape[1], dtype=state_dtype or A.dtype)
    state_storage = state.data_ptr()
    ys = []
    for t in range(L):
        ys.append(selective_state_update(
            state, u[..., t], delta[..., t], A, _step_inputs(B, t, A.is_complex()),
            _step_inputs(C, t, A.is_complex()), D=kwargs["D"],
            z=None if kwargs["z"] is None else kwargs["z"][..., t],
            dt_bias=kwargs["delta_bias"], dt_softplus=softplus,
        ))
    assert state.data_ptr() == state_storage  # updated in place, not rebound
    return torch.stack(ys, dim=-1), state


@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("layout,groups", [("shared", 1), ("grouped", 2), ("grouped", 4)])
@pytest.mark.parametrize("complex_A", [False, True], ids=["realA", "complexA"])
@pytest.mark.parametrize("options", [(True, True, True), (False, False, False), (True, False, True)],
                         ids=["D-z-bias", "plain", "D-bias"])
def test_steps_equal_scan(complex_A, layout, groups, softplus, options):
    with_D, with_z, with_bias = options
    kwargs = random_scan_inputs(2, 4, 3, 6, b_layout=layout, c_layout=layout, complex_A=complex_A,
                                groups=groups, with_D=with_D, with_z=with_z, with_bias=with_bias, seed=groups)
    want, want_state = selective_scan_ref(**kwargs, delta_softplus=softplus, return_last_state=True)
    got, state = _run_steps(kwargs, softplus)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, want_state, rtol=1e-12, atol=1e-12)


def test_mixed_layouts_shared_B_grouped_C():
    kwargs = random_scan_inputs(2, 6, 2, 5, b_layout="shared", c_layout="grouped", complex_A=False, groups=3)
    want, want_state = selective_scan_ref(**kwargs, delta_softplus=True, return_last_state=True)
    got, state = _run_steps(kwargs, True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, want_state, rtol=1e-12, atol=1e-12)


def test_continues_from_a_given_state():
    # Prefill half the sequence with the scan, then step through the rest from its last state.
    kwargs = random_scan_inputs(2, 4, 3, 8, b_layout="grouped", c_layout="grouped", complex_A=True, groups=2)
    want = selective_scan_ref(**kwargs, delta_softplus=True)
    first = {k: (v[..., :4] if k in ("u", "delta", "z") else v) for k, v in kwargs.items()}
    first["B"], first["C"] = kwargs["B"][..., :8], kwargs["C"][..., :8]
    head, state = selective_scan_ref(**first, delta_softplus=True, return_last_state=True)
    tail = []
    for t in range(4, 8):
        B_t, C_t = _step_inputs(kwargs["B"], t, True), _step_inputs(kwargs["C"], t, True)
        tail.append(selective_state_update(
            state, kwargs["u"][..., t], kwargs["delta"][..., t], kwargs["A"], B_t, C_t, D=kwargs["D"],
            z=kwargs["z"][..., t], dt_bias=kwargs["delta_bias"], dt_softplus=True))
    torch.testing.assert_close(torch.cat([head, torch.stack(tail, -1)], -1), want, rtol=1e-12, atol=1e-12)


def test_float32_state_and_output_dtype():
    kwargs = random_scan_inputs(1, 4, 3, 5, b_layout="shared", c_layout="shared", complex_A=False)
    f32 = {k: (v.float() if v is not None else None) for k, v in kwargs.items()}
    want = selective_scan_ref(**f32, delta_softplus=True)
    got, state = _run_steps(f32, True)
    assert got.dtype == torch.float32 and state.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_input_keeps_float32_state_and_returns_bfloat16():
    kwargs = random_scan_inputs(1, 4, 3, 1, b_layout="shared", c_layout="shared", complex_A=False)
    state = torch.zeros(1, 4, 3)
    step = {k: kwargs[k][..., 0].bfloat16() for k in ("u", "delta", "B", "C")}
    y = selective_state_update(state, step["u"], step["delta"], kwargs["A"].float(), step["B"], step["C"],
                               D=kwargs["D"].float(), dt_softplus=True)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32
    assert state.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("complex_A", [False, True], ids=["realA", "complexA"])
def test_extreme_steps_stay_finite_and_match_scan(complex_A, dtype):
    # dt in [-50, 50] before softplus, |A| up to 1e3, a long run of steps. In float32 a phase Im(dt*A) of
    # ~5e4 rad is rounded to ~1e-3 rad (float32) or ~1e-11 rad (float64) per step, so two evaluation orders
    # drift apart legitimately: float32 must stay finite, float64 must match the scan to 1e-8.
    batch, dim, N, L = 1, 2, 4, 512
    gen = torch.Generator().manual_seed(9)
    magnitude = torch.tensor([1e-3, 1.0, 1e2, 1e3], dtype=dtype).expand(dim, N)
    A = torch.complex(-magnitude, magnitude.flip(-1)) if complex_A else -magnitude
    bc_length = 2 * L if complex_A else L
    kwargs = dict(
        u=torch.randn(batch, dim, L, generator=gen, dtype=dtype),
        delta=torch.rand(batch, dim, L, generator=gen, dtype=dtype) * 100 - 50,
        A=A,
        B=torch.randn(batch, N, bc_length, generator=gen, dtype=dtype),
        C=torch.randn(batch, N, bc_length, generator=gen, dtype=dtype),
        D=torch.ones(dim, dtype=dtype),
        z=torch.randn(batch, dim, L, generator=gen, dtype=dtype) * 50,
        delta_bias=None,
    )
    got, state = _run_steps(kwargs, True)
    assert torch.isfinite(got).all()
    assert torch.isfinite(torch.view_as_real(state) if complex_A else state).all()
    if dtype == torch.float64:
        want, want_state = selective_scan_ref(**kwargs, delta_softplus=True, return_last_state=True)
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(state, want_state, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("complex_A", [False, True], ids=["realA", "complexA"])
def test_gradcheck_one_step(complex_A):
    kwargs = random_scan_inputs(2, 4, 2, 1, b_layout="grouped", c_layout="shared", complex_A=complex_A,
                                groups=2, seed=13)
    gen = torch.Generator().manual_seed(14)
    state0 = torch.randn(2, 4, 2, generator=gen, dtype=torch.float64)
    if complex_A:
        state0 = torch.complex(state0, torch.randn(2, 4, 2, generator=gen, dtype=torch.float64))
    inputs = dict(state=state0, x=kwargs["u"][..., 0], dt=kwargs["delta"][..., 0], A=kwargs["A"],
                  B=_step_inputs(kwargs["B"], 0, complex_A), C=_step_inputs(kwargs["C"], 0, complex_A),
                  D=kwargs["D"], z=kwargs["z"][..., 0], dt_bias=kwargs["delta_bias"])
    names = list(inputs)
    tensors = [v.clone().requires_grad_(True) for v in inputs.values()]

    def step(*args):
        given = dict(zip(names, args, strict=True))
        state = given.pop("state").clone()  # the update writes into its state argument
        y = selective_state_update(state, **given, dt_softplus=True)
        return y, torch.view_as_real(state) if state.is_complex() else state

    assert torch.autograd.gradcheck(step, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("complex_A", [False, True], ids=["realA", "complexA"])
def test_gradients_through_steps_equal_scan_gradients(complex_A):
    # Backpropagating through L in-place steps must give the scan's gradients: no step may let autograd
    # save the state tensor that the next step overwrites.
    kwargs = random_scan_inputs(2, 4, 3, 5, b_layout="grouped", c_layout="shared", complex_A=complex_A,
                                groups=2, seed=21)
    leaves = {k: v.clone().requires_grad_(True) for k, v in kwargs.items()}
    selective_scan_ref(**leaves, delta_softplus=True).square().sum().backward()
    want = {k: v.grad for k, v in leaves.items()}

    leaves = {k: v.clone().requires_grad_(True) for k, v in kwargs.items()}
    got, _ = _run_steps(leaves, True)
    got.square().sum().backward()
    for k, v in leaves.items():
        torch.testing.assert_close(v.grad, want[k], rtol=1e-10, atol=1e-10, msg=k)
