"""Shared by the tests of mambakit.ops.official: forward and gradients of a function of named tensors."""

from __future__ import annotations

from collections.abc import Callable

import torch

# Tolerances per dtype: float64 tight, float32 at its rounding of a short composition.
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def leaves(tensors: dict, dtype: torch.dtype | None = None) -> dict:
    """Fresh leaf copies (requiring grad) of the floating tensors, cast to ``dtype`` if given; others kept."""
    out = {}
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            t = t.detach().clone()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            elif dtype is not None and t.is_complex():
                t = t.to(torch.complex128 if dtype == torch.float64 else torch.complex64)
            t.requires_grad_(True)
        out[name] = t
    return out


def forward_and_grads(fn: Callable, tensors: dict, seed: int = 1) -> tuple[list, dict]:
    """Run ``fn(**tensors)`` (tensors from :func:`leaves`), backpropagate a fixed random cotangent from every
    floating output, and return (outputs, {name: grad})."""
    outs = fn(**tensors)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    gen = torch.Generator().manual_seed(seed)
    loss = 0
    for o in outs:
        if o.requires_grad:
            real = torch.view_as_real(o) if o.is_complex() else o
            # drawn in float64, so the cotangent is the same in any dtype
            cot = torch.randn(real.shape, generator=gen, dtype=torch.float64).to(real.dtype)
            loss = loss + (real * cot).sum()
    wanted = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    grads = torch.autograd.grad(loss, list(wanted.values()), allow_unused=True)
    return [o.detach() for o in outs], {k: g for k, g in zip(wanted, grads, strict=True)}


def assert_same(got: tuple[list, dict], want: tuple[list, dict], dtype: torch.dtype = torch.float64,
                **tol) -> None:
    """Outputs and every gradient agree (a gradient missing on one side must be zero on the other)."""
    tol = tol or TOL[dtype]
    for g, w in zip(got[0], want[0], strict=True):
        torch.testing.assert_close(g, w, **tol)
    for name in want[1]:
        g, w = got[1][name], want[1][name]
        if g is None or w is None:
            present = g if w is None else w
            assert present is None or torch.count_nonzero(present) == 0, f"grad of {name}: one side missing"
            continue
        torch.testing.assert_close(g, w, **tol, msg=lambda m, name=name: f"grad of {name}: {m}")


def max_errors(got: tuple[list, dict], want: tuple[list, dict]) -> tuple[float, float, float, float]:
    """(max abs, max rel) error of the outputs, then of the gradients; for reports."""
    def errs(pairs):
        a = r = 0.0
        for g, w in pairs:
            if g is None or w is None:
                continue
            d = (g - w).abs().max().item() if g.numel() else 0.0
            a, r = max(a, d), max(r, d / max(w.abs().max().item(), 1e-30) if w.numel() else 0.0)
        return a, r
    out = errs(zip(got[0], want[0], strict=True))
    grads = errs((got[1][k], want[1][k]) for k in want[1])
    return (*out, *grads)


def module_grads(module: torch.nn.Module, fn: Callable[[], torch.Tensor],
                 cot: torch.Tensor) -> tuple[list, dict]:
    """(outputs, {parameter name: grad}) of ``fn()``, which uses ``module``'s parameters, for cotangent
    ``cot``."""
    module.zero_grad()
    out = fn()
    (out * cot).sum().backward()
    return [out.detach()], {n: p.grad.clone() for n, p in module.named_parameters()}
