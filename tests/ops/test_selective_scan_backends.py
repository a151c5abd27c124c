"""Every fast selective-scan backend against selective_scan_ref: outputs, last state and all gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scan_inputs import LAYOUTS, random_scan_inputs

from mambakit.errors import ConfigError, DTypeError
from mambakit.ops import available_backends, selective_scan, selective_scan_ref
from mambakit.ops.selective_scan import auto_backend, resolve_backend
from mambakit.ops.selective_scan import chunked as scan_chunked
from mambakit.ops.selective_scan import cpu as scan_cpu
from mambakit.ops.selective_scan.chunked import selective_scan_chunked
from mambakit.ops.selective_scan.cpu import selective_scan_cpu

FAST = {"cpu": selective_scan_cpu, "chunked": selective_scan_chunked}
CHUNK_MODULES = {"cpu": scan_cpu, "chunked": scan_chunked}
# (D, z, delta_bias, delta_softplus) combinations tried in every layout: all, none, and two mixed.
OPTIONS = [(True, True, True, True), (False, False, False, False), (True, False, False, True),
           (False, True, True, False)]


@pytest.fixture(params=["default", 3], ids=["chunk=default", "chunk=3"])
def small_chunk(request, monkeypatch):
    """Run with the backends' own chunk length, and with 3 so short sequences cross many chunk boundaries."""
    if request.param != "default":
        for module in CHUNK_MODULES.values():
            monkeypatch.setattr(module, "CHUNK", request.param)
    return request.param


def _outputs_and_grads(fn, kwargs: dict, softplus: bool) -> list[torch.Tensor]:
    """[out, last_state, d/d each input] for a random linear loss on both outputs."""
    names = [k for k, v in kwargs.items() if v is not None]
    leaves = {k: kwargs[k].detach().clone().requires_grad_(True) for k in names}
    args = {**kwargs, **leaves}
    out, last = fn(**args, delta_softplus=softplus, return_last_state=True)
    # Fixed random weights on both outputs (the gradient flowing in is the same for every backend).
    gen = torch.Generator().manual_seed(1234)
    loss = ((out * torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)).sum()
            + (last * torch.randn(last.shape, generator=gen, dtype=torch.float64).to(last.dtype)).sum())
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return [out.detach(), last.detach(), *grads]


def _stable(kwargs: dict, softplus: bool) -> dict:
    """Without softplus a negative step makes the state grow without bound; keep steps >= 0 there."""
    if softplus:
        return kwargs
    return {k: (v.abs() if k in ("delta", "delta_bias") and v is not None else v) for k, v in kwargs.items()}


