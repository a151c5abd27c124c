"""Mamba3Block: the official parameter layout and initialisation, step == forward, continuation from a
state, packed sequences, and the argument checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mambakit.errors import ConfigError, ShapeError
from mambakit.layers.mamba3 import Mamba3Block, heavy_tail

VARIANTS = {   # name -> constructor options (small sizes)
    "siso": {},
    "siso_norm": {"is_outproj_norm": True, "rope_fraction": 1.0},
    "mimo": {"is_mimo": True, "mimo_rank": 2},
    "mimo_norm": {"is_mimo": True, "mimo_rank": 3, "is_outproj_norm": True, "ngroups": 2},
}


def _block(name: str, dtype=torch.float64, **extra) -> Mamba3Block:
    block = Mamba3Block(16, d_state=8, headdim=4, chunk_size=4, **VARIANTS[name], **extra).to(dtype)
    with torch.no_grad():   # move every parameter off its (symmetric) initial value
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return block


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_official_parameter_layout_and_init():
    block = Mamba3Block(32, d_state=16, headdim=8, is_mimo=True, mimo_rank=4, is_outproj_norm=True)
    h, R, N = 8, 4, 16
    shapes = {name: tuple(p.shape) for name, p in block.named_parameters()}
    assert shapes == {
        "in_proj.weight": (2 * 64 + 2 * N * R + 3 * h + 4, 32), "dt_bias": (h,), "B_bias": (h, R, N),
        "C_bias": (h, R, N), "B_norm.weight": (N,), "C_norm.weight": (N,), "mimo_x": (h, R, 8),
        "mimo_z": (h, R, 8), "mimo_o": (h, R, 8), "D": (h,), "norm.weight": (64,),
        "out_proj.weight": (32, 64),
    }
    assert block.num_rope_angles == 4                                # N · 0.5 / 2
    dt = F.softplus(block.dt_bias.detach())
    assert float(dt.min()) >= 1e-3 - 1e-9 and float(dt.max()) <= 0.1 + 1e-9
    torch.testing.assert_close(block.mimo_x, torch.full((h, R, 8), 0.25))
    torch.testing.assert_close(block.mimo_o, torch.full((h, R, 8), 0.25))
    for name in ("mimo_z", "B_bias", "C_bias", "D"):
        assert bool((getattr(block, name) == 1).all()), name
    siso = {name for name, _ in Mamba3Block(32, d_state=16, headdim=8).named_parameters()}
    assert siso == set(shapes) - {"mimo_x", "mimo_z", "mimo_o", "norm.weight"}


def test_heavy_tail():
    a = torch.tensor([-3.0, -0.5, 0.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    expected = torch.tensor([0.25, 1 / 1.5, 1.0, 1.5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(heavy_tail(a), expected)
    (g,) = torch.autograd.grad(heavy_tail(a).sum(), a)
    torch.testing.assert_close(g, torch.tensor([1 / 16, 1 / 2.25, 1.0, 1.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_steps_equal_forward_and_state_continues(name):
    block = _block(name)
    u = torch.randn(2, 9, 16, dtype=torch.float64)
    full = block(u)
    state = block.allocate_state(2)
    outs = [block(u[:, :4], state=state)]                           # a prompt, then tokens one by one
    outs += [block.step(u[:, t], state)[:, None] for t in range(4, 9)]
    assert _rel(torch.cat(outs, 1), full) < 1e-10
    state2 = block.allocate_state(2)
    block(u[:, :5], state=state2)
    assert _rel(block(u[:, 5:], state=state2), full[:, 5:]) < 1e-10
    for key in state:
        assert _rel(state2[key], state[key]) < 1e-10, key


@pytest.mark.parametrize("name", ["siso", "mimo_norm"])
def test_packed_sequences_and_gradients(name):
    block = _block(name)
    u = torch.randn(1, 10, 16, dtype=torch.float64)
    seq_idx = torch.tensor([[0] * 6 + [1] * 4])
    packed = block(u, seq_idx=seq_idx)
    assert _rel(packed[:, 6:], block(u[:, 6:])) < 1e-10 and _rel(packed[:, :6], block(u[:, :6])) < 1e-10
    packed.square().sum().backward()
    for pname, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_fp32_block_matches_fp64():
    block = _block("mimo")
    u = torch.randn(2, 20, 16, dtype=torch.float64)
    ref = block(u)
    assert _rel(block.float()(u.float()).double(), ref) < 1e-4


def test_errors_name_the_argument():
    with pytest.raises(ConfigError, match="headdim"):
        Mamba3Block(16, headdim=5)
    with pytest.raises(ConfigError, match="rope_fraction"):
        Mamba3Block(16, headdim=8, rope_fraction=0.25)
    with pytest.raises(ConfigError, match="ngroups"):
        Mamba3Block(16, headdim=8, ngroups=3)
    block = Mamba3Block(16, d_state=8, headdim=8)
    with pytest.raises(ShapeError, match="d_model"):
        block(torch.randn(1, 3, 8))
    with pytest.raises(ConfigError, match="state"):
        block.step(torch.randn(1, 16), {"ssm_state": torch.zeros(1)})
    state = block.allocate_state(1)
    state["k_state"] = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ShapeError, match="k_state"):
        block.step(torch.randn(1, 16), state)
    assert math.isclose(block.A_floor, 1e-4)
