"""Random Mamba-3 operation inputs (SISO and MIMO) and the error measure the Mamba-3 op tests share."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ARG_NAMES = ("x", "dt", "A", "B", "C", "trap", "angles", "B_bias", "C_bias")


def make_inputs(batch=2, L=11, heads=4, p=3, rank=1, groups=2, N=8, n_angles=2, mimo=False, gate=True,
                dtype=torch.float64, seed=0, requires_grad=False):
    """(args, kwargs) for mamba3_ref / mamba3_chunked: positive Δ, negative A, every optional tensor set."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=dtype) * scale

    args = [rnd(batch, L, heads, p), F.softplus(rnd(batch, L, heads) - 1.0),
            -(torch.rand(batch, L, heads, generator=g, dtype=dtype) + 0.05),
            rnd(batch, L, rank, groups, N), rnd(batch, L, rank, groups, N), rnd(batch, L, heads),
            rnd(batch, L, heads, n_angles, scale=2.0), rnd(heads, rank, N), rnd(heads, rank, N)]
    kwargs = {"D": rnd(heads), "z": rnd(batch, L, heads, p) if gate else None}
    if mimo:
        kwargs.update(mimo_x=rnd(heads, rank, p), mimo_z=rnd(heads, rank, p), mimo_o=rnd(heads, rank, p))
    if requires_grad:
        for t in (*args, *kwargs.values()):
            if t is not None:
                t.requires_grad_(True)
    return args, kwargs


def leaves(args, kwargs) -> dict[str, torch.Tensor]:
    """The inputs that take gradients, by name."""
    named = dict(zip(ARG_NAMES, args, strict=True)) | kwargs
    return {k: v for k, v in named.items() if isinstance(v, torch.Tensor) and v.requires_grad}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