def _assert_close_relative(got: list[torch.Tensor], want: list[torch.Tensor], tol: float, what: str) -> None:
    """Each tensor within ``tol`` of the reference, relative to the reference's largest magnitude."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape, f"{what}[{i}]: shape {tuple(g.shape)} != {tuple(w.shape)}"
        assert torch.isfinite(g).all(), f"{what}[{i}]: not finite"
        scale = w.double().abs().max().clamp_min(1e-30)
        err = (g.double() - w.double()).abs().max() / scale
        assert err <= tol, f"{what}[{i}]: relative error {err:.3e} > {tol:.0e}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("b_layout,c_layout", list(itertools.product(LAYOUTS, LAYOUTS)))
def test_backends_match_reference_all_layouts_and_options(b_layout, c_layout, dtype, small_chunk):
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    for seed, options in enumerate(OPTIONS):
        with_D, with_z, with_bias, softplus = options
        L = (1, 7, 70, 131)[seed]  # one step, under a chunk, and not a multiple of the chunk
        kwargs = random_scan_inputs(2, 6, 5, L, b_layout=b_layout, c_layout=c_layout, complex_A=False,
                                    groups=3, with_D=with_D, with_z=with_z, with_bias=with_bias, seed=seed)
        kwargs = _stable(kwargs, softplus)
        # The truth: the reference in float64 on the same numbers the backend sees in `dtype`.
        inputs = {k: (v.to(dtype) if v is not None else None) for k, v in kwargs.items()}
        want = _outputs_and_grads(selective_scan_ref, {k: (v.double() if v is not None else None)
                                                       for k, v in inputs.items()}, softplus)
        for name, fn in FAST.items():
            got = _outputs_and_grads(fn, inputs, softplus)
            assert got[0].dtype == dtype and got[1].dtype == dtype
            _assert_close_relative(got, want, tol, f"{name} {options} L={L}")


@settings(max_examples=12, deadline=None)
@given(
    batch=st.integers(1, 2),
    channels_per_group=st.integers(1, 3),
    groups=st.integers(1, 3),
    N=st.integers(1, 6),
    L=st.integers(1, 20),
    b_layout=st.sampled_from(LAYOUTS),
    c_layout=st.sampled_from(LAYOUTS),
    options=st.sampled_from(list(itertools.product([False, True], repeat=4))),
    seed=st.integers(0, 2**31 - 1),
)
def test_backends_match_reference_random_shapes(batch, channels_per_group, groups, N, L, b_layout, c_layout,
                                                options, seed):
    with_D, with_z, with_bias, softplus = options
    kwargs = random_scan_inputs(batch, groups * channels_per_group, N, L, b_layout=b_layout,
                                c_layout=c_layout, complex_A=False, groups=groups, with_D=with_D,
                                with_z=with_z, with_bias=with_bias, seed=seed)
    kwargs = _stable(kwargs, softplus)
    want = _outputs_and_grads(selective_scan_ref, kwargs, softplus)
    for name, fn in FAST.items():
        _assert_close_relative(_outputs_and_grads(fn, kwargs, softplus), want, 1e-8, name)


@pytest.mark.parametrize("name", sorted(FAST))
@pytest.mark.parametrize("b_layout,c_layout", [("grouped", "shared"), ("fixed", "grouped")])
def test_gradcheck_float64(name, b_layout, c_layout, monkeypatch):
    for module in CHUNK_MODULES.values():
        monkeypatch.setattr(module, "CHUNK", 2)  # 5 steps: two full chunks and a partial one
    kwargs = random_scan_inputs(2, 4, 3, 5, b_layout=b_layout, c_layout=c_layout, complex_A=False, groups=2,
                                seed=11)
    names = list(kwargs)
    tensors = [kwargs[k].clone().requires_grad_(True) for k in names]

    def scan(*args):
        return FAST[name](**dict(zip(names, args, strict=True)), delta_softplus=True, return_last_state=True)

    assert torch.autograd.gradcheck(scan, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


def _extreme_inputs(L: int, seed: int) -> dict:
    """delta in [-50, 50] before softplus, |A| from 1e-3 to 1e3, float32."""
    gen = torch.Generator().manual_seed(seed)
    dim, N = 2, 4
    delta = torch.rand(1, dim, L, generator=gen) * 100 - 50
    delta[..., :4] = torch.tensor([-50.0, 50.0, -50.0, 50.0])
    return dict(u=torch.randn(1, dim, L, generator=gen), delta=delta,
                A=-torch.tensor([1e-3, 1.0, 1e2, 1e3]).expand(dim, N).contiguous(),
                B=torch.randn(1, N, L, generator=gen), C=torch.randn(1, N, L, generator=gen),
                D=torch.ones(dim), z=torch.randn(1, dim, L, generator=gen) * 50)


def test_extreme_inputs_match_reference():
    kwargs = _extreme_inputs(300, seed=5)
    want = _outputs_and_grads(selective_scan_ref, {k: v.double() for k, v in kwargs.items()}, True)
    for name, fn in FAST.items():
        _assert_close_relative(_outputs_and_grads(fn, kwargs, True), want, 1e-4, name)


@pytest.mark.slow   # L >= 16k
def test_extreme_inputs_long_sequence_stay_finite():
    kwargs = _extreme_inputs(2**16, seed=6)
    results = {name: _outputs_and_grads(fn, kwargs, True) for name, fn in FAST.items()}
    for name, tensors in results.items():
        for i, t in enumerate(tensors):
            assert torch.isfinite(t).all(), f"{name}: output/gradient {i} has NaN or Inf at L = 2^16"
    _assert_close_relative(results["cpu"], results["chunked"], 1e-4, "cpu vs chunked")


@pytest.mark.parametrize("name", sorted(FAST))
def test_low_precision_activations(name):
    kwargs = random_scan_inputs(2, 4, 3, 9, b_layout="shared", c_layout="grouped", complex_A=False, groups=2)
    low = {k: (v.to(torch.bfloat16) if k in ("u", "delta", "B", "C", "z") else v.float())
           for k, v in kwargs.items()}
    want = selective_scan_ref(**low, delta_softplus=True, return_last_state=True)
    leaves = {k: v.clone().requires_grad_(True) for k, v in low.items()}
    out, last = FAST[name](**leaves, delta_softplus=True, return_last_state=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    torch.testing.assert_close(out, want[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(last, want[1], rtol=1e-4, atol=1e-4)
    out.float().sum().backward()
    for k, v in leaves.items():
        assert v.grad is not None and v.grad.dtype == v.dtype, k


@pytest.mark.parametrize("name", sorted(FAST))
def test_memory_kept_for_backward_is_not_batch_dim_L_N(name):
    # Sum the sizes of the tensors autograd keeps for the backward pass (inputs aside): a (batch, dim, L, N)
    # tensor would be batch·dim·L·N elements; a fused backend keeps O(batch·dim·L·(1 + N/chunk)).
    batch, dim, L, N = 1, 64, 256, 64
    kwargs = random_scan_inputs(batch, dim, N, L, b_layout="shared", c_layout="shared", complex_A=False,
                                dtype=torch.float32)
    leaves = {k: v.requires_grad_(True) for k, v in kwargs.items()}
    inputs = {v.untyped_storage().data_ptr() for v in leaves.values()}  # alive anyway, not counted
    storages: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in inputs:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = FAST[name](**leaves, delta_softplus=True)
    kept = sum(storages.values())
    assert kept < 0.5 * batch * dim * L * N, f"{name} keeps {kept} elements for backward"
    out.sum().backward()


def test_complex_A_falls_back_to_reference():
    kwargs = random_scan_inputs(2, 4, 3, 6, b_layout="grouped", c_layout="shared", complex_A=True, groups=2)
    want = selective_scan_ref(**kwargs, delta_softplus=True, return_last_state=True)
    for backend in ("auto", *FAST):
        got = selective_scan(**kwargs, delta_softplus=True, return_last_state=True, backend=backend)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
    for fn in FAST.values():
        with pytest.raises(DTypeError, match="A: .*real A"):
            fn(**kwargs)


def test_auto_picks_fused_cpu_backend_for_real_A_on_cpu():
    kwargs = random_scan_inputs(1, 2, 2, 3, b_layout="shared", c_layout="shared", complex_A=False)
    assert auto_backend(kwargs["u"], kwargs["A"]) == "cpu"
    assert resolve_backend("auto", kwargs["u"], kwargs["A"]) is selective_scan_cpu
    assert {"ref", "cpu", "chunked", "triton"} <= set(available_backends())
    via_dispatcher = selective_scan(**kwargs, delta_softplus=True)
    direct = selective_scan_cpu(**kwargs, delta_softplus=True)
    torch.testing.assert_close(via_dispatcher, direct, rtol=0, atol=0)


def test_unknown_backend_is_a_config_error():
    kwargs = random_scan_inputs(1, 2, 2, 3, b_layout="shared", c_layout="shared", complex_A=False)
    with pytest.raises(ConfigError, match="backend: expected 'auto' or one of .* got 'fast'"):
        selective_scan(**kwargs, backend="fast")


@pytest.mark.parametrize("name", sorted(FAST))
def test_bad_input_names_the_argument(name):
    kwargs = random_scan_inputs(1, 2, 2, 3, b_layout="shared", c_layout="shared", complex_A=False)
    kwargs["delta"] = kwargs["delta"][..., :2]
    with pytest.raises(ValueError, match="delta"):
        FAST[name](**kwargs)


@pytest.mark.parametrize("name", sorted(FAST))
def test_empty_sequence(name):
    kwargs = random_scan_inputs(2, 3, 2, 0, b_layout="shared", c_layout="fixed", complex_A=False)
    out, last = FAST[name](**kwargs, return_last_state=True)
    assert out.shape == (2, 3, 0) and torch.equal(last, torch.zeros(2, 3, 2, dtype=torch.float64))


def test_cpu_result_does_not_depend_on_thread_count():
    kwargs = random_scan_inputs(3, 5, 4, 40, b_layout="grouped", c_layout="fixed", complex_A=False, groups=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _outputs_and_grads(selective_scan_cpu, kwargs, True)
        torch.set_num_threads(2)
        two = _outputs_and_grads(selective_scan_cpu, kwargs, True)
    finally:
        torch.set_num_threads(threads)
    _assert_close_relative(two, one, 1e-12, "threads")


# ---- Triton: under the interpreter, in a subprocess (TRITON_INTERPRET must be set before the import) ----

_TRITON_CASES = '''
import itertools, sys
import torch
sys.path.insert(0, {tests_dir!r})
from test_selective_scan_backends import OPTIONS, _assert_close_relative, _outputs_and_grads, _stable
from scan_inputs import random_scan_inputs
from mambakit.ops import selective_scan_ref
from mambakit.ops.selective_scan import triton as scan_triton
scan_triton.CHUNK = 4   # 11 steps: two full chunks and a partial one
cases = [("shared", "grouped", torch.float64, 11), ("fixed", "shared", torch.float32, 11),
         ("grouped", "fixed", torch.float64, 1), ("grouped", "grouped", torch.float32, 9)]
for seed, (b_layout, c_layout, dtype, L) in enumerate(cases):
    with_D, with_z, with_bias, softplus = OPTIONS[seed]
    kwargs = random_scan_inputs(2, 6, 5, L, b_layout=b_layout, c_layout=c_layout, complex_A=False, groups=3,
                                with_D=with_D, with_z=with_z, with_bias=with_bias, seed=seed)
    kwargs = {{k: (v.to(dtype) if v is not None else None) for k, v in _stable(kwargs, softplus).items()}}
    want = _outputs_and_grads(selective_scan_ref, {{k: (v.double() if v is not None else None)
                                                    for k, v in kwargs.items()}}, softplus)
    got = _outputs_and_grads(scan_triton.selective_scan_triton, kwargs, softplus)
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    _assert_close_relative(got, want, tol, f"triton {{b_layout}} {{c_layout}}")
print("triton interpreter: all cases match")
'''


def run_under_triton_interpreter(cases: str) -> None:
    """Run the script template ``cases`` ({tests_dir} filled in) in a fresh interpreter with
    TRITON_INTERPRET=1 (the interpreter must be set before triton is imported); it must print "all cases
    match". Skips the calling test without triton."""
    import os
    import pathlib
    import subprocess
    import sys

    from mambakit.ops.selective_scan import triton_available

    if not triton_available():
        pytest.skip("triton is not installed (pip install triton): the Triton backend is tested only with it")
    script = cases.format(tests_dir=str(pathlib.Path(__file__).parent))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all cases match" in done.stdout


