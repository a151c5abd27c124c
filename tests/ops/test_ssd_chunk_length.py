"""The chunked SSD's cost choices that must not change its results (mambakit.ops.ssd.chunked):

- chunks longer than _LONGEST_CHUNK run as chunks of that length: identical to asking for it, and the long
  chunks themselves (the cap lifted) still agree with the recurrence;
- the factored form's reference is the middle of each chunk's decays, so a chunk decaying by up to e^120
  (float32) is factored, and a stronger one falls back to the masked form.

Oracle: ssd_ref in float64 under autograd on fresh random inputs, forward and every gradient, to 1e-10
(float64) or 1e-4 (float32) relative to the largest entry (1e-3 for float32 with dt up to 50, see there).
"""

from __future__ import annotations

import pytest
import torch
from test_ssd_chunked import INPUTS, make_case, outputs_and_grads, rel_err

from mambakit.ops.ssd import chunked as chunked_module
from mambakit.ops.ssd import ssd, ssd_ref

DTYPES = [(torch.float64, 1e-10), (torch.float32, 1e-4)]
FLAGS = dict(dt_softplus=True, return_final_states=True)


def _weights(b, L, h, p, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, L, h, p, generator=gen, dtype=torch.float64),
            torch.randn(b, h, p, n, generator=gen, dtype=torch.float64))


def _chunked(chunk_size):
    return lambda *a, **k: ssd(*a[:5], chunk_size, **k)


def _assert_close(outs, grads, ref_outs, ref_grads, dtype, tol):
    assert type(outs[0].grad_fn).__name__ == "ChunkedSSDBackward"
    for out, ref in zip(outs, ref_outs, strict=True):
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert rel_err(out, ref) <= tol
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert grad.dtype == dtype and torch.isfinite(grad).all(), name
        assert rel_err(grad, ref_grads[name]) <= tol, name


def test_long_chunks_run_as_the_longest_chunk(monkeypatch):
    """A chunk longer than the cap computes exactly what the cap's chunk length does (same geometry)."""
    monkeypatch.setattr(chunked_module, "_LONGEST_CHUNK", 8)
    lengths = []
    geometry = chunked_module._Geometry

    class Spy(geometry):
        def __init__(self, *args):
            super().__init__(*args)
            lengths.append(self.Q)

    monkeypatch.setattr(chunked_module, "_Geometry", Spy)
    kw = make_case(2, 37, 4, 3, 2, 5, seed=40, D="heads", seq=True)
    weights = _weights(2, 37, 4, 3, 5, seed=41)
    long_outs, long_grads = outputs_and_grads(_chunked(32), kw, torch.float64, weights, **FLAGS)
    cap_outs, cap_grads = outputs_and_grads(_chunked(8), kw, torch.float64, weights, **FLAGS)
    assert lengths == [8, 8, 8, 8]                          # forward and backward of both calls
    for a, b in zip(long_outs, cap_outs, strict=True):
        assert torch.equal(a, b)
    for name in cap_grads:
        assert torch.equal(long_grads[name], cap_grads[name]), name
    outputs_and_grads(_chunked(5), kw, torch.float64, weights, **FLAGS)
    assert lengths[-2:] == [5, 5]                           # shorter chunks run as asked


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=["fp64", "fp32"])
@pytest.mark.parametrize("form", ["factored", "masked"])
@pytest.mark.parametrize("seq", [False, True], ids=["plain", "seq-idx"])
def test_chunk_256_itself_with_the_cap_lifted(seq, form, dtype, tol, monkeypatch):
    """Chunks of 256 (L = 300: one full chunk and a ragged one), both inside forms, initial and final states,
    D per channel, the gate, packed sequences: forward and every gradient as ssd_ref's."""
    monkeypatch.setattr(chunked_module, "_LONGEST_CHUNK", 1 << 30)
    if form == "masked":
        monkeypatch.setattr(chunked_module, "_FACTOR_LIMIT", {torch.float32: -1.0, torch.float64: -1.0})
    b, L, h, p, g, n = 1, 300, 4, 3, 2, 4
    kw = make_case(b, L, h, p, g, n, seed=42 + seq, D="headdim", seq=seq)
    # Mild decays (|A| <= 0.05) keep a chunk of 256 within the factored form's range.
    kw["A"] = -torch.rand(h, generator=torch.Generator().manual_seed(43), dtype=torch.float64) * 0.05
    splits = []
    split_heads = chunked_module._split_heads
    monkeypatch.setattr(chunked_module, "_split_heads",
                        lambda c, mm_dtype: splits.append(c.shape[2]) or split_heads(c, mm_dtype))
    weights = _weights(b, L, h, p, n, seed=44)
    ref_outs, ref_grads = outputs_and_grads(ssd_ref, kw, torch.float64, weights, **FLAGS)
    outs, grads = outputs_and_grads(_chunked(256), kw, dtype, weights, **FLAGS)
    assert splits == [256, 256]
    if form == "factored":
        c = (torch.nn.functional.softplus(kw["dt"] + kw["dt_bias"]) * kw["A"]).cumsum(1)
        assert split_heads(c[:, None, :256], torch.float64)[2] is None          # every head factored
    _assert_close(outs, grads, ref_outs, ref_grads, dtype, tol)


