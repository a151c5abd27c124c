"""selective_scan_fn (the official name and argument order) == selective_scan_ref, forward and gradients."""

import inspect

import pytest
import torch
from official_helpers import assert_same, forward_and_grads, leaves

from mambakit.ops.official.selective_scan_interface import selective_scan_fn, selective_scan_ref


def random_scan_inputs(batch, dim, N, L, *, b_layout, c_layout, complex_A, groups=1, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    A = -torch.exp(r(dim, N) * 0.5)
    A = torch.complex(A, r(dim, N)) if complex_A else A
    Lx = 2 * L if complex_A else L

    def bc(layout):
        if layout == "fixed":
            return torch.complex(r(dim, N), r(dim, N)) if complex_A else r(dim, N)
        return r(batch, N, Lx) if layout == "shared" else r(batch, groups, N, Lx)

    return dict(u=r(batch, dim, L), delta=r(batch, dim, L), A=A, B=bc(b_layout), C=bc(c_layout), D=r(dim),
                z=r(batch, dim, L), delta_bias=r(dim))


def test_signature_is_the_official_one():
    names = list(inspect.signature(selective_scan_fn).parameters)
    assert names == ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus",
                     "return_last_state"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("b_layout, c_layout",
                         [("shared", "shared"), ("fixed", "grouped"), ("grouped", "fixed")])
def test_equals_reference(b_layout, c_layout, dtype):
    t = random_scan_inputs(2, 4, 3, 11, b_layout=b_layout, c_layout=c_layout, complex_A=False, groups=2,
                           seed=4)

    def positional(fn):   # the official positional order, flags included
        return lambda **a: fn(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"],
                              True, True)

    got = forward_and_grads(positional(selective_scan_fn), leaves(t, dtype))
    want = forward_and_grads(positional(selective_scan_ref), leaves(t, dtype))
    assert_same(got, want, dtype)


def test_complex_A_goes_to_the_reference():
    t = random_scan_inputs(1, 3, 2, 5, b_layout="shared", c_layout="fixed", complex_A=True, seed=2)
    want = forward_and_grads(selective_scan_ref, leaves(t))
    assert_same(forward_and_grads(selective_scan_fn, leaves(t)), want)
