"""S4 (DPLR) mixer: LegS init, Cauchy kernel vs dense powers, modes, protocol, gradients, bad input."""

import pytest
import torch
from torch.func import functional_call

from mambakit.errors import ConfigError, ShapeError
from mambakit.layers.s4 import S4
from mambakit.ssm.discretize import discretize_dense
from mambakit.ssm.hippo import hippo_matrices, legs_nplr
from mambakit.ssm.kernels import kernel_powers

F64, C128 = torch.float64, torch.complex128


def rel(x, ref):
    return float((x - ref).detach().double().norm() / ref.detach().double().norm())


@torch.no_grad()
def test_init_is_legs_in_its_eigenbasis():
    # Back in the standard basis (through V) it is the real LegS system, discretised by the bilinear rule.
    N = 8
    layer = S4(2, N, dtype=F64)
    _, V, _, _ = legs_nplr(N)
    A_bar, B_bar, _ = layer.dense_discrete()
    A, B = hippo_matrices("legs", N)
    dt = torch.exp(layer.log_dt)
    A_ref, B_ref = discretize_dense(A.expand(2, N, N), B.expand(2, N), dt, "bilinear")
    torch.testing.assert_close(V @ A_bar @ V.conj().T, A_ref.to(C128), rtol=0, atol=1e-10)
    torch.testing.assert_close((V @ B_bar[..., None])[..., 0], B_ref.to(C128), rtol=0, atol=1e-10)


@pytest.mark.parametrize("length", [1, 16, 33])
@torch.no_grad()
def test_cauchy_kernel_equals_dense_kernel_by_powers(length):
    layer = S4(3, 8, dtype=F64)
    layer.log_dt.copy_(torch.log(torch.tensor([0.01, 0.1, 0.5], dtype=F64)))
    A_bar, B_bar, C = layer.dense_discrete()
    expected = kernel_powers(A_bar, B_bar, C, length).real
    torch.testing.assert_close(layer.kernel(length), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@torch.no_grad()
def test_modes_agree_and_prefix_then_step_matches(dtype):
    layer = S4(4, 8, dtype=dtype)
    x = torch.randn(2, 40, 4, dtype=dtype)
    layer.mode = "recurrent"
    y_rec = layer(x)
    layer.mode = "conv"
    y_conv = layer(x)
    assert rel(y_conv, y_rec) <= (1e-5 if dtype == torch.float32 else 1e-10)
    for mode in layer.modes:
        layer.mode = mode
        state = layer.allocate_state(2)
        pieces = [layer(x[:, :25], state=state)]
        pieces += [layer.step(x[:, t], state)[:, None] for t in range(25, 40)]
        diff = float((torch.cat(pieces, 1) - y_conv).abs().max())
        assert diff <= (1e-4 if dtype == torch.float32 else 1e-10)


def test_float64_gradcheck():
    layer = S4(2, 4, dtype=F64)
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(1, 6, 2, dtype=F64, requires_grad=True)

    def run(x, *params):
        return functional_call(layer, dict(zip(names, params, strict=True)), (x,))

    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(run, (x, *params), fast_mode=True)


def test_custom_dplr_init_and_stability_check():
    Lambda = torch.tensor([-0.5 + 1j, -0.2 - 3j], dtype=C128)
    P = torch.tensor([0.3 + 0j, 0.1j], dtype=C128)
    layer = S4(2, 2, dplr_init=(Lambda, P, torch.ones(2, dtype=C128)), dtype=F64)
    assert layer.kernel(8).shape == (2, 8)
    with pytest.raises(ConfigError, match="Lambda.*stable"):
        S4(2, 2, dplr_init=(torch.tensor([0.1 + 1j, -1 + 0j]), P, torch.ones(2, dtype=C128)))
    with pytest.raises(ShapeError, match="dplr_init P"):
        S4(2, 2, dplr_init=(Lambda, torch.ones(3, dtype=C128), torch.ones(2, dtype=C128)))
    with pytest.raises(ConfigError, match="dplr_init"):
        S4(2, 2, dplr_init=Lambda)


def test_bad_input():
    with pytest.raises(ConfigError, match="d_state"):
        S4(4, 0)
    with pytest.raises(ConfigError, match="d_model"):
        S4(0, 4)
    with pytest.raises(ConfigError, match="mode"):
        S4(4, 4, mode="scan")
    layer = S4(4, 4)
    with pytest.raises(ShapeError, match="hidden_states"):
        layer(torch.randn(2, 5))
    with pytest.raises(ShapeError, match="hidden_states: expected a sequence length"):
        layer(torch.randn(1, 0, 4))


def test_parameters_follow_the_requested_dtype():
    for dtype in (None, torch.float64):
        layer = S4(4, 8, dtype=dtype)
        expected = torch.get_default_dtype() if dtype is None else dtype
        assert {p.dtype for p in layer.parameters()} == {expected}