def test_triton_backend_under_interpreter_matches_reference():
    run_under_triton_interpreter(_TRITON_CASES)


def test_triton_backend_without_triton_says_so(monkeypatch):
    from mambakit.ops.selective_scan import triton as scan_triton

    monkeypatch.setattr(scan_triton, "triton", None)
    kwargs = random_scan_inputs(1, 2, 2, 3, b_layout="shared", c_layout="shared", complex_A=False)
    with pytest.raises(ConfigError, match="triton"):
        scan_triton.selective_scan_triton(**kwargs)


def _run_two_blocks_and_exit() -> None:
    from mambakit.ops.cpu.threads import run_blocks

    ran = []
    run_blocks(lambda worker, first, end: ran.append(first), 2, [(0, 1), (1, 2)])
    raise SystemExit(0 if sorted(ran) == [0, 1] else 1)


def test_thread_pool_works_in_a_forked_child():
    # A forked child (e.g. a DataLoader worker) inherits the parent's pool object but not its threads.
    import multiprocessing
    import os

    from mambakit.ops.cpu.threads import run_blocks

    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    ran = []
    run_blocks(lambda worker, first, end: ran.append(first), 2, [(0, 1), (1, 2)])   # the parent's pool exists
    assert sorted(ran) == [0, 1]
    child = multiprocessing.get_context("fork").Process(target=_run_two_blocks_and_exit)
    child.start()
    child.join(60)
    assert child.exitcode == 0, f"child exit code {child.exitcode}"


