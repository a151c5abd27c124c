"""The Mamba-3 reference against independent oracles: RoPE as complex multiplication, the whole SISO and
MIMO recurrence as sums of Mamba-2 SSD scans (it is linear in its inputs), and L steps == the scan."""

from __future__ import annotations

import math

import pytest
import torch
from mamba3_inputs import make_inputs, rel_err

from mambakit.errors import ConfigError, ShapeError
from mambakit.ops import mamba3, mamba3_ref, mamba3_step, ssd_ref
from mambakit.ops.mamba3 import Mamba3State
from mambakit.ops.mamba3.common import rotate


@pytest.mark.parametrize("pairwise", [True, False])
def test_rotate_is_complex_multiplication(pairwise):
    u, theta = torch.randn(3, 10, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    first = torch.arange(0, 4, 2) if pairwise else torch.arange(2)        # the rotated pairs' first halves
    second = first + 1 if pairwise else first + 5
    turned = torch.complex(u[:, first], u[:, second]) * torch.exp(1j * theta)
    expected = u.clone()
    expected[:, first], expected[:, second] = turned.real, turned.imag
    torch.testing.assert_close(rotate(u, theta, pairwise), expected, rtol=0, atol=1e-14)


def _rotated(X, bias, theta, pairwise):
    """Keys or queries by the definition, with the rotation as complex multiplication: X (b, L, R, h, N)."""
    N, m = X.shape[-1], theta.shape[-1]
    idx = torch.arange(m)
    first, second = (2 * idx, 2 * idx + 1) if pairwise else (idx, idx + N // 2)
    Y = X + bias.transpose(0, 1)
    turned = torch.complex(Y[..., first], Y[..., second]) * torch.exp(1j * theta[:, :, None])
    out = Y.clone()
    out[..., first], out[..., second] = turned.real, turned.imag
    return out


def _oracle(args, kwargs, pairwise):
    """Mamba-3 from Mamba-2 SSD scans: H_t = α H + Σ_r [λΔ v_{t,r} k_{t,r}ᵀ + (1-λ)Δα v_{t-1,r} k_{t-1,r}ᵀ],
    so y_{t,R} = Σ_r SSD(λ v_r, k_r, q_R) + SSD((1-λ)α shift(v_r), shift(k_r), q_R), all with decay
    exp(AΔ)."""
    x, dt, A, B, C, trap, angles, B_bias, C_bias = args
    heads = x.shape[2]
    mimo_x, mimo_z, mimo_o = kwargs.get("mimo_x"), kwargs.get("mimo_z"), kwargs.get("mimo_o")
    theta = torch.cumsum(math.pi * torch.tanh(angles) * dt[..., None], dim=1)
    per_head = {"dim": 3, "repeats": heads // B.shape[3]}
    k = _rotated(B.repeat_interleave(**per_head), B_bias, theta, pairwise)   # (b, L, R, h, N)
    q = _rotated(C.repeat_interleave(**per_head), C_bias, theta, pairwise)
    R = B.shape[2]
    v = x[:, :, None] * (mimo_x.transpose(0, 1) if mimo_x is not None else 1.0)
    lam, alpha = torch.sigmoid(trap), torch.exp(A * dt)

    def shift(t):
        return torch.cat([torch.zeros_like(t[:, :1]), t[:, :-1]], dim=1)

    # SSD with a per-position decay: A_ssd = -1 and the decay's exponent as its dt, dividing the input by it.
    rate = -A * dt

    def scan(xs, Bs, Cs):   # xs (b, L, h, p) weighted by Δ; Bs, Cs (b, L, h, N), one group per head
        return ssd_ref(xs * (dt / rate)[..., None], rate, -torch.ones(heads, dtype=x.dtype), Bs, Cs)

    ys = []
    for Rq in range(R):
        y = sum(scan(lam[..., None] * v[:, :, r], k[:, :, r], q[:, :, Rq])
                + scan(shift(v[:, :, r]) * ((1 - lam) * alpha)[..., None], shift(k[:, :, r]), q[:, :, Rq])
                for r in range(R))
        y = y + kwargs["D"][:, None] * v[:, :, Rq]
        if kwargs.get("z") is not None:
            y = y * torch.nn.functional.silu(kwargs["z"] * (mimo_z[:, Rq] if mimo_z is not None else 1.0))
        ys.append(y * mimo_o[:, Rq] if mimo_o is not None else y)
    return sum(ys)


@pytest.mark.parametrize("mimo, rank, pairwise", [(False, 1, True), (False, 1, False), (True, 2, False),
                                                  (True, 2, True)])
def test_ref_matches_ssd_oracle(mimo, rank, pairwise):
    args, kwargs = make_inputs(L=9, rank=rank, mimo=mimo, N=8, n_angles=3)
    y = mamba3_ref(*args, **kwargs, rotate_pairwise=pairwise)
    assert rel_err(y, _oracle(args, kwargs, pairwise)) < 1e-12


@pytest.mark.parametrize("mimo, rank", [(False, 1), (True, 3)])
def test_steps_equal_the_scan(mimo, rank):
    args, kwargs = make_inputs(L=7, rank=rank, mimo=mimo)
    y, final = mamba3_ref(*args, **kwargs, return_final_state=True)
    # continue both for L more positions from that state
    args2, kwargs2 = make_inputs(L=7, rank=rank, mimo=mimo, seed=1)
    y2, final2 = mamba3_ref(*args2, **kwargs2, initial_state=final, return_final_state=True)
    state = Mamba3State(*(s.clone() for s in final))
    for t in range(7):
        step_args = [a[:, t] for a in args2[:7]] + list(args2[7:])
        step_kw = dict(kwargs2, z=kwargs2["z"][:, t])
        yt = mamba3_step(state, *step_args, **step_kw)
        assert rel_err(yt, y2[:, t]) < 1e-12
    for s, f in zip(state, final2, strict=True):
        assert rel_err(s, f) < 1e-12


def test_official_default_pairing_and_mimo_per_rank_output():
    args, kwargs = make_inputs(L=5, rank=2, mimo=True)
    assert rel_err(mamba3_ref(*args, **kwargs), mamba3_ref(*args, **kwargs, rotate_pairwise=False)) == 0
    per_rank = mamba3_ref(*args, **dict(kwargs, mimo_o=None))
    assert per_rank.shape == (2, 5, 2, 4, 3)
    contracted = (per_rank * kwargs["mimo_o"].transpose(0, 1)).sum(2)
    assert rel_err(contracted, mamba3_ref(*args, **kwargs)) < 1e-14
    args, kwargs = make_inputs(L=5)
    assert rel_err(mamba3_ref(*args, **kwargs), mamba3_ref(*args, **kwargs, rotate_pairwise=True)) == 0


def test_ref_gradcheck():
    args, kwargs = make_inputs(batch=1, L=4, heads=2, p=2, rank=2, groups=1, N=4, n_angles=1, mimo=True,
                               requires_grad=True)
    names = [i for i, a in enumerate(args)]

    def f(*tensors):
        a = list(tensors[:len(names)])
        return mamba3_ref(*a, **dict(zip(kwargs, tensors[len(names):], strict=True)))

    assert torch.autograd.gradcheck(f, (*args, *kwargs.values()))


def test_empty_sequence_and_state_passthrough():
    args, kwargs = make_inputs(L=0)
    y, state = mamba3_ref(*args, **kwargs, return_final_state=True)
    assert y.shape == (2, 0, 4, 3) and all(float(s.abs().sum()) == 0 for s in state)


def test_argument_errors_name_the_argument():
    args, kwargs = make_inputs(L=3, rank=2, mimo=True)
    with pytest.raises(ShapeError, match="B: rank"):
        mamba3_ref(*args, D=kwargs["D"])
    bad = list(args)
    bad[6] = bad[6].new_zeros(2, 3, 4, 5)                       # 2·5 angles > N = 8
    with pytest.raises(ShapeError, match="angles"):
        mamba3_ref(*bad, **kwargs)
    with pytest.raises(ConfigError, match="mimo_z"):
        mamba3_ref(*args, **dict(kwargs, mimo_z=None))
    with pytest.raises(ConfigError, match="backend"):
        mamba3(*args, **kwargs, backend="cuda")
    with pytest.raises(ConfigError, match="chunk_size"):
        mamba3(*args, **kwargs, chunk_size=0)
    with pytest.raises(ShapeError, match="initial_state.k"):
        state = Mamba3State(torch.zeros(2, 4, 2), torch.zeros(2, 4, 3, 8), torch.zeros(2, 1, 4, 8),
                            torch.zeros(2, 4, 3))
        mamba3_ref(*args, **kwargs, initial_state=state)
