"""Random inputs for selective-scan tests, in every layout the official implementation accepts."""

from __future__ import annotations

import torch

# "fixed": time-invariant (dim, N); "shared": input-dependent (batch, N, L); "grouped": (batch, G, N, L).
LAYOUTS = ("fixed", "shared", "grouped")


def random_A(dim: int, N: int, complex_A: bool, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """A stable state matrix: negative real part, as Mamba's A = -exp(A_log)."""
    real = -torch.exp(torch.randn(dim, N, generator=gen, dtype=dtype) * 0.5)
    if not complex_A:
        return real
    return torch.complex(real, torch.randn(dim, N, generator=gen, dtype=dtype) * 2.0)


def random_BC(layout: str, batch: int, dim: int, N: int, L: int, groups: int, complex_A: bool,
              gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """B or C in ``layout``; complex (dim, N) or interleaved re/im (length 2L) when A is complex."""
    if layout == "fixed":
        X = torch.randn(dim, N, generator=gen, dtype=dtype)
        if complex_A:
            X = torch.complex(X, torch.randn(dim, N, generator=gen, dtype=dtype))
        return X
    length = 2 * L if complex_A else L
    if layout == "shared":
        return torch.randn(batch, N, length, generator=gen, dtype=dtype)
    if layout == "grouped":
        return torch.randn(batch, groups, N, length, generator=gen, dtype=dtype)
    raise ValueError(layout)


def random_scan_inputs(batch: int, dim: int, N: int, L: int, *, b_layout: str, c_layout: str, complex_A: bool,
                       groups: int = 1, with_D: bool = True, with_z: bool = True, with_bias: bool = True,
                       seed: int = 0, dtype=torch.float64) -> dict:
    """Keyword arguments for ``selective_scan_ref`` (without the flags)."""
    gen = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, dim, L, generator=gen, dtype=dtype),
        delta=torch.randn(batch, dim, L, generator=gen, dtype=dtype) * 0.5,
        A=random_A(dim, N, complex_A, gen, dtype),
        B=random_BC(b_layout, batch, dim, N, L, groups, complex_A, gen, dtype),
        C=random_BC(c_layout, batch, dim, N, L, groups, complex_A, gen, dtype),
        D=torch.randn(dim, generator=gen, dtype=dtype) if with_D else None,
        z=torch.randn(batch, dim, L, generator=gen, dtype=dtype) if with_z else None,
        delta_bias=torch.randn(dim, generator=gen, dtype=dtype) * 0.5 if with_bias else None,
    )
