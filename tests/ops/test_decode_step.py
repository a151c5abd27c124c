"""The fused decoding step against its reference (the composition of the one-step ops): outputs and both
states over several consecutive steps, float32 and float64, with and without conv bias and D, batches of
1 and 3; the dispatcher's choice; refused inputs."""

import pytest
import torch

from mambakit.errors import ConfigError, DTypeError
from mambakit.ops.decode import mamba_decode_step, mamba_decode_step_ref
from mambakit.ops.decode.cpu import mamba_decode_step_cpu


def _params(d_inner, N, R, W, dtype, seed, conv_bias=True, with_D=True):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    return dict(conv_weight=r(d_inner, W, scale=0.5), conv_bias=r(d_inner) if conv_bias else None,
                x_proj_weight=r(R + 2 * N, d_inner, scale=d_inner**-0.5), dt_proj_weight=r(d_inner, R),
                dt_proj_bias=r(d_inner, scale=0.5),
                A=-torch.exp(r(d_inner, N, scale=0.5)), D=r(d_inner) if with_D else None)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("batch,W,conv_bias,with_D", [(1, 4, True, True), (3, 2, False, True),
                                                       (2, 4, True, False), (1, 1, False, False)])
def test_fused_step_matches_reference_over_steps(batch, W, conv_bias, with_D, dtype, tol):
    d_inner, N, R = 24, 5, 3
    params = _params(d_inner, N, R, W, dtype, seed=batch + W, conv_bias=conv_bias, with_D=with_D)
    gen = torch.Generator().manual_seed(9)
    states = {name: (torch.zeros(batch, d_inner, W, dtype=dtype), torch.zeros(batch, d_inner, N, dtype=dtype))
              for name in ("ref", "cpu")}
    for _ in range(6):
        xz = torch.randn(batch, 2 * d_inner, generator=gen, dtype=torch.float64).to(dtype)
        want = mamba_decode_step_ref(xz, *states["ref"], **params)
        got = mamba_decode_step_cpu(xz, *states["cpu"], **params)
        for g, w in ((got, want), (states["cpu"][0], states["ref"][0]), (states["cpu"][1], states["ref"][1])):
            assert (g - w).abs().max() <= tol * max(1.0, w.abs().max())


def test_dispatcher_uses_the_kernel_outside_autograd_only(monkeypatch):
    from mambakit.ops.decode import cpu as decode_cpu

    calls = []
    kernel = decode_cpu.mamba_decode_step_cpu
    monkeypatch.setattr(decode_cpu, "mamba_decode_step_cpu", lambda *a: calls.append(1) or kernel(*a))
    params = _params(8, 4, 2, 4, torch.float32, seed=0)
    xz = torch.randn(1, 16)
    states = (torch.zeros(1, 8, 4), torch.zeros(1, 8, 4))
    with torch.no_grad():
        mamba_decode_step(xz, *states, **params)
    assert calls == [1]
    params["A"].requires_grad_(True)
    y = mamba_decode_step(xz, *states, **params)          # under autograd: the reference, differentiable
    assert calls == [1] and y.requires_grad
    with pytest.raises(ConfigError, match="backend"):
        mamba_decode_step(xz, *states, **params, backend="fast")


def test_fused_step_refuses_mixed_dtypes():
    params = _params(8, 4, 2, 4, torch.float32, seed=1)
    with pytest.raises(DTypeError, match="one dtype"):
        mamba_decode_step_cpu(torch.randn(1, 16, dtype=torch.float64), torch.zeros(1, 8, 4),
                              torch.zeros(1, 8, 4), **params)
