"""What the SSD forms share: the argument checks, Δ from the raw dt, the skip and gate, the heads' view of
per-group B and C, and the precision of the chunked forms' matmuls. Layouts as in :mod:`mambakit.ops.ssd`."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..._checks import check_same_device, check_same_real_dtype, check_shape, check_tensor, compute_dtype
from ...errors import ConfigError, ShapeError
from ..packing import check_seq_idx

NO_LIMIT = (0.0, math.inf)   # dt_limit that clamps nothing


@dataclass(frozen=True)
class SSDDims:
    """Sizes of an SSD call: x is (batch, length, heads, headdim), B and C (batch, length, groups, state)."""

    batch: int
    length: int
    heads: int
    headdim: int
    groups: int
    state: int


def check_ssd_args(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx) -> SSDDims:
    """Validate the arguments shared by every form; raises a mambakit error naming the argument."""
    check_tensor("x", x, ndim=4)
    batch, length, heads, headdim = x.shape
    check_tensor("dt", dt, ndim=3)
    check_shape("dt", dt, (batch, length, heads), "(batch, L, heads) of x")
    check_tensor("A", A, ndim=1)
    check_shape("A", A, (heads,), "one scalar per head")
    check_tensor("B", B, ndim=4)
    groups, state = B.shape[2], B.shape[3]
    if groups < 1 or heads % groups != 0:
        raise ShapeError(f"B: groups (dim 2) must divide heads={heads}, got groups={groups}")
    check_shape("B", B, (batch, length, groups, state), "(batch, L, groups, N)")
    check_tensor("C", C, ndim=4)
    check_shape("C", C, (batch, length, groups, state), "same as B")
    if D is not None:
        check_tensor("D", D, ndim=(1, 2))
        check_shape("D", D, (heads,) if D.dim() == 1 else (heads, headdim), "(heads,) or (heads, headdim)")
    if z is not None:
        check_tensor("z", z, ndim=4)
        check_shape("z", z, (batch, length, heads, headdim), "same as x")
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, ndim=1)
        check_shape("dt_bias", dt_bias, (heads,))
    if initial_states is not None:
        check_tensor("initial_states", initial_states, ndim=4)
        check_shape("initial_states", initial_states, (batch, heads, headdim, state),
                    "(batch, heads, headdim, N)")
    if seq_idx is not None:
        check_seq_idx(seq_idx, batch, length)
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                      seq_idx=seq_idx)
    check_same_real_dtype(x=x, B=B, C=C, z=z)
    return SSDDims(batch, length, heads, headdim, groups, state)


def check_dt_limit(dt_limit: tuple[float, float]) -> None:
    """Raise ConfigError unless ``dt_limit`` is a pair (low, high) with low <= high."""
    if len(dt_limit) != 2 or not dt_limit[0] <= dt_limit[1]:
        raise ConfigError(f"dt_limit: expected (low, high) with low <= high, got {dt_limit!r}")


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16_matmul() -> bool:
    """Whether oneDNN has native bf16 matmuls on this CPU (AVX-512 BF16 / AMX); emulated ones are slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """Precision of the chunked form's matmuls: half-precision inputs keep theirs (as the official kernels do)
    on GPUs and on CPUs with native bf16 matmuls; elsewhere float32 (float64 for float64 input)."""
    if x.dtype == torch.bfloat16 and (x.device.type != "cpu" or cpu_has_fast_bf16_matmul()):
        return x.dtype
    if x.dtype == torch.float16 and x.device.type != "cpu":
        return x.dtype
    return compute_dtype(x)


def step_sizes(dt, dt_bias, dt_softplus: bool, dt_limit, dtype: torch.dtype) -> torch.Tensor:
    """Δ from the raw dt: add the bias, softplus, then clamp (only if a limit other than (0, inf) is set)."""
    dt = dt.to(dtype)
    if dt_bias is not None:
        dt = dt + dt_bias.to(dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != NO_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def skip_and_gate(y: torch.Tensor, x: torch.Tensor, D, z) -> torch.Tensor:
    """y + D·x, then gated by silu(z); all in y's (compute) dtype, returned in x's dtype."""
    if D is not None:
        Df = D.to(y.dtype)
        y = y + x.to(y.dtype) * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(x.dtype)


def per_head(X: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """Repeat a per-group tensor along ``dim`` so that head k sees group k // (heads / groups)."""
    return X.repeat_interleave(heads // X.shape[dim], dim=dim)
