"""A selective scan that starts from a given state (``initial_state``): the reference continues a split
sequence exactly; the fused CPU backend (both forward kernels) and the chunked backend match the reference
in outputs, last state and every gradient including d(initial_state), in float32 and float64, with and
without D / z / bias / softplus, at one step and at lengths that are not a multiple of the chunk; float64
gradcheck; L = 0; one compiled kernel per dtype; the Triton backend under the Triton interpreter (where
triton is installed); bad inputs are named errors."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from scan_inputs import random_scan_inputs
from test_selective_scan_backends import (
    _assert_close_relative,
    _outputs_and_grads,
    _stable,
    run_under_triton_interpreter,
)
from test_selective_scan_cpu import (
    ALL_OPTIONS,
    _count_lane_kernel_calls,
    assert_one_float32_variant_per_kernel,
)

from mambakit.errors import DeviceError, DTypeError, ShapeError
from mambakit.ops import selective_scan, selective_scan_ref
from mambakit.ops.selective_scan import chunked as scan_chunked
from mambakit.ops.selective_scan import cpu as scan_cpu
from mambakit.ops.selective_scan.chunked import selective_scan_chunked
from mambakit.ops.selective_scan.cpu import selective_scan_cpu

SEQUENCE_ARGS = ("u", "delta", "z", "B", "C")   # the arguments with a time axis (last), when not (dim, N)


def _with_initial_state(kwargs: dict, seed: int, complex_A: bool = False) -> dict:
    """kwargs plus a standard-normal (batch, dim, N) initial state in u's dtype (complex128 for complex A)."""
    batch, dim, _ = kwargs["u"].shape
    N = kwargs["A"].shape[1]
    gen = torch.Generator().manual_seed(1000 + seed)
    h0 = torch.randn(batch, dim, N, generator=gen, dtype=torch.float64)
    if complex_A:
        h0 = torch.complex(h0, torch.randn(batch, dim, N, generator=gen, dtype=torch.float64))
    return {**kwargs, "initial_state": h0 if complex_A else h0.to(kwargs["u"].dtype)}


def _steps(kwargs: dict, steps: slice, complex_A: bool) -> dict:
    """The arguments for the steps ``steps`` of the sequence (B and C of complex A interleave re/im)."""
    def cut(name, v):
        if v is None or name not in SEQUENCE_ARGS or v.dim() == 2:
            return v
        if complex_A and name in ("B", "C"):
            return v[..., 2 * steps.start: 2 * steps.stop]
        return v[..., steps]

    return {k: cut(k, v) for k, v in kwargs.items()}


@pytest.mark.parametrize("complex_A", [False, True], ids=["real-A", "complex-A"])
@pytest.mark.parametrize("b_layout,c_layout",
                         [("shared", "grouped"), ("fixed", "shared"), ("grouped", "fixed")])
