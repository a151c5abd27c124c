"""MambaBlock.step on the fused decoding kernel (no autograd, CPU, one precision) equals the block's
full-sequence forward and its unfused step; the kernel is really the one that ran."""

import pytest
import torch

from mambakit.layers import MambaBlock
from mambakit.ops.decode import cpu as decode_cpu


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
@pytest.mark.parametrize("conv_bias", [True, False])
def test_fused_steps_equal_forward_and_unfused_steps(dtype, tol, conv_bias, monkeypatch):
    torch.manual_seed(0)
    block = MambaBlock(16, d_state=4, d_conv=4, expand=2, conv_bias=conv_bias, dtype=dtype).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    calls = []
    kernel = decode_cpu.mamba_decode_step_cpu
    monkeypatch.setattr(decode_cpu, "mamba_decode_step_cpu", lambda *a: calls.append(1) or kernel(*a))
    x = torch.randn(3, 9, 16, dtype=dtype)
    outs = {}
    with torch.no_grad():
        full = block(x)
        for fused in (True, False):
            block.fused_decode = fused
            state = block.allocate_state(3)
            outs[fused] = torch.stack([block.step(x[:, t], state) for t in range(9)], dim=1)
    assert len(calls) == 9   # the fused run only
    assert (outs[True] - full).abs().max() <= tol
    assert (outs[True] - outs[False]).abs().max() <= tol


def test_step_under_autograd_stays_differentiable():
    block = MambaBlock(16, d_state=4)
    state = block.allocate_state(1)
    y = block.step(torch.randn(1, 16), state)
    y.sum().backward()
    assert block.A_log.grad is not None and block.x_proj.weight.grad is not None


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["fp64", "fp32"])
def test_mamba2_steps_on_the_one_pass_kernel_equal_forward(dtype, tol, monkeypatch):
    from mambakit.layers import Mamba2Block
    from mambakit.ops.ssd import step_cpu

    torch.manual_seed(1)
    block = Mamba2Block(16, d_state=8, headdim=4, ngroups=2, chunk_size=4, dtype=dtype).eval()
    calls = []
    kernel = step_cpu.ssd_state_update_cpu
    monkeypatch.setattr(step_cpu, "ssd_state_update_cpu", lambda *a: calls.append(1) or kernel(*a))
    x = torch.randn(2, 7, 16, dtype=dtype)
    with torch.no_grad():
        full = block(x)
        state = block.allocate_state(2)
        stepped = torch.stack([block.step(x[:, t], state) for t in range(7)], dim=1)
    assert len(calls) == 7 and (stepped - full).abs().max() <= tol
