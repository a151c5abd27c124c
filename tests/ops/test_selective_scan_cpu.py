"""The fused CPU scan (backend "cpu") does the bias, softplus, D·u skip and SiLU(z) gate inside its kernels:
each of them, alone and together, against selective_scan_ref (outputs and every gradient), at the edges
(delta before softplus in [-50, 50], one step, lengths across chunk boundaries), under float64 gradcheck,
and without keeping dt or the ungated y for the backward pass. The float32 forward with input-dependent B and
C runs the channel-vectorised kernel (scan_cpu_lanes): its blocks of channels, its results against the
reference and against the per-channel kernel (the chunk states the backward pass reads), partial blocks
and group boundaries."""

from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scan_inputs import random_scan_inputs
from test_selective_scan_backends import _assert_close_relative, _outputs_and_grads, _stable

from mambakit.errors import ConfigError
from mambakit.ops import selective_scan_ref
from mambakit.ops.cpu.kernel_math import softplus_float32
from mambakit.ops.selective_scan import cpu as scan_cpu
from mambakit.ops.selective_scan import cpu_lanes as scan_cpu_lanes
from mambakit.ops.selective_scan.common import kernel_layout
from mambakit.ops.selective_scan.cpu import selective_scan_cpu

ALL_OPTIONS = list(itertools.product([False, True], repeat=4))   # (D, z, delta_bias, delta_softplus)


def _ids(options) -> str:
    names = ("D", "z", "bias", "softplus")
    return "-".join(name for name, on in zip(names, options, strict=True) if on) or "none"


def _compare(kwargs: dict, softplus: bool, dtype: torch.dtype, what: str) -> None:
    """The cpu backend in ``dtype`` against the float64 reference on the same numbers."""
    inputs = {k: (v.to(dtype) if v is not None else None) for k, v in kwargs.items()}
    want = _outputs_and_grads(selective_scan_ref, {k: (v.double() if v is not None else None)
                                                   for k, v in inputs.items()}, softplus)
    got = _outputs_and_grads(selective_scan_cpu, inputs, softplus)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    _assert_close_relative(got, want, 1e-8 if dtype == torch.float64 else 1e-4, what)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("options", ALL_OPTIONS, ids=_ids)
def test_every_combination_of_options_matches_reference(options, dtype, monkeypatch):
    monkeypatch.setattr(scan_cpu, "CHUNK", 4)
    with_D, with_z, with_bias, softplus = options
    # L: one step; two chunks and a partial one; exactly three chunks.
    layouts = [("shared", "grouped", 1), ("fixed", "shared", 9), ("grouped", "fixed", 12)]
    for seed, (b_layout, c_layout, L) in enumerate(layouts):
        kwargs = random_scan_inputs(2, 6, 5, L, b_layout=b_layout, c_layout=c_layout, complex_A=False,
                                    groups=3, with_D=with_D, with_z=with_z, with_bias=with_bias, seed=seed)
        _compare(_stable(kwargs, softplus), softplus, dtype, f"{_ids(options)} {b_layout}/{c_layout} L={L}")


