"""MambaBlock: official names, shapes and initialisation; forward against a plain float64 loop;
step == forward; bad input. Also RMSNorm."""

import math

import pytest
import torch
import torch.nn.functional as F

from mambakit import MambaBlock, RMSNorm
from mambakit.errors import ConfigError, DTypeError, ShapeError


def block_loop_float64(block: MambaBlock, h: torch.Tensor) -> torch.Tensor:
    """The Mamba block written out position by position in float64, from the paper's equations."""
    p = {k: v.detach().double() for k, v in block.named_parameters()}
    h = h.double()
    batch, L, _ = h.shape
    E, N, W, R = block.d_inner, block.d_state, block.d_conv, block.dt_rank
    xz = h @ p["in_proj.weight"].T + p.get("in_proj.bias", 0)
    x, z = xz[..., :E], xz[..., E:]
    conv = torch.zeros_like(x)
    w = p["conv1d.weight"][:, 0, :]  # (E, W), last tap = current input
    for t in range(L):
        for k in range(W):
            src = t - (W - 1) + k
            if src >= 0:
                conv[:, t] += w[:, k] * x[:, src]
    conv = conv + p.get("conv1d.bias", 0)
    x = conv * torch.sigmoid(conv)
    x_dbl = x @ p["x_proj.weight"].T
    dt_low, B, C = x_dbl[..., :R], x_dbl[..., R : R + N], x_dbl[..., R + N :]
    delta = F.softplus(dt_low @ p["dt_proj.weight"].T + p["dt_proj.bias"])  # (batch, L, E)
    A = -torch.exp(p["A_log"])
    state = torch.zeros(batch, E, N, dtype=torch.float64)
    ys = []
    for t in range(L):
        d = delta[:, t, :, None]
        state = torch.exp(d * A) * state + d * B[:, t, None, :] * x[:, t, :, None]
        ys.append((state * C[:, t, None, :]).sum(-1) + p["D"] * x[:, t])
    y = torch.stack(ys, dim=1) * (z * torch.sigmoid(z))
    return y @ p["out_proj.weight"].T + p.get("out_proj.bias", 0)


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy machine they only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CONFIGS = [
    dict(d_model=16, d_state=4, d_conv=2, expand=2, dt_rank="auto", conv_bias=True, bias=False),
    dict(d_model=24, d_state=16, d_conv=4, expand=1, dt_rank=5, conv_bias=False, bias=True),
    dict(d_model=32, d_state=8, d_conv=3, expand=2, dt_rank="auto", conv_bias=True, bias=True),
]


def _randomise(block: MambaBlock) -> None:
    """Move every parameter away from its initial value so that no term of the block is trivially zero."""
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name == "A_log":
                p.add_(0.3 * torch.randn_like(p))
            else:
                p.add_(0.2 * torch.randn_like(p))


def test_parameter_names_and_shapes():
    b = MambaBlock(40, d_state=8, d_conv=3, expand=2, dt_rank="auto", conv_bias=True, bias=True)
    E, R = 80, math.ceil(40 / 16)
    shapes = {n: tuple(p.shape) for n, p in b.named_parameters()}
    assert shapes == {
        "in_proj.weight": (2 * E, 40),
        "in_proj.bias": (2 * E,),
        "conv1d.weight": (E, 1, 3),
        "conv1d.bias": (E,),
        "x_proj.weight": (R + 16, E),
        "dt_proj.weight": (E, R),
        "dt_proj.bias": (E,),
        "A_log": (E, 8),
        "D": (E,),
        "out_proj.weight": (40, E),
        "out_proj.bias": (40,),
    }
    assert b.conv1d.groups == E and b.conv1d.padding == (2,)
    no_bias = MambaBlock(16, conv_bias=False, bias=False)
    assert no_bias.conv1d.bias is None and no_bias.in_proj.bias is None and no_bias.out_proj.bias is None


def test_initialisation_is_the_official_scheme():
    dt_min, dt_max, floor = 1e-3, 1e-1, 1e-4
    b = MambaBlock(64, d_state=16, expand=2, dt_rank=7, dt_min=dt_min, dt_max=dt_max, dt_init_floor=floor)
    # S4D-real: every row of A_log is log(1..N); D = 1.
    expected_row = torch.log(torch.arange(1, 17, dtype=torch.float32))
    torch.testing.assert_close(b.A_log, expected_row.expand(128, 16), rtol=0, atol=1e-7)
    assert torch.all(b.D == 1)
    # softplus(dt bias) is the initial step, log-uniform in [dt_min, dt_max].
    dt = F.softplus(b.dt_proj.bias.double())
    assert dt.min() >= dt_min * (1 - 1e-5) and dt.max() <= dt_max * (1 + 1e-5)
    log_dt = dt.log()
    mid = (math.log(dt_min) + math.log(dt_max)) / 2
    assert abs(log_dt.mean().item() - mid) < 0.5  # log-uniform: centred in log space (128 draws)
    assert (log_dt < mid).any() and (log_dt > mid).any()
    # dt_proj weight uniform in ±dt_rank^-0.5 and spread over that range
    bound = 7**-0.5
    assert b.dt_proj.weight.abs().max() <= bound
    assert b.dt_proj.weight.abs().max() > 0.8 * bound
    # the floor applies when dt_min is below it
    floored = MambaBlock(16, dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-3)
    torch.testing.assert_close(
        F.softplus(floored.dt_proj.bias.double()),
        torch.full((32,), 1e-3, dtype=torch.float64),
        rtol=1e-5,
        atol=0,
    )
    assert b.A_log._no_weight_decay and b.D._no_weight_decay


