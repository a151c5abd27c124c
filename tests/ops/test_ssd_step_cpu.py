"""The one-pass SSD step (numba) against the reference step, over several steps: fp32 and fp64, grouped
B/C, D per head or per channel, with and without the gate, bias, softplus and a Δ clamp; the dispatcher's
choice."""

import pytest
import torch

from mambakit.errors import ConfigError
from mambakit.ops.ssd import ssd_state_update, ssd_state_update_ref, step_cpu
from mambakit.ops.ssd.step_cpu import ssd_state_update_cpu


def _inputs(batch, heads, headdim, groups, N, dtype, seed, D_per_channel=False, gate=True, bias=True):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    A = -torch.rand(heads, generator=g).to(dtype) - 0.1
    return dict(x=r(batch, heads, headdim), dt=r(batch, heads), A=A, B=r(batch, groups, N),
                C=r(batch, groups, N), D=r(heads, headdim) if D_per_channel else r(heads),
                z=r(batch, heads, headdim) if gate else None, dt_bias=r(heads, scale=0.5) if bias else None)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("groups,D_per_channel,gate,bias,limit", [
    (1, False, True, True, (0.0, float("inf"))),
    (2, True, False, False, (0.0, float("inf"))),
    (4, False, True, True, (0.05, 2.0)),
])
def test_kernel_matches_reference_over_steps(dtype, tol, groups, D_per_channel, gate, bias, limit):
    batch, heads, headdim, N = 3, 4, 5, 6
    states = {k: torch.zeros(batch, heads, headdim, N, dtype=dtype) for k in ("ref", "cpu")}
    for t in range(5):
        kw = _inputs(batch, heads, headdim, groups, N, dtype, seed=t, D_per_channel=D_per_channel, gate=gate,
                     bias=bias)
        want = ssd_state_update_ref(states["ref"], **kw, dt_softplus=True, dt_limit=limit)
        got = ssd_state_update_cpu(states["cpu"], **kw, dt_softplus=True, dt_limit=limit)
        assert got.dtype == want.dtype
        assert (got - want).abs().max() <= tol * max(1.0, float(want.abs().max()))
        assert (states["cpu"] - states["ref"]).abs().max() <= tol * max(1.0, float(states["ref"].abs().max()))


def test_dispatcher_choice(monkeypatch):
    calls = []
    kernel = step_cpu.ssd_state_update_cpu
    monkeypatch.setattr(step_cpu, "ssd_state_update_cpu", lambda *a: calls.append(1) or kernel(*a))
    kw = _inputs(1, 2, 3, 1, 4, torch.float32, seed=0)
    state = torch.zeros(1, 2, 3, 4)
    with torch.no_grad():
        ssd_state_update(state, **kw)
    assert calls == [1]
    ssd_state_update(torch.zeros(1, 2, 3, 4, dtype=torch.bfloat16), **kw)   # a bf16 state: the reference
    x = kw.pop("x").requires_grad_(True)
    y = ssd_state_update(torch.zeros(1, 2, 3, 4), x, **kw)                 # autograd: the reference
    assert calls == [1] and y.requires_grad
    with pytest.raises(ConfigError, match="backend"):
        ssd_state_update(state, x, **kw, backend="gpu")