@pytest.mark.parametrize("L", [1, 63, 64, 65, 200])
def test_lengths_around_the_default_chunk(L):
    assert scan_cpu.CHUNK == 64
    kwargs = random_scan_inputs(1, 3, 16, L, b_layout="shared", c_layout="shared", complex_A=False, seed=L)
    _compare(kwargs, True, torch.float32, f"L={L}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_delta_from_minus_50_to_50_before_softplus(dtype, with_bias):
    # Every step size the softplus sees, both sides of torch's threshold (20), with large gates as well.
    L = 101
    kwargs = random_scan_inputs(2, 4, 3, L, b_layout="grouped", c_layout="shared", complex_A=False, groups=2,
                                with_bias=with_bias, seed=3)
    kwargs["delta"] = torch.linspace(-50, 50, L, dtype=torch.float64).repeat(2, 4, 1)
    kwargs["delta"][1] = kwargs["delta"][1].flip(-1)
    kwargs["z"] = kwargs["z"] * 30
    kwargs["A"] = kwargs["A"] * torch.logspace(-3, 3, 3, dtype=torch.float64)   # |A| from 1e-3 to 1e3
    _compare(kwargs, True, dtype, f"delta in [-50, 50] {dtype}")


def test_softplus_in_the_kernel_is_torch_softplus_with_threshold_20():
    # With A = 0, B = C = u = 1 and N = 1, the first output is dt_0 = softplus(delta_0 + bias) itself.
    x = torch.cat([torch.linspace(-60, 60, 4001, dtype=torch.float64), torch.tensor([19.999, 20.0, 20.001])])
    n = x.numel()
    ones = torch.ones(1, n, 1, dtype=torch.float64)
    bias = torch.full((n,), 0.25, dtype=torch.float64)
    delta = (x - 0.25).reshape(1, n, 1)
    out = selective_scan_cpu(ones, delta, torch.zeros(n, 1, dtype=torch.float64), ones.reshape(n, 1),
                             ones.reshape(n, 1), delta_bias=bias, delta_softplus=True)
    torch.testing.assert_close(out.flatten(), F.softplus(delta.flatten() + bias), rtol=1e-15, atol=0)


def test_float32_softplus_is_accurate_and_never_overflows():
    x = np.concatenate([np.linspace(-80, 80, 1_000_001, dtype=np.float32),
                        np.random.default_rng(0).uniform(-25, 25, 100_000).astype(np.float32)])
    got = softplus_float32(x).astype(np.float64)
    want = F.softplus(torch.from_numpy(x.astype(np.float64))).numpy()
    assert np.max(np.abs(got - want) / want) < 1e-6
    assert np.array_equal(got[x > 20], x[x > 20].astype(np.float64))   # the identity above the threshold
    special = softplus_float32(np.array([np.nan, -np.inf, np.inf, 1e30, -1e30], dtype=np.float32))
    assert np.isnan(special[0]) and special[1] == 0.0 and np.isposinf(special[2])
    assert special[3] == np.float32(1e30) and special[4] == 0.0


@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "no-softplus"])
@pytest.mark.parametrize("absent", ["", "D", "z", "delta_bias"], ids=lambda a: f"no-{a}" if a else "all")
def test_gradcheck_float64_every_input(softplus, absent, monkeypatch):
    monkeypatch.setattr(scan_cpu, "CHUNK", 2)   # 5 steps: two full chunks and a partial one
    kwargs = random_scan_inputs(2, 4, 3, 5, b_layout="shared", c_layout="grouped", complex_A=False, groups=2,
                                seed=7)
    kwargs = _stable(kwargs, softplus)
    if absent:
        kwargs[absent] = None
    names = [k for k, v in kwargs.items() if v is not None]
    tensors = [kwargs[k].clone().requires_grad_(True) for k in names]

    def scan(*args):
        return selective_scan_cpu(**dict(zip(names, args, strict=True)), delta_softplus=softplus,
                                  return_last_state=True)

    assert torch.autograd.gradcheck(scan, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_non_contiguous_inputs_match_reference():
    # As in a Mamba block: x and z are halves of one (batch, L, 2·dim) projection, transposed.
    gen = torch.Generator().manual_seed(4)
    batch, dim, L, N = 2, 6, 19, 4
    xz = torch.randn(batch, L, 2 * dim, generator=gen, dtype=torch.float64)
    u, z = xz[..., :dim].transpose(1, 2), xz[..., dim:].transpose(1, 2)
    delta = torch.randn(batch, L, dim, generator=gen, dtype=torch.float64).transpose(1, 2) * 0.5
    BC = torch.randn(batch, L, 2 * N, generator=gen, dtype=torch.float64)
    kwargs = dict(u=u, delta=delta, A=-torch.rand(N, dim, generator=gen, dtype=torch.float64).T,
                  B=BC[..., :N].transpose(1, 2), C=BC[..., N:].transpose(1, 2),
                  D=torch.randn(2 * dim, generator=gen, dtype=torch.float64)[::2], z=z,
                  delta_bias=torch.randn(dim, generator=gen, dtype=torch.float64))
    assert not any(v.is_contiguous() for k, v in kwargs.items() if k != "delta_bias")
    want = _outputs_and_grads(selective_scan_ref, kwargs, True)
    _assert_close_relative(_outputs_and_grads(selective_scan_cpu, kwargs, True), want, 1e-8, "non-contiguous")


def test_backward_keeps_only_the_chunk_states_beyond_the_inputs():
    # Time-invariant B and C need no layout copy, so everything kept for backward that is not an input is
    # the boundary states, batch·dim·ceil(L / CHUNK)·N numbers: no dt, no ungated y, nothing (batch, dim, L).
    batch, dim, L, N = 2, 8, 300, 4
    kwargs = random_scan_inputs(batch, dim, N, L, b_layout="fixed", c_layout="fixed", complex_A=False,
                                dtype=torch.float32)
    leaves = {k: v.requires_grad_(True) for k, v in kwargs.items()}
    inputs = {v.untyped_storage().data_ptr() for v in leaves.values()}
    kept: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in inputs:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = selective_scan_cpu(**leaves, delta_softplus=True)
    assert sum(kept.values()) == batch * dim * -(-L // scan_cpu.CHUNK) * N
    out.sum().backward()
    assert all(v.grad is not None for v in leaves.values())


def test_absent_options_do_not_compile_new_kernel_variants():
    # D, z and delta_bias are passed as zero-size arrays when absent: one compiled kernel per dtype.
    # Both forward kernels: the per-channel one (C fixed) and the channel-vectorised one (B and C per step).
    for options, c_layout in itertools.product(ALL_OPTIONS, ["fixed", "shared"]):
        with_D, with_z, with_bias, softplus = options
        kwargs = random_scan_inputs(1, 2, 3, 4, b_layout="shared", c_layout=c_layout, complex_A=False,
                                    with_D=with_D, with_z=with_z, with_bias=with_bias, dtype=torch.float32)
        leaves = {k: v.requires_grad_(True) for k, v in kwargs.items() if v is not None}
        selective_scan_cpu(**leaves, delta_softplus=softplus).sum().backward()
    assert_one_float32_variant_per_kernel()


def assert_one_float32_variant_per_kernel() -> None:
    """Every fused kernel (both forwards, the backward) has been compiled for float32 exactly once."""
    for kernel in (scan_cpu.scan_forward_kernel, scan_cpu.scan_backward_kernel,
                   scan_cpu_lanes.scan_forward_lanes_kernel):
        float32 = [sig for sig in kernel.signatures if sig[0].dtype == numba.types.float32]
        assert len(float32) == 1, f"{kernel.__name__}: {len(float32)} float32 variants"


# The channel-vectorised forward kernel (scan_cpu_lanes), which float32 with input-dependent B and C uses.

@pytest.mark.parametrize("batch,dim,dpg_b,dpg_c,lanes", [
    (2, 10, 10, 10, 4),    # lanes not dividing dim
    (1, 6, 6, 6, 32),      # dim < lanes
    (2, 15, 5, 15, 4),     # B in 3 groups of 5 channels, C shared: blocks of 4 and 1 per group
    (1, 12, 4, 6, 5),      # B and C grouped differently: blocks end at either group's boundary
    (3, 7, 1, 7, 4),       # one channel per group of B
])
def test_lane_blocks_cover_every_channel_once_within_one_group(batch, dim, dpg_b, dpg_c, lanes):
    blocks = scan_cpu_lanes.lane_blocks(batch, dim, dpg_b, dpg_c, lanes)
    covered = np.zeros((batch, dim), dtype=int)
    for b, d0, d1 in blocks:
        assert 0 < d1 - d0 <= lanes
        assert d0 // dpg_b == (d1 - 1) // dpg_b and d0 // dpg_c == (d1 - 1) // dpg_c
        covered[b, d0:d1] += 1
    assert (covered == 1).all()


def _count_lane_kernel_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    kernel = scan_cpu_lanes.scan_forward_lanes_kernel

    def counting(*args):
        calls.append(1)
        return kernel(*args)

    monkeypatch.setattr(scan_cpu_lanes, "scan_forward_lanes_kernel", counting)
    return calls


LANE_CASES = {   # name: (batch, dim, N, L, groups, b_layout, c_layout, lanes)
    "lanes-not-dividing-dim": (2, 10, 5, 9, 1, "shared", "shared", 4),
    "dim-below-lanes": (1, 6, 4, 12, 1, "shared", "grouped", 32),
    "groups-not-multiple-of-lanes": (2, 15, 3, 9, 3, "grouped", "grouped", 4),
    "B-grouped-C-shared": (1, 12, 4, 5, 3, "grouped", "shared", 5),
    "one-step": (2, 9, 3, 1, 3, "grouped", "shared", 4),
    "exact-chunks": (1, 8, 6, 12, 2, "shared", "grouped", 3),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", list(LANE_CASES))
def test_channel_vectorised_forward_matches_reference(case, dtype, monkeypatch):
    # float64 stays on the per-channel kernel; float32 must go through the lane kernel.
    batch, dim, N, L, groups, b_layout, c_layout, lanes = LANE_CASES[case]
    monkeypatch.setattr(scan_cpu, "CHUNK", 4)
    monkeypatch.setattr(scan_cpu_lanes, "LANES", lanes)
    calls = _count_lane_kernel_calls(monkeypatch)
    for seed, options in enumerate([(True, True, True, True), (False, False, False, False),
                                    (True, False, True, True), (False, True, False, False)]):
        with_D, with_z, with_bias, softplus = options
        kwargs = random_scan_inputs(batch, dim, N, L, b_layout=b_layout, c_layout=c_layout, complex_A=False,
                                    groups=groups, with_D=with_D, with_z=with_z, with_bias=with_bias,
                                    seed=seed)
        _compare(_stable(kwargs, softplus), softplus, dtype, f"{case} {_ids(options)}")
    assert bool(calls) == (dtype == torch.float32)


@pytest.mark.parametrize("with_starts", [False, True], ids=["one-sequence", "packed"])
@pytest.mark.parametrize("with_initial_state", [False, True], ids=["from-zero", "initial-state"])
@pytest.mark.parametrize("case", list(LANE_CASES))
def test_lane_kernel_writes_what_the_per_channel_kernel_writes(case, with_initial_state, with_starts):
    # The backward kernel reads the saved chunk states: both forward kernels must write the same ones.
    batch, dim, N, L, groups, b_layout, c_layout, lanes = LANE_CASES[case]
    kwargs = random_scan_inputs(batch, dim, N, L, b_layout=b_layout, c_layout=c_layout, complex_A=False,
                                groups=groups, seed=11, dtype=torch.float32)
    Bk, b_index = kernel_layout(kwargs["B"], dim)
    Ck, c_index = kernel_layout(kwargs["C"], dim)
    arrays = [kwargs[k].numpy() for k in ("u", "delta", "A")] + [Bk.numpy(), Ck.numpy()]
    h0 = (np.random.default_rng(12).standard_normal((batch, dim, N)).astype(np.float32) if with_initial_state
          else np.empty((0, 0, 0), np.float32))
    starts = (np.random.default_rng(13).random((batch, L)) < 0.2).astype(np.uint8) if with_starts \
        else np.empty((0, 0), np.uint8)
    options = [kwargs[k].numpy() for k in ("D", "z", "delta_bias")] + [h0, starts, True]
    chunk, zero = 4, np.float32(0)
    results = []
    for lane_kernel in (False, True):
        outs = [np.full((batch, dim, L), np.nan, np.float32), np.full((batch, dim, -(-L // chunk), N), np.nan,
                np.float32), np.full((batch, dim, N), np.nan, np.float32)]
        if lane_kernel:
            blocks = scan_cpu_lanes.lane_blocks(batch, dim, b_index[2], c_index[2], lanes)
            scan_cpu_lanes.scan_forward_lanes_kernel(*arrays, *options, b_index[0], b_index[2], c_index[0],
                                                      c_index[2], chunk, blocks, 0, len(blocks), zero,
                                                      *outs)
        else:
            scan_cpu.scan_forward_kernel(*arrays, *options, *b_index, *c_index, chunk, 0, batch * dim, zero,
                                          *outs)
        results.append(outs)
    if with_initial_state:
        np.testing.assert_array_equal(results[1][1][:, :, 0], h0)   # the first saved state is h0
    for per_channel, lanes_out in zip(*results, strict=True):
        assert np.isfinite(lanes_out).all()
        np.testing.assert_allclose(lanes_out, per_channel, rtol=1e-5, atol=1e-5 * np.abs(per_channel).max())


def test_lane_kernel_at_the_extremes():
    # delta in [-50, 50] before softplus, |A| from 1e-3 to 1e3, large gates; lanes past the last channel.
    L = 101
    kwargs = random_scan_inputs(2, 5, 3, L, b_layout="grouped", c_layout="shared", complex_A=False, groups=5,
                                seed=5)
    kwargs["delta"] = torch.linspace(-50, 50, L, dtype=torch.float64).repeat(2, 5, 1)
    kwargs["delta"][1] = kwargs["delta"][1].flip(-1)
    kwargs["z"] = kwargs["z"] * 30
    kwargs["A"] = kwargs["A"] * torch.logspace(-3, 3, 3, dtype=torch.float64)
    _compare(kwargs, True, torch.float32, "lane kernel, extremes")


def test_lane_kernel_exp2_is_accurate_and_exact_at_the_ends():
    t = np.concatenate([np.linspace(-125, 127, 2_000_001, dtype=np.float32),
                        np.random.default_rng(1).uniform(-30, 1, 200_000).astype(np.float32)])
    got = scan_cpu_lanes.exp2_float32(t).astype(np.float64)
    want = np.exp2(t.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 3e-7
    special = scan_cpu_lanes.exp2_float32(
        np.array([np.nan, -np.inf, np.inf, -127.6, -1e30, 127.6, 1e30, 0.0], dtype=np.float32))
    assert np.isnan(special[0])
    assert special[1] == 0.0 and special[3] == 0.0 and special[4] == 0.0
    assert np.isposinf(special[2]) and np.isposinf(special[5]) and np.isposinf(special[6])
    assert special[7] == 1.0


def test_forward_kernel_choice_is_explicit_and_checked():
    kwargs = random_scan_inputs(1, 8, 4, 9, b_layout="shared", c_layout="shared", complex_A=False, seed=5)
    f32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    lanes = selective_scan_cpu(**f32, forward_kernel="lanes")
    channels = selective_scan_cpu(**f32, forward_kernel="channels")
    torch.testing.assert_close(lanes, channels, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="^forward_kernel"):
        selective_scan_cpu(**f32, forward_kernel="vector")
    with pytest.raises(ConfigError, match="^forward_kernel"):   # float64 has only the per-channel kernel
        selective_scan_cpu(**kwargs, forward_kernel="lanes")
