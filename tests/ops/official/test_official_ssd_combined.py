"""mamba_chunk_scan_combined with cu_seqlens: the packed row == each sequence alone (outputs, varlen states,
gradients); the official return order; refusals."""

import pytest
import torch
from official_helpers import assert_same, forward_and_grads, leaves

from mambakit.errors import ConfigError, ShapeError
from mambakit.ops import ssd_ref
from mambakit.ops.official.ssd_combined import mamba_chunk_scan_combined

HEADS, HEADDIM, GROUPS, N = 4, 3, 2, 5
LENGTHS = [5, 0, 9, 3, 1]     # an empty sequence too; sequences cross chunk boundaries


def packed_inputs(L, seed=0, batch=1):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    return dict(x=r(batch, L, HEADS, HEADDIM), dt=r(batch, L, HEADS), A=-torch.exp(r(HEADS)),
                B=r(batch, L, GROUPS, N), C=r(batch, L, GROUPS, N), D=r(HEADS, HEADDIM),
                z=r(batch, L, HEADS, HEADDIM), dt_bias=r(HEADS), initial_states=r(batch, HEADS, HEADDIM, N))


def cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])


def one_by_one(lengths):
    """Each sequence alone through ssd_ref (the first from the initial state): outputs joined, states
    stacked."""
    def run(x, dt, A, B, C, D, z, dt_bias, initial_states):
        outs, finals, start = [], [], 0
        for s, n in enumerate(lengths):
            part = slice(start, start + n)
            h0 = initial_states if s == 0 else torch.zeros_like(initial_states)
            y, final = ssd_ref(x[:, part], dt[:, part], A, B[:, part], C[:, part], D=D, z=z[:, part],
                               dt_bias=dt_bias, initial_states=h0, dt_softplus=True, return_final_states=True)
            outs.append(y)
            finals.append(final[0])
            start += n
        return torch.cat(outs, 1), torch.stack(finals)
    return run


@pytest.mark.parametrize("with_seq_idx", [False, True])
def test_packed_equals_each_sequence_alone(with_seq_idx):
    t = packed_inputs(sum(LENGTHS))
    seq_idx = torch.repeat_interleave(torch.arange(len(LENGTHS)), torch.tensor(LENGTHS))[None] * 3

    def packed(**a):
        return mamba_chunk_scan_combined(**a, chunk_size=4, cu_seqlens=cu(LENGTHS), dt_softplus=True,
                                         seq_idx=seq_idx if with_seq_idx else None, return_varlen_states=True)

    got, want = forward_and_grads(packed, leaves(t)), forward_and_grads(one_by_one(LENGTHS), leaves(t))
    assert got[0][1].shape == (len(LENGTHS), HEADS, HEADDIM, N)
    assert_same(got, want)


def test_official_return_order_and_state_dtype():
    t = packed_inputs(sum(LENGTHS), seed=1)
    out, final, varlen = mamba_chunk_scan_combined(**t, chunk_size=3, cu_seqlens=cu(LENGTHS),
                                                   dt_softplus=True, return_final_states=True,
                                                   return_varlen_states=True, state_dtype=torch.float32)
    assert out.dtype == torch.float64 and final.dtype == varlen.dtype == torch.float32
    torch.testing.assert_close(final[0], varlen[-1])    # the last sequence's state is the final one
    y = mamba_chunk_scan_combined(**{k: t[k] for k in ("x", "dt", "A", "B", "C")}, chunk_size=3)
    assert isinstance(y, torch.Tensor)


def test_float32_packed_matches_float64():
    t = packed_inputs(sum(LENGTHS), seed=2)
    want = forward_and_grads(one_by_one(LENGTHS), leaves(t))

    def packed(**a):
        return mamba_chunk_scan_combined(**a, chunk_size=4, cu_seqlens=cu(LENGTHS), dt_softplus=True,
                                         return_varlen_states=True)

    got = forward_and_grads(packed, leaves(t, torch.float32))
    got = ([o.double() for o in got[0]], {k: v.double() for k, v in got[1].items()})
    assert_same(got, want, rtol=1e-4, atol=1e-5)


def test_refusals():
    t = packed_inputs(sum(LENGTHS), seed=3)
    with pytest.raises(ConfigError, match="cu_seqlens: required"):
        mamba_chunk_scan_combined(**t, chunk_size=4, return_varlen_states=True)
    with pytest.raises(ConfigError, match="seq_idx: expected the sequence boundaries"):
        mamba_chunk_scan_combined(**t, chunk_size=4, cu_seqlens=cu(LENGTHS),
                                  seq_idx=torch.zeros(1, sum(LENGTHS), dtype=torch.int32))
    with pytest.raises(ConfigError, match="cu_seqlens: expected non-decreasing"):
        mamba_chunk_scan_combined(**t, chunk_size=4, cu_seqlens=torch.tensor([0, 5, 3, sum(LENGTHS)]))
    with pytest.raises(ShapeError, match="batch of 1"):
        mamba_chunk_scan_combined(**packed_inputs(6, batch=2), chunk_size=4, cu_seqlens=torch.tensor([0, 6]))