def test_factored_form_reaches_e120_around_the_middle():
    """A chunk decaying by e^100 (beyond e^60 from its end) is factored, with exact factors; one decaying
    by e^150 is not."""
    steps = torch.full((1, 1, 64, 2), -100.0 / 64, dtype=torch.float64)
    steps[..., 1] *= 1.5                                                     # head 1: e^150
    c = steps.cumsum(2)
    u, v, masked = chunked_module._split_heads(c, torch.float64)
    assert masked is None                                                    # float64: both fit
    u, v, masked = chunked_module._split_heads(c.float(), torch.float32)
    assert masked.tolist() == [1] and (u[..., 1] == 0).all()
    assert u.abs().max() <= torch.exp(torch.tensor(60.0)) and torch.isfinite(v).all()
    L = torch.exp(c[..., :, None, 0] - c[..., None, :, 0])                   # [t, s], head 0
    product = u.double()[..., :, None, 0] * v.double()[..., None, :, 0]
    lower = torch.ones(64, 64, dtype=torch.bool).tril()
    assert torch.allclose(product[..., lower], L[..., lower], rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=["fp64", "fp32"])
def test_decays_between_e60_and_e120_per_chunk_factored_and_exact(dtype, tol, monkeypatch):
    """Every head decays by e^70 to e^110 per chunk of 64 (too strong for a factor referenced at the chunk's
    end): all heads take the factored form, and forward and every gradient agree with ssd_ref."""
    b, L, h, p, g, n = 1, 150, 4, 3, 2, 4
    kw = make_case(b, L, h, p, g, n, seed=45, D="heads", dt_bias=False, softplus=False)
    kw["dt"] = torch.full((b, L, h), 1.0, dtype=torch.float64)
    kw["A"] = -torch.tensor([70.0, 85.0, 95.0, 110.0], dtype=torch.float64) / 63
    masked_seen = []
    split_heads = chunked_module._split_heads

    def spy(c, mm_dtype):
        result = split_heads(c, mm_dtype)
        masked_seen.append(result[2])
        return result

    monkeypatch.setattr(chunked_module, "_split_heads", spy)
    flags = dict(dt_softplus=False, return_final_states=True)
    weights = _weights(b, L, h, p, n, seed=46)
    ref_outs, ref_grads = outputs_and_grads(ssd_ref, kw, torch.float64, weights, **flags)
    outs, grads = outputs_and_grads(_chunked(256), kw, dtype, weights, **flags)
    assert masked_seen == [None, None]
    _assert_close(outs, grads, ref_outs, ref_grads, dtype, tol)


# float32 to 1e-3 here: rounding dt ~ 50 to float32 alone moves Δ·A (up to 800 per step) by ~5e-5.
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-3)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("chunk_size", [64, 256])
def test_extreme_dt_agrees_with_ref(chunk_size, dtype, tol):
    """dt in [-50, 50] before softplus (steps from e^-50 to 50, decays down to e^-800 per step), L = 203,
    initial and final states, packed sequences: finite, and forward and every gradient as ssd_ref's."""
    b, L, h, p, g, n = 2, 203, 4, 3, 2, 4
    kw = make_case(b, L, h, p, g, n, seed=47, D="heads", seq=True)
    gen = torch.Generator().manual_seed(48)
    kw["dt"] = torch.rand(b, L, h, generator=gen, dtype=torch.float64) * 100 - 50
    kw["A"] = torch.tensor([-0.01, -1.0, -4.0, -16.0], dtype=torch.float64)
    weights = _weights(b, L, h, p, n, seed=49)
    ref_outs, ref_grads = outputs_and_grads(ssd_ref, kw, torch.float64, weights, **FLAGS)
    outs, grads = outputs_and_grads(_chunked(chunk_size), kw, dtype, weights, **FLAGS)
    assert set(grads) == {k for k in INPUTS if kw[k] is not None}
    _assert_close(outs, grads, ref_outs, ref_grads, dtype, tol)


@pytest.mark.parametrize("length", [128, 100], ids=["whole-chunks", "padded"])
@pytest.mark.parametrize("skip", ["D", "none"])
def test_output_is_a_tensor_of_its_own(length, skip):
    """The output (written over a buffer of the forward) is no view: callers may modify it in place, and the
    gradients are those of the modified output."""
    kw = make_case(1, length, 4, 3, 2, 5, seed=50, D="heads" if skip == "D" else None, z=False, init=False)
    x = kw["x"].clone().requires_grad_()
    ref_x = kw["x"].clone().requires_grad_()
    args = (kw["dt"], kw["A"], kw["B"], kw["C"])
    y = ssd(x, *args, 64, D=kw["D"], dt_bias=kw["dt_bias"], dt_softplus=True)
    assert y._base is None
    y.mul_(3.0)
    y.sum().backward()
    (3.0 * ssd_ref(ref_x, *args, D=kw["D"], dt_bias=kw["dt_bias"], dt_softplus=True)).sum().backward()
    assert rel_err(x.grad, ref_x.grad) <= 1e-10
