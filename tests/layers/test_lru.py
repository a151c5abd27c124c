"""LRU mixer: ring initialisation, γ normalisation, modes, protocol, gradients, bad input."""

import math

import pytest
import torch
from torch.func import functional_call

from mambakit.errors import ConfigError, ShapeError
from mambakit.layers.lru import LRU
from mambakit.ssm.scan import associative_scan

F64 = torch.float64


def rel(x, ref):
    return float((x - ref).detach().double().norm() / ref.detach().double().norm())


@torch.no_grad()
def test_ring_initialisation():
    r_min, r_max, max_phase = 0.4, 0.9, math.pi / 3
    layer = LRU(2, 4096, r_min=r_min, r_max=r_max, max_phase=max_phase, dtype=F64)
    lam = layer.eigenvalues()
    radius, phase = lam.abs(), lam.angle()
    assert bool(((radius >= r_min - 1e-12) & (radius <= r_max + 1e-12)).all())
    assert bool(((phase >= 0) & (phase <= max_phase + 1e-12)).all())
    # Uniform in the ring's area means |λ|² uniform on [r_min², r_max²]: check its mean and spread (5 sigma).
    sq = radius ** 2
    width = r_max ** 2 - r_min ** 2
    sigma = width / math.sqrt(12 * 4096)
    assert abs(float(sq.mean()) - (r_min ** 2 + r_max ** 2) / 2) < 5 * sigma
    assert abs(float(phase.mean()) - max_phase / 2) < 5 * max_phase / math.sqrt(12 * 4096)


@torch.no_grad()
def test_gamma_gives_each_mode_unit_impulse_energy():
    # γ = sqrt(1 − |λ|²) makes Σ_l |γ λ^l|² = 1: the state's scale does not depend on how close |λ| is to 1.
    layer = LRU(2, 16, r_min=0.5, r_max=0.95, dtype=F64)
    lam, gamma = layer.eigenvalues(), layer.gamma()
    torch.testing.assert_close(gamma, torch.sqrt(1 - lam.abs() ** 2))
    impulse = torch.zeros(16, 2000, dtype=torch.complex128)
    impulse[:, 0] = gamma
    response = associative_scan(lam[:, None], impulse)
    torch.testing.assert_close((response.abs() ** 2).sum(-1), torch.ones(16, dtype=F64), rtol=1e-9, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@torch.no_grad()
def test_modes_agree_and_prefix_then_step_matches(dtype):
    layer = LRU(4, 12, dtype=dtype)
    x = torch.randn(2, 40, 4, dtype=dtype)
    outputs = {}
    for mode in layer.modes:
        layer.mode = mode
        outputs[mode] = layer(x)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert rel(outputs["scan"], outputs["recurrent"]) <= tol
    assert rel(outputs["conv"], outputs["recurrent"]) <= tol
    assert rel(outputs["conv"], outputs["scan"]) <= tol
    for mode in layer.modes:
        layer.mode = mode
        state = layer.allocate_state(2)
        pieces = [layer(x[:, :25], state=state)]
        pieces += [layer.step(x[:, t], state)[:, None] for t in range(25, 40)]
        diff = float((torch.cat(pieces, 1) - outputs["scan"]).abs().max())
        assert diff <= (1e-4 if dtype == torch.float32 else 1e-10)


def test_float64_gradcheck():
    layer = LRU(2, 3, dtype=F64)
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(1, 6, 2, dtype=F64, requires_grad=True)
    for mode in ("scan", "conv"):
        layer.mode = mode

        def run(x, *params, layer=layer):
            return functional_call(layer, dict(zip(names, params, strict=True)), (x,))

        params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
        assert torch.autograd.gradcheck(run, (x, *params), fast_mode=True)


def test_bad_input():
    with pytest.raises(ConfigError, match="r_max.*stable"):
        LRU(4, 8, r_min=0.5, r_max=1.2)
    with pytest.raises(ConfigError, match="r_min, r_max"):
        LRU(4, 8, r_min=0.9, r_max=0.5)
    with pytest.raises(ConfigError, match="max_phase"):
        LRU(4, 8, max_phase=0.0)
    with pytest.raises(ConfigError, match="d_state"):
        LRU(4, 0)
    layer = LRU(4, 8)
    with pytest.raises(ShapeError, match="hidden_states: expected last dimension d_model=4"):
        layer(torch.randn(2, 5, 6))
    with pytest.raises(ShapeError, match="state\\['ssm_state'\\]"):
        layer.step(torch.randn(2, 4), {"ssm_state": torch.zeros(2, 9, dtype=torch.complex64)})


def test_parameters_follow_the_requested_dtype():
    for dtype in (None, torch.float64):
        layer = LRU(4, 8, dtype=dtype)
        expected = torch.get_default_dtype() if dtype is None else dtype
        assert {p.dtype for p in layer.parameters()} == {expected}
