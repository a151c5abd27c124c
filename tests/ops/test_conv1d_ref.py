"""causal_conv1d_ref against a scalar loop; causal_conv1d_update step by step equals the full sequence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loop_oracle import causal_conv1d_loop

from mambakit.ops import causal_conv1d_ref, causal_conv1d_update

# Tiny convolutions: one thread avoids oneDNN's thread wake-ups, which dominate when the cores are shared.
pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(batch: int, dim: int, L: int, width: int, with_bias: bool, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, L, generator=gen, dtype=dtype)
    weight = torch.randn(dim, width, generator=gen, dtype=dtype)
    bias = torch.randn(dim, generator=gen, dtype=dtype) if with_bias else None
    return x, weight, bias


@pytest.mark.parametrize("activation", [None, "silu", "swish"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_full_sequence_matches_loop(width, with_bias, activation):
    # L = 2 is shorter than the widest kernel, so the zero left padding is exercised too.
    for seed, L in enumerate((2, 7)):
        x, weight, bias = _inputs(2, 3, L, width, with_bias, seed=seed)
        out = causal_conv1d_ref(x, weight, bias, activation=activation)
        assert out.shape == x.shape and out.dtype == x.dtype
        np.testing.assert_allclose(out.numpy(), causal_conv1d_loop(x, weight, bias, activation),
                                   rtol=1e-12, atol=1e-12)


def test_output_t_does_not_see_later_inputs():
    x, weight, bias = _inputs(1, 2, 6, 4, True)
    before = causal_conv1d_ref(x, weight, bias, "silu")
    x2 = x.clone()
    x2[..., 3:] += 100.0
    after = causal_conv1d_ref(x2, weight, bias, "silu")
    torch.testing.assert_close(after[..., :3], before[..., :3], rtol=0, atol=0)
    assert not torch.allclose(after[..., 3:], before[..., 3:])


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_update_step_by_step_equals_full_sequence(width, with_bias, activation):
    x, weight, bias = _inputs(2, 3, 9, width, with_bias, seed=width)
    full = causal_conv1d_ref(x, weight, bias, activation=activation)
    conv_state = torch.zeros(2, 3, width, dtype=x.dtype)
    storage = conv_state.data_ptr()
    steps = [causal_conv1d_update(x[..., t], conv_state, weight, bias, activation) for t in range(9)]
    torch.testing.assert_close(torch.stack(steps, -1), full, rtol=1e-13, atol=1e-13)
    # The state was shifted in place and holds the last `width` inputs, oldest first.
    assert conv_state.data_ptr() == storage
    torch.testing.assert_close(conv_state, x[..., -width:], rtol=0, atol=0)


def test_update_after_prefill_from_the_last_inputs():
    # As in generation: fill the state with the prompt's last `width` inputs, then step.
    x, weight, bias = _inputs(2, 3, 10, 4, True, seed=5)
    full = causal_conv1d_ref(x, weight, bias, "silu")
    conv_state = x[..., 2:6].clone()          # inputs 2..5, so the next step is position 6
    steps = [causal_conv1d_update(x[..., t], conv_state, weight, bias, "silu") for t in range(6, 10)]
    torch.testing.assert_close(torch.stack(steps, -1), full[..., 6:], rtol=1e-13, atol=1e-13)


def test_float32_update_dtype():
    x, weight, bias = _inputs(1, 4, 5, 3, True, dtype=torch.float32)
    conv_state = torch.zeros(1, 4, 3)
    y = causal_conv1d_update(x[..., 0], conv_state, weight, bias, "silu")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, causal_conv1d_ref(x, weight, bias, "silu")[..., 0])


@pytest.mark.parametrize("with_bias", [False, True])
def test_gradcheck(with_bias):
    x, weight, bias = _inputs(2, 2, 4, 3, with_bias, seed=11)
    tensors = [t.requires_grad_(True) for t in (x, weight, bias) if t is not None]
    fn = lambda *a: causal_conv1d_ref(a[0], a[1], a[2] if with_bias else None, activation="silu")
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradients_through_steps_equal_full_sequence_gradients():
    x, weight, bias = _inputs(2, 3, 6, 4, True, seed=8)
    leaves = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    causal_conv1d_ref(*leaves, "silu").square().sum().backward()
    want = [t.grad for t in leaves]

    leaves = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    conv_state = torch.zeros(2, 3, 4, dtype=x.dtype)
    steps = [causal_conv1d_update(leaves[0][..., t], conv_state, *leaves[1:], "silu") for t in range(6)]
    torch.stack(steps, -1).square().sum().backward()
    for got, expected in zip([t.grad for t in leaves], want, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
