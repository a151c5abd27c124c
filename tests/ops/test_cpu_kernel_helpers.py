"""Helpers the numba CPU kernels share: softplus_with_grad (softplus and its derivative from one exp) against
float64 torch, and njit_noalias (LLVM told that the kernel's pointer arguments never overlap) by the IR it
compiles to, its results, and its fallback."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numba import njit, types

from mambakit.ops.cpu import noalias
from mambakit.ops.cpu.kernel_math import FASTMATH, softplus_float32, softplus_with_grad
from mambakit.ops.selective_scan import cpu_lanes, cpu_lanes_bwd
from mambakit.ops.selective_scan.cpu import selective_scan_cpu


@njit(fastmath=FASTMATH)   # as the kernels compile it
def _softplus_with_grad_over(x, value, grad):
    for i in range(x.shape[0]):
        value[i], grad[i] = softplus_with_grad(x[i])


def _pair(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    value, grad = np.empty_like(x), np.empty_like(x)
    _softplus_with_grad_over(x, value, grad)
    return value, grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
def test_softplus_with_grad_is_softplus_and_sigmoid(dtype):
    x = np.concatenate([np.linspace(-100, 100, 400_001), [19.999, 20.0, 20.001, -20.0, 0.0, -0.0],
                        np.random.default_rng(2).uniform(-25, 25, 100_000)]).astype(dtype)
    value, grad = _pair(x)
    x64 = torch.from_numpy(x.astype(np.float64))
    want_value = F.softplus(x64).numpy()
    want_grad = torch.where(x64 > 20, 1.0, torch.sigmoid(x64)).numpy()   # torch's softplus backward
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    # below -80 the float32 exp(-|x|) is flushed to 0, and with it both results (under 2e-35 there)
    normal = x > -80 if dtype == np.float32 else np.ones_like(x, dtype=bool)
    for got, want in ((value, want_value), (grad, want_grad)):
        assert np.max(np.abs(got[normal] - want[normal]) / want[normal]) < rtol
        assert np.all(np.abs(got[~normal]) < 1e-34)
    if dtype == np.float32:   # the softplus every other kernel computes, to one rounding (fastmath's order)
        np.testing.assert_array_max_ulp(value, softplus_float32(x), maxulp=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
def test_softplus_with_grad_at_the_special_values(dtype):
    value, grad = _pair(np.array([np.nan, -np.inf, np.inf, 1e30, -1e30], dtype=dtype))
    assert np.isnan(value[0]) and np.isnan(grad[0])
    assert value[1] == 0.0 and grad[1] == 0.0
    assert np.isposinf(value[2]) and grad[2] == 1.0
    assert value[3] == dtype(1e30) and grad[3] == 1.0
    assert value[4] == 0.0 and grad[4] == 0.0


def _axpy(x, y, out):
    for i in range(x.shape[0]):
        out[i] += x[i] * y[i]


def _data_pointers(kernel) -> dict[str, bool]:
    """Per array argument of ``kernel``'s first compiled signature, whether its data pointer (field 4 of
    numba's array struct, the one loads and stores go through) is ``noalias`` in the LLVM IR."""
    ir = kernel.inspect_llvm(kernel.signatures[0])
    define = next(line for line in ir.splitlines() if line.startswith("define") and "%retptr" in line)
    return {name: "noalias" in attributes
            for attributes, name in re.findall(r"(?:ptr|\*) ([^%,]*)%arg\.([\w.]+)\.4(?=[ ,)])", define)}


@pytest.mark.skipif(not noalias.NOALIAS_AVAILABLE, reason="this numba has no noalias flag")
def test_njit_noalias_marks_every_array_argument_and_plain_njit_none():
    x, y = np.arange(8.0), np.ones(8)
    out_plain, out_noalias = np.zeros(8), np.zeros(8)
    plain, marked = njit(_axpy), noalias.njit_noalias()(_axpy)
    plain(x, y, out_plain)
    marked(x, y, out_noalias)
    np.testing.assert_array_equal(out_noalias, x * y)
    np.testing.assert_array_equal(out_plain, out_noalias)
    assert _data_pointers(plain) == {"x": False, "y": False, "out": False}
    assert _data_pointers(marked) == {"x": True, "y": True, "out": True}


def _fresh_noalias_compile(kernel, signature):
    """``kernel``'s source and options compiled afresh for ``signature`` (numba shows no IR for code loaded
    from its cache; when the wrapper is loaded from it, the inner kernel is inlined and never compiled)."""
    assert kernel._compiler._customize_flags is noalias._with_noalias   # the real one is hooked too
    options = {k: v for k, v in kernel.targetoptions.items() if k != "nopython"}
    fresh = noalias.njit_noalias(**options)(kernel.py_func)
    fresh.compile(signature)
    return fresh


@pytest.mark.skipif(not noalias.NOALIAS_AVAILABLE, reason="this numba has no noalias flag")
def test_the_lane_kernels_compile_noalias():
    g = torch.Generator().manual_seed(0)
    b, d, n, L = 1, 8, 4, 10
    u, delta = torch.randn(b, d, L, generator=g), torch.rand(b, d, L, generator=g)
    A = -torch.rand(d, n, generator=g)
    B, C = torch.randn(b, 1, n, L, generator=g), torch.randn(b, 1, n, L, generator=g)
    u.requires_grad_(True)
    selective_scan_cpu(u, delta, A, B, C, delta_softplus=True).sum().backward()
    forward, backward = cpu_lanes.scan_forward_lanes_kernel, cpu_lanes_bwd.scan_backward_lanes_kernel
    assert forward.signatures and backward.signatures, "float32, B and C per step: not the lane kernels"
    tile2, tile3 = types.Array(types.float32, 2, "C"), types.Array(types.float32, 3, "C")

    inner = _fresh_noalias_compile(cpu_lanes._forward_blocks, (
        *forward.signatures[0], types.UniTuple(tile2, 2), types.UniTuple(tile2, 3), tile2))
    pointers = _data_pointers(inner)
    assert {"u", "Bk", "out", "states", "last", "per_n.0", "per_step.2", "rows"} <= set(pointers)
    assert len(pointers) == 14 + 6 and all(pointers.values()), pointers

    inner = _fresh_noalias_compile(cpu_lanes_bwd._backward_blocks, (
        *backward.signatures[0], types.UniTuple(tile2, 5), types.UniTuple(tile3, 2), types.UniTuple(tile2, 7),
        types.UniTuple(tile2, 7)))
    pointers = _data_pointers(inner)
    # the inputs, the outputs, the partial sums and every scratch tile (5 + 2 + 7 + 7 in four tuples)
    assert {"u", "dout", "states", "du", "ddelta", "dA_part", "per_n.0", "per_row.6"} <= set(pointers)
    assert len(pointers) == 22 + 21 and all(pointers.values()), pointers


def test_njit_noalias_without_the_flag_is_plain_njit(monkeypatch):
    monkeypatch.setattr(noalias, "NOALIAS_AVAILABLE", False)
    kernel = noalias.njit_noalias()(_axpy)
    x, out = np.arange(5.0), np.zeros(5)
    kernel(x, x, out)
    np.testing.assert_array_equal(out, x * x)
    assert _data_pointers(kernel) == {"x": False, "y": False, "out": False}
