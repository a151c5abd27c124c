"""An autograd Function that keeps only the inputs of a composition and recomputes it in backward.

``recompute(fn, *tensors)`` returns ``fn(*tensors)`` (a tensor or a tuple of tensors) computed without
building a graph; its backward runs ``fn`` again on detached copies of the inputs under autograd and
differentiates that. With ``fn`` built from the fused CPU kernels (whose own backward passes keep little),
training then holds the inputs only, as the official fused operations do with their ``checkpoint_lvl``.
Both passes run with autocast off: a caller that wants autocast's casts applies them to the inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, device_type, *tensors):
        with torch.no_grad(), torch.autocast(device_type, enabled=False):
            out = fn(*tensors)
        ctx.save_for_backward(*tensors)
        ctx.fn, ctx.device_type = fn, device_type
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        needs = ctx.needs_input_grad[2:]
        inputs = [t.detach().requires_grad_(need) if isinstance(t, torch.Tensor) else t
                  for t, need in zip(ctx.saved_tensors, needs, strict=True)]
        with torch.enable_grad(), torch.autocast(ctx.device_type, enabled=False):
            outs = ctx.fn(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None and o.requires_grad]
        wanted = [t for t, need in zip(inputs, needs, strict=True) if need]
        found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                         allow_unused=True) if wanted and pairs else [None] * len(wanted))
        return (None, None, *(next(found) if need else None for need in needs))


def recompute(fn: Callable, *tensors: torch.Tensor | None):
    """``fn(*tensors)``, keeping only ``tensors`` for backward (None entries allowed); see the module."""
    device = next((t.device.type for t in tensors if isinstance(t, torch.Tensor)), "cpu")
    return _Recompute.apply(fn, device, *tensors)
