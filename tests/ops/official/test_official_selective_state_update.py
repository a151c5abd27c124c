"""selective_state_update in both official layouts: == selective_state_update_ref; L steps == the scans
(selective_scan_ref per channel, ssd_ref multi-head); a state pool through state_batch_indices; dtypes."""

import pytest
import torch
from official_helpers import assert_same, forward_and_grads, leaves

from mambakit.errors import ConfigError, ShapeError
from mambakit.ops import selective_scan_ref, ssd_ref
from mambakit.ops.official.selective_state_update import selective_state_update, selective_state_update_ref

BATCH, HEADS, HEADDIM, N, GROUPS = 3, 4, 2, 5, 2


def per_channel_step(seed=0, dtype=torch.float64, batch=BATCH):
    gen = torch.Generator().manual_seed(seed)
    dim = HEADS * HEADDIM

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    return dict(state=r(batch, dim, N), x=r(batch, dim), dt=r(batch, dim), A=-torch.exp(r(dim, N)),
                B=r(batch, N), C=r(batch, N), D=r(dim), z=r(batch, dim), dt_bias=r(dim))


def multi_head_step(seed=0, dtype=torch.float64, batch=BATCH, pool=None, expanded=True):
    """Mamba-2's call: A, dt, dt_bias, D per head, expanded (stride 0) over headdim (and N for A)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    A, dt, dt_bias, D = -torch.exp(r(HEADS)), r(batch, HEADS), r(HEADS), r(HEADS)
    t = dict(state=r(pool or batch, HEADS, HEADDIM, N), x=r(batch, HEADS, HEADDIM),
             B=r(batch, GROUPS, N), C=r(batch, GROUPS, N), z=r(batch, HEADS, HEADDIM))
    if expanded:
        t.update(A=A[:, None, None].expand(HEADS, HEADDIM, N), dt=dt[..., None].expand(-1, -1, HEADDIM),
                 dt_bias=dt_bias[:, None].expand(HEADS, HEADDIM), D=D[:, None].expand(HEADS, HEADDIM))
    else:
        t.update(A=r(HEADS, HEADDIM, N).neg().exp().neg(), dt=r(batch, HEADS, HEADDIM),
                 dt_bias=r(HEADS, HEADDIM), D=r(HEADS, HEADDIM))
    return t


def stepping(fn):
    """fn on a clone of the state (the step writes into it); returns (y, new state)."""
    def run(state, **kw):
        state = state.clone()
        return fn(state, **kw, dt_softplus=True), state
    return run


@pytest.mark.parametrize("make", [per_channel_step, multi_head_step,
                                  lambda **k: multi_head_step(expanded=False, **k)],
                         ids=["per_channel", "multi_head_expanded", "multi_head_full"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_reference_forward_and_gradients(make, dtype):
    t = make(seed=1)
    got = forward_and_grads(stepping(selective_state_update), leaves(t, dtype))
    want = forward_and_grads(stepping(selective_state_update_ref), leaves(t, dtype))
    assert_same(got, want, dtype)


def test_multi_head_steps_equal_ssd_ref():
    L = 6
    steps = [multi_head_step(seed=s, batch=2) for s in range(L)]
    first = steps[0]
    state = torch.zeros(2, HEADS, HEADDIM, N, dtype=torch.float64)
    ys = [selective_state_update(state, s["x"], s["dt"], first["A"], s["B"], s["C"], D=first["D"], z=s["z"],
                                 dt_bias=first["dt_bias"], dt_softplus=True) for s in steps]
    want, final = ssd_ref(torch.stack([s["x"] for s in steps], 1),
                          torch.stack([s["dt"][..., 0] for s in steps], 1),
                          first["A"][:, 0, 0], torch.stack([s["B"] for s in steps], 1),
                          torch.stack([s["C"] for s in steps], 1), D=first["D"][:, 0],
                          z=torch.stack([s["z"] for s in steps], 1), dt_bias=first["dt_bias"][:, 0],
                          dt_softplus=True, return_final_states=True)
    torch.testing.assert_close(torch.stack(ys, 1), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state, final, rtol=1e-10, atol=1e-12)


def test_per_channel_steps_equal_selective_scan_ref():
    L = 5
    steps = [per_channel_step(seed=s) for s in range(L)]
    first = steps[0]
    state = torch.zeros_like(first["state"])
    ys = [selective_state_update(state, s["x"], s["dt"], first["A"], s["B"], s["C"], D=first["D"], z=s["z"],
                                 dt_bias=first["dt_bias"], dt_softplus=True) for s in steps]

    def seq(k):
        return torch.stack([s[k] for s in steps], -1)

    want, last = selective_scan_ref(seq("x"), seq("dt"), first["A"], seq("B"), seq("C"), first["D"], seq("z"),
                                    first["dt_bias"], True, True)
    torch.testing.assert_close(torch.stack(ys, -1), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state, last, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [per_channel_step, multi_head_step], ids=["per_channel", "multi_head"])
def test_state_pool_updates_only_the_indexed_rows(make):
    pool = make(seed=2, batch=6)["state"]
    t = make(seed=3)
    t.pop("state")
    indices = torch.tensor([4, 0, -1])            # row 2 of x is padding
    before = pool.clone()
    y = selective_state_update(pool, **t, dt_softplus=True, state_batch_indices=indices)
    rows = before[indices.clamp(min=0)].clone()
    want = selective_state_update_ref(rows, **t, dt_softplus=True)
    torch.testing.assert_close(y[:2], want[:2], rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(y[2]) == 0
    torch.testing.assert_close(pool[[4, 0]], rows[:2], rtol=1e-12, atol=1e-12)
    untouched = [1, 2, 3, 5]
    assert torch.equal(pool[untouched], before[untouched])


def test_state_pool_gradients_match_gathered_rows():
    t = multi_head_step(seed=4, pool=5)
    indices = torch.tensor([2, 4, 0])

    def pooled(state, **kw):
        state = state.clone()
        return selective_state_update(state, **kw, dt_softplus=True, state_batch_indices=indices), state

    def gathered(state, **kw):
        state = state.clone()
        rows = state[indices]
        y = selective_state_update_ref(rows, **kw, dt_softplus=True)
        return y, state.index_copy(0, indices, rows)

    assert_same(forward_and_grads(pooled, leaves(t)), forward_and_grads(gathered, leaves(t)))


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("make", [per_channel_step, multi_head_step], ids=["per_channel", "multi_head"])
def test_half_activations_with_float32_state(make, half):
    t = make(seed=5, dtype=torch.float32)
    for k in ("x", "dt", "z", "B", "C"):
        t[k] = t[k].to(half)
    state = t.pop("state")
    state32 = state.clone()
    y = selective_state_update(state, **t, dt_softplus=True)
    assert y.dtype == half and state.dtype == torch.float32
    upcast = {k: v.float() for k, v in t.items()}
    want = selective_state_update_ref(state32, **upcast, dt_softplus=True)
    torch.testing.assert_close(y, want.to(half), rtol=0, atol=0)
    torch.testing.assert_close(state, state32, rtol=1e-6, atol=1e-6)


def test_bad_pool_indices():
    t = multi_head_step(seed=6, pool=4)
    with pytest.raises(ConfigError, match="at most once"):
        selective_state_update(**t, state_batch_indices=torch.tensor([1, 1, 2]))
    with pytest.raises(ShapeError, match="state_batch_indices: expected indices < 4"):
        selective_state_update(**t, state_batch_indices=torch.tensor([0, 1, 4]))
    with pytest.raises(ShapeError, match="state_batch_indices"):
        selective_state_update(**t, state_batch_indices=torch.tensor([0, 1]))
