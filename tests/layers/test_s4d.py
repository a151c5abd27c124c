"""S4D mixer: initialisations, kernel, agreement of its modes, the mixer protocol, gradients and bad input."""

import math

import pytest
import torch
from torch.func import functional_call

from mambakit.errors import ConfigError, ShapeError
from mambakit.layers.s4d import S4D, s4d_eigenvalues
from mambakit.ssm.kernels import kernel_powers

F64 = torch.float64


def rel(x, ref):
    return float((x - ref).detach().double().norm() / ref.detach().double().norm())


def test_init_eigenvalues_follow_the_paper():
    N = 8
    lin, inv, real = (s4d_eigenvalues(k, N) for k in ("lin", "inv", "real"))
    for n in range(N // 2):
        assert lin[n] == pytest.approx(complex(-0.5, math.pi * n))
        assert inv[n] == pytest.approx(complex(-0.5, N / math.pi * (N / (2 * n + 1) - 1)))
    assert real.real.tolist() == [-(n + 1.0) for n in range(N)] and not real.imag.any()


@pytest.mark.parametrize("init", ["lin", "inv", "real"])
def test_layer_stores_its_init(init):
    layer = S4D(3, 8, init=init, dtype=F64)
    A = layer.continuous_A()
    torch.testing.assert_close(A, s4d_eigenvalues(init, 8).expand(3, -1))
    dt = torch.exp(layer.log_dt)
    assert bool(((dt >= 1e-3 - 1e-12) & (dt <= 1e-1 + 1e-12)).all())


def test_kernel_is_the_dense_kernel_of_its_parameters():
    layer = S4D(3, 8, init="inv", dtype=F64)
    A_bar, B_bar, C = layer.discrete()
    expected = kernel_powers(torch.diag_embed(A_bar), B_bar, C, 30).real
    torch.testing.assert_close(layer.kernel(30), expected, rtol=1e-11, atol=1e-11)
    # Doubling the real part of N/2 modes equals keeping all N modes with their conjugates.
    full = kernel_powers(torch.diag_embed(torch.cat([A_bar, A_bar.conj()], -1)),
                         torch.cat([B_bar, B_bar.conj()], -1), torch.cat([C, C.conj()], -1) / 2, 30)
    torch.testing.assert_close(full.real, expected, rtol=1e-11, atol=1e-11)
    assert float(full.imag.detach().abs().max()) < 1e-12


@pytest.mark.parametrize("init", ["lin", "real"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@torch.no_grad()
def test_modes_agree_and_prefix_then_step_matches(init, dtype):
    layer = S4D(6, 8, init=init, dtype=dtype)
    x = torch.randn(2, 40, 6, dtype=dtype)
    outputs = {}
    for mode in layer.modes:
        layer.mode = mode
        outputs[mode] = layer(x)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert rel(outputs["conv"], outputs["recurrent"]) <= tol
    assert rel(outputs["scan"], outputs["recurrent"]) <= tol
    assert rel(outputs["conv"], outputs["scan"]) <= tol
    for mode in layer.modes:
        layer.mode = mode
        state = layer.allocate_state(2)
        pieces = [layer(x[:, :25], state=state)]
        pieces += [layer.step(x[:, t], state)[:, None] for t in range(25, 40)]
        diff = float((torch.cat(pieces, 1) - outputs["conv"]).abs().max())
        assert diff <= (1e-4 if dtype == torch.float32 else 1e-10)


def test_float64_gradcheck():
    layer = S4D(2, 4, init="lin", dtype=F64)
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(1, 6, 2, dtype=F64, requires_grad=True)
    for mode in ("conv", "scan"):
        layer.mode = mode

        def run(x, *params, layer=layer):
            return functional_call(layer, dict(zip(names, params, strict=True)), (x,))

        params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
        assert torch.autograd.gradcheck(run, (x, *params), fast_mode=True)


def test_explicit_A_init_and_stability_check():
    A = torch.tensor([-0.3 + 1j, -1.0 + 2j], dtype=torch.complex128)
    layer = S4D(2, 4, A_init=A, dtype=F64)
    torch.testing.assert_close(layer.continuous_A(), A.expand(2, -1))
    with pytest.raises(ConfigError, match="A_init.*stable"):
        S4D(2, 4, A_init=torch.tensor([-0.3 + 1j, 0.2 + 0j]))
    with pytest.raises(ConfigError, match="A_init.*stable"):
        S4D(2, 4, A_init=torch.tensor([0.0, -1.0]))


def test_bad_input():
    with pytest.raises(ConfigError, match="d_state"):
        S4D(4, 7, init="lin")
    with pytest.raises(ConfigError, match="d_state"):
        S4D(4, 0, init="real")
    with pytest.raises(ConfigError, match="init"):
        S4D(4, 8, init="legs")
    with pytest.raises(ConfigError, match="mode"):
        S4D(4, 8, mode="fft")
    with pytest.raises(ConfigError, match="dt_min"):
        S4D(4, 8, dt_min=0.0)
    layer = S4D(4, 8)
    with pytest.raises(ShapeError, match="hidden_states: expected last dimension d_model=4"):
        layer(torch.randn(2, 5, 3))
    with pytest.raises(ShapeError, match="hidden_states: expected a sequence length"):
        layer(torch.randn(2, 0, 4))
    with pytest.raises(ShapeError, match="state\\['ssm_state'\\]"):
        layer.step(torch.randn(3, 4), layer.allocate_state(2))
    with pytest.raises(ConfigError, match="state"):
        layer.step(torch.randn(2, 4), {})


def test_parameters_follow_the_requested_dtype():
    for dtype in (None, torch.float64):
        layer = S4D(4, 8, dtype=dtype)
        expected = torch.get_default_dtype() if dtype is None else dtype
        assert {p.dtype for p in layer.parameters()} == {expected}