def test_reference_from_the_last_state_of_a_prefix_continues_the_sequence(b_layout, c_layout, complex_A):
    # Scanning [prefix, rest] at once equals scanning the prefix, then the rest from its last state.
    L = 13
    for seed, split in enumerate([0, 1, 6, 13]):
        kwargs = random_scan_inputs(2, 6, 4, L, b_layout=b_layout, c_layout=c_layout, complex_A=complex_A,
                                    groups=3, seed=seed)
        whole, whole_last = selective_scan_ref(**kwargs, delta_softplus=True, return_last_state=True)
        first, h = selective_scan_ref(**_steps(kwargs, slice(0, split), complex_A), delta_softplus=True,
                                      return_last_state=True)
        rest, last = selective_scan_ref(**_steps(kwargs, slice(split, L), complex_A), delta_softplus=True,
                                        return_last_state=True, initial_state=h)
        torch.testing.assert_close(torch.cat([first, rest], dim=-1), whole, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(last, whole_last, rtol=1e-12, atol=1e-12)


def test_reference_initial_state_of_zeros_is_the_default():
    kwargs = random_scan_inputs(2, 3, 4, 7, b_layout="shared", c_layout="shared", complex_A=False, seed=2)
    zeros = torch.zeros(2, 3, 4, dtype=torch.float64)
    for a, b in zip(selective_scan_ref(**kwargs, return_last_state=True),
                    selective_scan_ref(**kwargs, return_last_state=True, initial_state=zeros), strict=True):
        assert torch.equal(a, b)


def _compare(fn, kwargs: dict, softplus: bool, dtype: torch.dtype, what: str) -> None:
    """``fn`` in ``dtype`` against the float64 reference on the same numbers: out, last state, and the
    gradient of every input including initial_state."""
    inputs = {k: (v.to(dtype) if v is not None else None) for k, v in kwargs.items()}
    want = _outputs_and_grads(selective_scan_ref, {k: (v.double() if v is not None else None)
                                                   for k, v in inputs.items()}, softplus)
    got = _outputs_and_grads(fn, inputs, softplus)
    assert len(got) == 2 + sum(v is not None for v in inputs.values())
    assert got[0].dtype == dtype and got[1].dtype == dtype
    _assert_close_relative(got, want, 1e-8 if dtype == torch.float64 else 1e-4, what)


OPTIONS = ALL_OPTIONS   # (D, z, delta_bias, delta_softplus), every combination


@pytest.mark.parametrize("kernel", ["lanes", "per-channel"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_cpu_backend_matches_reference_with_initial_state(dtype, kernel, monkeypatch):
    # Every combination of options; L: one step, two chunks and a partial one, exactly three chunks.
    monkeypatch.setattr(scan_cpu, "CHUNK", 4)
    cpu = functools.partial(selective_scan_cpu, forward_kernel="auto" if kernel == "lanes" else "channels")
    calls = _count_lane_kernel_calls(monkeypatch)
    layouts = [("shared", "grouped", 1), ("grouped", "shared", 9), ("shared", "shared", 12),
               ("fixed", "shared", 9), ("grouped", "fixed", 12)]
    for seed, options in enumerate(OPTIONS):
        with_D, with_z, with_bias, softplus = options
        b_layout, c_layout, L = layouts[seed % len(layouts)]
        kwargs = random_scan_inputs(2, 6, 5, L, b_layout=b_layout, c_layout=c_layout, complex_A=False,
                                    groups=3, with_D=with_D, with_z=with_z, with_bias=with_bias, seed=seed)
        kwargs = _with_initial_state(_stable(kwargs, softplus), seed)
        what = f"{kernel} {options} {b_layout}/{c_layout} L={L}"
        _compare(cpu, kwargs, softplus, dtype, what)
    assert bool(calls) == (kernel == "lanes" and dtype == torch.float32)


@pytest.mark.parametrize("kernel", ["lanes", "per-channel"])
@pytest.mark.parametrize("L", [1, 131])
def test_cpu_backend_with_initial_state_at_the_default_chunk(L, kernel, monkeypatch):
    assert scan_cpu.CHUNK == 64
    cpu = functools.partial(selective_scan_cpu, forward_kernel="lanes" if kernel == "lanes" else "channels")
    # Two groups of 20 channels: lane blocks of 20 channels in 32 lanes (the 12 padding lanes stay 0).
    kwargs = random_scan_inputs(2, 40, 16, L, b_layout="grouped", c_layout="shared", complex_A=False,
                                groups=2, seed=L)
    _compare(cpu, _with_initial_state(kwargs, L), True, torch.float32, f"{kernel} L={L}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_chunked_backend_matches_reference_with_initial_state(chunk, dtype, monkeypatch):
    monkeypatch.setattr(scan_chunked, "CHUNK", chunk)
    for seed, (b_layout, c_layout, L) in enumerate([("shared", "grouped", 1), ("fixed", "shared", 10)]):
        options = OPTIONS[-1] if seed == 0 else OPTIONS[0]
        with_D, with_z, with_bias, softplus = options
        kwargs = random_scan_inputs(2, 6, 5, L, b_layout=b_layout, c_layout=c_layout, complex_A=False,
                                    groups=3, with_D=with_D, with_z=with_z, with_bias=with_bias, seed=seed)
        kwargs = _with_initial_state(_stable(kwargs, softplus), seed)
        _compare(selective_scan_chunked, kwargs, softplus, dtype, f"chunked {options} L={L}")


@pytest.mark.parametrize("name", ["cpu", "chunked"])
@pytest.mark.parametrize("absent", ["", "D-z-bias"])
def test_gradcheck_float64_with_initial_state(name, absent, monkeypatch):
    monkeypatch.setattr(scan_cpu, "CHUNK", 2)   # 5 steps: two full chunks and a partial one
    monkeypatch.setattr(scan_chunked, "CHUNK", 2)
    kwargs = random_scan_inputs(2, 4, 3, 5, b_layout="shared", c_layout="grouped", complex_A=False, groups=2,
                                seed=7, with_D=not absent, with_z=not absent, with_bias=not absent)
    kwargs = _with_initial_state(kwargs, 7)
    names = [k for k, v in kwargs.items() if v is not None]
    tensors = [kwargs[k].clone().requires_grad_(True) for k in names]

    def scan(*args):
        return selective_scan(**dict(zip(names, args, strict=True)), delta_softplus=True,
                              return_last_state=True, backend=name)

    assert torch.autograd.gradcheck(scan, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["ref", "cpu", "chunked"])
def test_empty_sequence_returns_the_initial_state(name):
    kwargs = _with_initial_state(random_scan_inputs(2, 3, 4, 0, b_layout="shared", c_layout="fixed",
                                                    complex_A=False), 0)
    h0 = kwargs["initial_state"].requires_grad_(True)
    out, last = selective_scan(**kwargs, return_last_state=True, backend=name)
    assert out.shape == (2, 3, 0) and torch.equal(last, h0) and last.data_ptr() != h0.data_ptr()
    weights = torch.randn(last.shape, dtype=last.dtype)
    (last * weights).sum().backward()
    assert torch.equal(h0.grad, weights)


def test_precision_is_the_widest_input_including_initial_state():
    # float32 activations with a float64 initial state compute in float64, as with any float64 input.
    kwargs = random_scan_inputs(1, 4, 3, 6, b_layout="shared", c_layout="shared", complex_A=False, seed=3)
    low = {k: (v.float() if v is not None else None) for k, v in kwargs.items()}
    low = _with_initial_state(low, 3)
    low["initial_state"] = low["initial_state"].double()
    want = selective_scan_ref(**low, delta_softplus=True, return_last_state=True)
    assert want[0].dtype == torch.float32 and want[1].dtype == torch.float64
    for name in ("cpu", "chunked"):
        got = selective_scan(**low, delta_softplus=True, return_last_state=True, backend=name)
        assert got[0].dtype == torch.float32 and got[1].dtype == torch.float64
        torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-10)


def test_one_compiled_kernel_per_dtype_with_or_without_initial_state():
    # The initial state (like D, z, bias) is a zero-size array when absent: no new compiled variants.
    for with_h0, c_layout in itertools.product([False, True], ["fixed", "shared"]):
        kwargs = random_scan_inputs(1, 2, 3, 4, b_layout="shared", c_layout=c_layout, complex_A=False,
                                    dtype=torch.float32)
        if with_h0:
            kwargs = _with_initial_state(kwargs, 0)
        leaves = {k: v.requires_grad_(True) for k, v in kwargs.items() if v is not None}
        selective_scan_cpu(**leaves, delta_softplus=True).sum().backward()
    assert_one_float32_variant_per_kernel()


_TRITON_CASES = '''
import sys
import torch
sys.path.insert(0, {tests_dir!r})
from test_selective_scan_backends import _assert_close_relative, _outputs_and_grads, _stable
from test_selective_scan_initial_state import OPTIONS, _with_initial_state
from scan_inputs import random_scan_inputs
from mambakit.ops import selective_scan_ref
from mambakit.ops.selective_scan import triton as scan_triton
scan_triton.CHUNK = 4   # 11 steps: two full chunks and a partial one
cases = [("shared", "grouped", torch.float64, 11), ("fixed", "shared", torch.float32, 11),
         ("grouped", "fixed", torch.float64, 1), ("grouped", "grouped", torch.float32, 9)]
for seed, (b_layout, c_layout, dtype, L) in enumerate(cases):
    with_D, with_z, with_bias, softplus = OPTIONS[5 * seed % len(OPTIONS)]
    kwargs = random_scan_inputs(2, 20, 5, L, b_layout=b_layout, c_layout=c_layout, complex_A=False, groups=2,
                                with_D=with_D, with_z=with_z, with_bias=with_bias, seed=seed)
    kwargs = _with_initial_state(_stable(kwargs, softplus), seed)   # 20 channels: a partial block of 16
    kwargs = {{k: (v.to(dtype) if v is not None else None) for k, v in kwargs.items()}}
    want = _outputs_and_grads(selective_scan_ref, {{k: (v.double() if v is not None else None)
                                                    for k, v in kwargs.items()}}, softplus)
    got = _outputs_and_grads(scan_triton.selective_scan_triton, kwargs, softplus)
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    _assert_close_relative(got, want, tol, f"triton {{b_layout}} {{c_layout}} L={{L}}")
empty = _with_initial_state(random_scan_inputs(2, 3, 4, 0, b_layout="shared", c_layout="fixed",
                                               complex_A=False), 0)
out, last = scan_triton.selective_scan_triton(**empty, return_last_state=True)
assert out.shape == (2, 3, 0) and torch.equal(last, empty["initial_state"])
print("triton interpreter: all cases match")
'''


def test_triton_backend_with_initial_state_under_interpreter_matches_reference():
    run_under_triton_interpreter(_TRITON_CASES)


def test_complex_A_with_initial_state_goes_to_the_reference():
    kwargs = random_scan_inputs(2, 4, 3, 6, b_layout="grouped", c_layout="shared", complex_A=True, groups=2)
    kwargs = _with_initial_state(kwargs, 1, complex_A=True)
    want = selective_scan_ref(**kwargs, delta_softplus=True, return_last_state=True)
    for backend in ("auto", "cpu", "chunked", "triton"):
        got = selective_scan(**kwargs, delta_softplus=True, return_last_state=True, backend=backend)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("name", ["ref", "cpu", "chunked"])
def test_bad_initial_state_is_named(name):
    kwargs = random_scan_inputs(2, 3, 4, 5, b_layout="shared", c_layout="shared", complex_A=False)
    bad = {
        "wrong shape": (torch.zeros(2, 3, 5, dtype=torch.float64), ShapeError, r"\(2, 3, 4\)"),
        "missing batch": (torch.zeros(3, 4, dtype=torch.float64), ShapeError, "3 dimensions"),
        "integer": (torch.zeros(2, 3, 4, dtype=torch.long), DTypeError, "floating"),
        "complex for real A": (torch.zeros(2, 3, 4, dtype=torch.complex128), DTypeError, "real"),
        "other device": (torch.zeros(2, 3, 4, dtype=torch.float64, device="meta"), DeviceError, "meta"),
        "not a tensor": (0.0, DTypeError, "torch.Tensor"),
    }
    for h0, error, message in bad.values():
        with pytest.raises(error, match=f"initial_state.*{message}"):
            selective_scan(**kwargs, initial_state=h0, backend=name)


def test_real_initial_state_for_complex_A_is_named():
    kwargs = random_scan_inputs(1, 2, 3, 4, b_layout="shared", c_layout="shared", complex_A=True)
    with pytest.raises(DTypeError, match="initial_state: must be complex when A is complex"):
        selective_scan(**kwargs, initial_state=torch.zeros(1, 2, 3, dtype=torch.float64))


def test_initial_state_is_keyword_only():
    # The positional order stays the official one: u, delta, A, B, C, D, z, delta_bias, softplus, last.
    kwargs = random_scan_inputs(1, 2, 3, 4, b_layout="shared", c_layout="shared", complex_A=False)
    args = [kwargs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    for fn in (selective_scan_ref, selective_scan_cpu, selective_scan_chunked):
        with pytest.raises(TypeError):
            fn(*args, True, True, torch.zeros(1, 2, 3, dtype=torch.float64))
