"""Low-precision linear maps: int8 quantization round trip, the fused kernel against the reference (bf16
and int8 weights, with and without bias, 1 to 16 rows, leading dimensions, weights long enough to be
prefetched), the dispatcher's choice, and refused arguments."""

import pytest
import torch

from mambakit.errors import ConfigError, DTypeError, ShapeError
from mambakit.ops.linear import cpu as linear_cpu
from mambakit.ops.linear import dequantize, linear_lowp, linear_lowp_ref, quantize_int8


def test_int8_quantization_is_within_half_a_step_per_channel():
    w = torch.randn(37, 50, generator=torch.Generator().manual_seed(0)) * torch.logspace(-2, 1, 37)[:, None]
    w[5] = 0
    q, scales = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scales[5] == 1
    err = (dequantize(q, scales) - w).abs()
    assert (err <= scales[:, None] / 2 + 1e-7).all()


def _weights(kind, out_f, in_f, seed):
    w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed))
    if kind == "bf16":
        return w.to(torch.bfloat16), None
    return quantize_int8(w)


@pytest.mark.parametrize("kind", ["bf16", "int8"])
@pytest.mark.parametrize("rows", [1, 3, 16])
@pytest.mark.parametrize("with_bias", [True, False])
def test_kernel_matches_reference(kind, rows, with_bias):
    weight, scales = _weights(kind, 67, 45, seed=rows)
    bias = torch.randn(67) if with_bias else None
    x = torch.randn(rows, 45)
    want = linear_lowp_ref(x, weight, scales, bias)
    got = linear_cpu.linear_lowp_cpu(x, weight, scales, bias)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    # the reference itself: the float32 product with the dequantized weight
    assert torch.allclose(want, x @ dequantize(weight, scales).T + (0 if bias is None else bias), atol=1e-5)


@pytest.mark.parametrize("kind", ["bf16", "int8"])
def test_kernel_rows_past_the_prefetch_distance_and_in_blocks(kind):
    # 300 rows of 100 weights span more than the bytes the kernel prefetches ahead, so the prefetching loop
    # runs (a hint only: the sums must not change), here over the whole range and over uneven blocks
    weight, scales = _weights(kind, 300, 100, seed=7)
    x = torch.randn(2, 100, generator=torch.Generator().manual_seed(8))
    w_np, s_np, b_np = linear_cpu.kernel_arrays(weight, scales, None)
    s_np = torch.empty(0).numpy() if s_np is None else s_np
    whole, blocks = torch.empty(2, 300), torch.empty(2, 300)
    linear_cpu.linear_rows(w_np, s_np, b_np, x.numpy(), 0, 300, whole.numpy(), 0)
    for first, end in [(0, 7), (7, 150), (150, 299), (299, 300)]:
        linear_cpu.linear_rows(w_np, s_np, b_np, x.numpy(), first, end, blocks.numpy(), 0)
    assert torch.equal(whole, blocks)
    want = linear_lowp_ref(x, weight, scales, None)
    assert (whole - want).abs().max() <= 1e-5 * want.abs().max()


def test_leading_dimensions_and_dtype_are_kept():
    weight, scales = _weights("int8", 8, 6, seed=1)
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    y = linear_lowp(x, weight, scales)
    assert y.shape == (2, 3, 8) and y.dtype == torch.float64


def test_dispatcher_uses_the_kernel_for_few_rows_outside_autograd(monkeypatch):
    calls = []
    kernel = linear_cpu.linear_lowp_cpu
    monkeypatch.setattr(linear_cpu, "linear_lowp_cpu", lambda *a: calls.append(1) or kernel(*a))
    weight, _ = _weights("bf16", 8, 6, seed=2)
    linear_lowp(torch.randn(2, 6), weight)
    assert calls == [1]
    linear_lowp(torch.randn(linear_cpu.MAX_ROWS + 1, 6), weight)     # prefill: dequantize + matmul
    x = torch.randn(1, 6, requires_grad=True)
    y = linear_lowp(x, weight)                                          # autograd: the reference
    y.sum().backward()
    assert calls == [1] and x.grad is not None


def test_bad_arguments_are_named():
    weight, scales = _weights("int8", 8, 6, seed=3)
    with pytest.raises(DTypeError, match="scales: an int8 weight needs"):
        linear_lowp(torch.randn(1, 6), weight)
    with pytest.raises(ShapeError, match="x: expected shape"):
        linear_lowp(torch.randn(1, 5), weight, scales)
    with pytest.raises(DTypeError, match="weight: expected a bfloat16 or int8"):
        linear_lowp(torch.randn(1, 6), torch.randn(8, 6), None)
    with pytest.raises(ConfigError, match="backend"):
        linear_lowp(torch.randn(1, 6), weight, scales, backend="gpu")