@pytest.mark.parametrize("cfg", CONFIGS)
def test_forward_matches_float64_loop(cfg):
    block = MambaBlock(**cfg).double()
    _randomise(block)
    h = torch.randn(2, 11, cfg["d_model"], dtype=torch.float64)
    out = block(h)
    assert out.shape == h.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, block_loop_float64(block, h), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "cfg,dtype,tol", [(c, torch.float32, 1e-4) for c in CONFIGS] + [(CONFIGS[2], torch.float64, 1e-10)]
)
def test_prefix_then_steps_equals_forward(cfg, dtype, tol):
    block = MambaBlock(**cfg).to(dtype)
    _randomise(block)
    L = 9
    h = torch.randn(3, L, cfg["d_model"], dtype=dtype)
    full = block(h)
    for prefix in (1, 4):  # prefixes shorter and longer than d_conv
        state = block.allocate_state(3)
        assert state["conv_state"].shape == (3, block.d_inner, block.d_conv)
        assert state["ssm_state"].shape == (3, block.d_inner, block.d_state)
        head = block(h[:, :prefix], state=state)
        steps = [block.step(h[:, t], state) for t in range(prefix, L)]
        got = torch.cat([head, torch.stack(steps, dim=1)], dim=1)
        assert (got - full).abs().max().item() <= tol


def test_steps_from_zero_state_equal_forward():
    block = MambaBlock(16, d_state=4, d_conv=4)
    _randomise(block)
    h = torch.randn(2, 9, 16)
    state = block.allocate_state(2)
    got = torch.stack([block.step(h[:, t], state) for t in range(9)], dim=1)
    assert (got - block(h)).abs().max().item() <= 1e-4


def test_gradients_reach_every_parameter():
    block = MambaBlock(16, d_state=4, bias=True)
    block(torch.randn(2, 6, 16)).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_input():
    block = MambaBlock(16, d_state=4)
    with pytest.raises(ShapeError, match="hidden_states"):
        block(torch.randn(2, 16))
    with pytest.raises(ShapeError, match="d_model=16"):
        block(torch.randn(2, 5, 12))
    with pytest.raises(DTypeError, match="hidden_states"):
        block(torch.ones(2, 5, 16, dtype=torch.long))
    with pytest.raises(ShapeError, match="hidden_states"):
        block.step(torch.randn(2, 5, 16), block.allocate_state(2))
    with pytest.raises(ShapeError, match="conv_state"):
        block.step(torch.randn(3, 16), block.allocate_state(2))
    with pytest.raises(ConfigError, match="state"):
        block.step(torch.randn(2, 16), {"ssm_state": torch.zeros(2, 32, 4)})
    with pytest.raises(ShapeError, match="ssm_state"):
        bad = block.allocate_state(2)
        bad["ssm_state"] = torch.zeros(2, 32, 5)
        block(torch.randn(2, 5, 16), state=bad)
    for kwargs, name in [
        (dict(d_model=0), "d_model"),
        (dict(d_model=16, d_state=0), "d_state"),
        (dict(d_model=16, dt_rank=0), "dt_rank"),
        (dict(d_model=16, expand=1.5), "expand"),
        (dict(d_model=16, dt_min=0.2, dt_max=0.1), "dt_min"),
    ]:
        with pytest.raises(ConfigError, match=name):
            MambaBlock(**kwargs)


def test_no_nan_for_large_inputs():
    block = MambaBlock(16, d_state=4)
    out = block(100 * torch.randn(1, 64, 16))
    assert torch.isfinite(out).all()


def test_rmsnorm():
    norm = RMSNorm(8, eps=1e-5)
    assert norm.weight.shape == (8,) and torch.all(norm.weight == 1) and norm.eps == 1e-5
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    torch.testing.assert_close(norm.double()(x), want, rtol=1e-12, atol=1e-12)
    y = RMSNorm(8)(torch.randn(2, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    with pytest.raises(ShapeError, match="x"):
        RMSNorm(8)(torch.randn(2, 7))
    with pytest.raises(DTypeError, match="x"):
        RMSNorm(8)(torch.ones(2, 8, dtype=torch.long))