def test_float32_exp_of_cpu_kernels_is_accurate_and_saturates_like_exp():
    import numpy as np

    from mambakit.ops.cpu.kernel_math import exp_float32

    x = np.concatenate([np.linspace(-100, 100, 400_001, dtype=np.float32),
                        np.random.default_rng(0).uniform(-20, 0, 100_000).astype(np.float32)])
    got = exp_float32(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    normal = (want > np.finfo(np.float32).tiny) & (want < np.finfo(np.float32).max)
    assert np.max(np.abs(got[normal] - want[normal]) / want[normal]) < 1e-6
    assert np.all(got[x < -87.4] == 0.0) and np.all(np.isposinf(got[x > 88.8]))
    special = exp_float32(np.array([np.nan, -np.inf, np.inf, 0.0], dtype=np.float32))
    assert np.isnan(special[0]) and special[1] == 0.0 and np.isposinf(special[2]) and special[3] == 1.0


def test_whole_mamba_lm_same_logits_and_gradients_with_every_backend():
    from mambakit.models import MambaConfig, MambaLMHeadModel

    torch.manual_seed(0)
    model = MambaLMHeadModel(MambaConfig(d_model=16, n_layer=2, vocab_size=32)).double()
    tokens = torch.randint(0, 32, (2, 37), generator=torch.Generator().manual_seed(1))
    blocks = [m for m in model.modules() if hasattr(m, "scan_backend")]
    assert blocks, "no module with a scan_backend attribute"
    results = {}
    for backend in ("ref", "cpu", "chunked"):
        for block in blocks:
            block.scan_backend = backend
        model.zero_grad()
        logits = model(tokens)
        logits = getattr(logits, "logits", logits)
        (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(2),
                              dtype=logits.dtype)).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results[backend] = [logits.detach(), *grads]
    for backend in ("cpu", "chunked"):
        _assert_close_relative(results[backend], results["ref"], 1e-8, f"LM with backend {backend}")
