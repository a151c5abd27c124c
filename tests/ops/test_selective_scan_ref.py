"""selective_scan_ref against the scalar loop oracle; its official conventions, gradients and numerics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loop_oracle import selective_scan_loop
from scan_inputs import LAYOUTS, random_scan_inputs

from mambakit.ops import selective_scan, selective_scan_ref

OPTION_COMBOS = list(itertools.product([False, True], repeat=4))  # D, z, delta_bias, delta_softplus


def _compare_with_oracle(kwargs: dict, delta_softplus: bool, atol: float = 1e-10) -> None:
    out, last = selective_scan_ref(**kwargs, delta_softplus=delta_softplus, return_last_state=True)
    want_out, want_last = selective_scan_loop(**kwargs, delta_softplus=delta_softplus)
    np.testing.assert_allclose(out.numpy(), want_out, rtol=1e-10, atol=atol)
    np.testing.assert_allclose(last.numpy(), want_last, rtol=1e-10, atol=atol)
    # Without return_last_state the output alone comes back, and it is the same.
    only_out = selective_scan_ref(**kwargs, delta_softplus=delta_softplus)
    assert isinstance(only_out, torch.Tensor)
    torch.testing.assert_close(only_out, out, rtol=0, atol=0)


@pytest.mark.parametrize("complex_A", [False, True], ids=["realA", "complexA"])
@pytest.mark.parametrize("b_layout,c_layout", list(itertools.product(LAYOUTS, LAYOUTS)))
def test_matches_loop_oracle_all_layouts_and_options(b_layout, c_layout, complex_A):
    for seed, (with_D, with_z, with_bias, softplus) in enumerate(OPTION_COMBOS):
        kwargs = random_scan_inputs(2, 4, 3, 5, b_layout=b_layout, c_layout=c_layout, complex_A=complex_A,
                                    groups=2, with_D=with_D, with_z=with_z, with_bias=with_bias, seed=seed)
        _compare_with_oracle(kwargs, softplus)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 2),
    channels_per_group=st.integers(1, 3),
    groups=st.integers(1, 3),
    N=st.integers(1, 4),
    L=st.integers(1, 7),
    b_layout=st.sampled_from(LAYOUTS),
    c_layout=st.sampled_from(LAYOUTS),
    complex_A=st.booleans(),
    options=st.sampled_from(OPTION_COMBOS),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_loop_oracle_random_shapes(batch, channels_per_group, groups, N, L, b_layout, c_layout,
                                           complex_A, options, seed):
    with_D, with_z, with_bias, softplus = options
    kwargs = random_scan_inputs(batch, groups * channels_per_group, N, L, b_layout=b_layout,
                                c_layout=c_layout, complex_A=complex_A, groups=groups, with_D=with_D,
                                with_z=with_z, with_bias=with_bias, seed=seed)
    _compare_with_oracle(kwargs, softplus)


def test_grouped_with_one_group_equals_shared():
    kwargs = random_scan_inputs(2, 4, 3, 6, b_layout="grouped", c_layout="grouped", complex_A=False, groups=1)
    grouped = selective_scan_ref(**kwargs, delta_softplus=True)
    kwargs["B"], kwargs["C"] = kwargs["B"][:, 0], kwargs["C"][:, 0]
    shared = selective_scan_ref(**kwargs, delta_softplus=True)
    torch.testing.assert_close(grouped, shared, rtol=1e-13, atol=1e-13)


def test_complex_output_is_twice_real_part_of_C_h_by_hand():
    # One step, one channel, one state: h = delta * B * u, y = 2 Re(C h), plain (unconjugated) product.
    # (3+4i)(1+2i) = -5+10i, so y = 2 * (-5) * delta * u = -10 * 0.5 * 2 = -10.
    u = torch.tensor([[[2.0]]], dtype=torch.float64)
    delta = torch.tensor([[[0.5]]], dtype=torch.float64)
    A = torch.tensor([[-1.0 + 3.0j]], dtype=torch.complex128)
    B = torch.tensor([[1.0 + 2.0j]], dtype=torch.complex128)
    C = torch.tensor([[3.0 + 4.0j]], dtype=torch.complex128)
    out, last = selective_scan_ref(u, delta, A, B, C, return_last_state=True)
    assert out.item() == pytest.approx(-10.0, abs=1e-12)
    assert last.dtype == torch.complex128
    assert complex(last.item()) == pytest.approx(1.0 + 2.0j, abs=1e-12)

    # The same numbers in the interleaved layout: B and C (batch, N, 2L) holding (re, im) pairs.
    B_var = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    C_var = torch.tensor([[[3.0, 4.0]]], dtype=torch.float64)
    assert selective_scan_ref(u, delta, A, B_var, C_var).item() == pytest.approx(-10.0, abs=1e-12)


def test_interleaving_is_re_im_pairs_per_time_step():
    # L = 2: positions (0, 1) hold step 0's (re, im), positions (2, 3) step 1's. With A = 0 (no decay),
    # y_1 = 2 Re(C_1 (h_0 + delta B_1 u)).
    u = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)
    delta = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)
    A = torch.zeros(1, 1, dtype=torch.complex128)
    B = torch.tensor([[[1.0, 0.0, 0.0, 1.0]]], dtype=torch.float64)    # B_0 = 1, B_1 = i
    C = torch.tensor([[[0.0, 1.0, 1.0, 0.0]]], dtype=torch.float64)    # C_0 = i, C_1 = 1
    out = selective_scan_ref(u, delta, A, B, C)
    # h_0 = 1, y_0 = 2 Re(i * 1) = 0; h_1 = 1 + i, y_1 = 2 Re(1 * (1 + i)) = 2.
    torch.testing.assert_close(out, torch.tensor([[[0.0, 2.0]]], dtype=torch.float64), rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_output_dtype_is_u_dtype_and_low_precision_is_close(dtype):
    kwargs = random_scan_inputs(2, 4, 3, 8, b_layout="shared", c_layout="grouped", complex_A=False, groups=2)
    want, _ = selective_scan_loop(**kwargs, delta_softplus=True)
    # Activations in low precision, weights (A, D, delta_bias) in float32, as in mixed-precision training.
    low = {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v.float()) for k, v in kwargs.items()}
    out, last = selective_scan_ref(**low, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype
    assert last.dtype == torch.float32   # the state is kept in the compute precision, float32, as officially
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    np.testing.assert_allclose(out.double().numpy(), want, rtol=tol, atol=tol * 4)


def test_complex_state_dtype_follows_precision():
    kwargs = random_scan_inputs(1, 2, 2, 3, b_layout="shared", c_layout="shared", complex_A=True)
    f32 = {k: (v.to(torch.complex64) if v.is_complex() else v.float()) for k, v in kwargs.items()}
    out, last = selective_scan_ref(**f32, return_last_state=True)
    assert out.dtype == torch.float32 and last.dtype == torch.complex64


def test_empty_sequence():
    kwargs = random_scan_inputs(2, 3, 2, 0, b_layout="shared", c_layout="fixed", complex_A=False)
    out, last = selective_scan_ref(**kwargs, return_last_state=True)
    assert out.shape == (2, 3, 0) and torch.equal(last, torch.zeros(2, 3, 2, dtype=torch.float64))


def test_dispatcher_auto_and_ref_equal_reference():
    kwargs = random_scan_inputs(2, 4, 3, 5, b_layout="grouped", c_layout="shared", complex_A=True, groups=2)
    want = selective_scan_ref(**kwargs, delta_softplus=True, return_last_state=True)
    for backend in ("auto", "ref"):
        got = selective_scan(**kwargs, delta_softplus=True, return_last_state=True, backend=backend)
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)


# ---- gradients ---------------------------------------------------------------------------------------


GRAD_CASES = [(False, "grouped", "shared"), (False, "fixed", "fixed"), (True, "fixed", "shared"),
              (True, "grouped", "fixed")]


@pytest.mark.parametrize("complex_A,b_layout,c_layout", GRAD_CASES)
def test_gradcheck_all_inputs(complex_A, b_layout, c_layout):
    kwargs = random_scan_inputs(2, 4, 2, 4, b_layout=b_layout, c_layout=c_layout, complex_A=complex_A,
                                groups=2, seed=7)
    names = list(kwargs)
    tensors = [kwargs[k].clone().requires_grad_(True) for k in names]

    def scan(*args):
        inputs = dict(zip(names, args, strict=True))
        out, last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
        return out, torch.view_as_real(last) if last.is_complex() else last

    assert torch.autograd.gradcheck(scan, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


# ---- numerics ----------------------------------------------------------------------------------------


@pytest.mark.slow   # L >= 16k
@pytest.mark.parametrize("complex_A", [False, True], ids=["realA", "complexA"])
def test_no_overflow_long_sequence_extreme_delta_and_A(complex_A):
    # delta spans [-50, 50] before softplus, |A| spans up to 1e3, L = 16384, in float32.
    batch, dim, N, L = 1, 2, 4, 16384
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(batch, dim, L, generator=gen)
    delta = torch.rand(batch, dim, L, generator=gen) * 100 - 50
    delta[..., :4] = torch.tensor([-50.0, 50.0, -50.0, 50.0])
    magnitude = torch.tensor([1e-3, 1.0, 1e2, 1e3]).expand(dim, N)
    A = -magnitude
    if complex_A:
        A = torch.complex(-magnitude, magnitude.flip(-1))
    Bv = torch.randn(batch, N, 2 * L if complex_A else L, generator=gen)
    Cv = torch.randn(batch, N, 2 * L if complex_A else L, generator=gen)
    z = torch.randn(batch, dim, L, generator=gen) * 50
    out, last = selective_scan_ref(u, delta, A, Bv, Cv, D=torch.ones(dim), z=z, delta_softplus=True,
                                   return_last_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(torch.view_as_real(last) if complex_A else last).all()

    # Without softplus, a negative step with a stable A would grow like exp(50 * 1e3): the meaningful range is
    # delta >= 0, which must stay finite too.
    out, last = selective_scan_ref(u, delta.abs(), A, Bv, Cv, D=torch.ones(dim), z=z, return_last_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(torch.view_as_real(last) if complex_A else last).all()


def test_extreme_delta_gradients_are_finite():
    gen = torch.Generator().manual_seed(4)
    batch, dim, N, L = 1, 2, 4, 256
    delta = (torch.rand(batch, dim, L, generator=gen) * 100 - 50).requires_grad_(True)
    A = (-torch.tensor([1e-3, 1.0, 1e2, 1e3]).expand(dim, N)).clone().requires_grad_(True)
    u = torch.randn(batch, dim, L, generator=gen, requires_grad=True)
    Bv = torch.randn(batch, N, L, generator=gen, requires_grad=True)
    Cv = torch.randn(batch, N, L, generator=gen, requires_grad=True)
    out = selective_scan_ref(u, delta, A, Bv, Cv, delta_softplus=True)
    out.square().sum().backward()
    for t in (delta, A, u, Bv, Cv):
        assert torch.isfinite(t.grad).all()


def test_non_contiguous_and_odd_offset_inputs():
    # As in the Mamba block, B and C are slices of one projection, transposed to (batch, N, L); interleaved
    # pairs may also start at an odd storage offset. Results must not depend on memory layout.
    kwargs = random_scan_inputs(2, 4, 3, 5, b_layout="shared", c_layout="shared", complex_A=True)
    want = selective_scan_ref(**kwargs, delta_softplus=True)
    B, C = kwargs["B"], kwargs["C"]
    projection = torch.cat([B, C], dim=1).transpose(1, 2).contiguous()   # (batch, 2L, 2N)
    flat = torch.cat([torch.zeros(1, dtype=B.dtype), B.flatten()])
    odd_offset_B = flat[1:].view(B.shape)
    assert odd_offset_B.storage_offset() % 2 == 1
    strided_C = projection[:, :, 3:].transpose(1, 2)
    assert not strided_C.is_contiguous()
    got = selective_scan_ref(**{**kwargs, "B": odd_offset_B, "C": strided_C}, delta_softplus=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_softplus_is_stable_beyond_float32_exp_range():
    # exp(89) overflows float32: a naive log(1 + exp(x)) would give inf steps and NaN gradients here.
    delta = torch.tensor([[[-200.0, -90.0, 0.0, 90.0, 200.0]]], requires_grad=True)
    u = torch.ones(1, 1, 5)
    A = torch.tensor([[-1.0, -1e3]])
    Bv = torch.ones(1, 2, 5)
    Cv = torch.ones(1, 2, 5)
    out = selective_scan_ref(u, delta, A, Bv, Cv, delta_softplus=True)
    want, _ = selective_scan_loop(u, delta, A, Bv, Cv, delta_softplus=True)
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(delta.grad).all()
