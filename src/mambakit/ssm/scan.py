"""Scans for the first-order linear recurrence h_t = a_t ⊙ h_{t-1} + b_t (time on the last dimension).

The pair (a, b) composes associatively: doing (a₁, b₁) then (a₂, b₂) is the single step
(a₂a₁, a₂b₁ + b₂). So the whole recurrence is a prefix "sum" under that operator and can be computed with
O(log L) sequential depth. :func:`associative_scan` uses the odd–even (recursive doubling) scheme:
combine neighbouring pairs, scan the half-length sequence of pairs recursively, then fill in the even
positions with one more step. That is O(L) work in total and log₂ L rounds of whole-tensor torch operations,
so it runs on any device and is differentiable by autograd. :func:`sequential_scan` is the plain loop it is
tested against.

a_t may vary with t (the selective scan of Mamba) or be constant (an LTI SSM: pass it expanded along time).
Real and complex inputs are accepted; a real a with a complex b gives a complex result.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_tensor
from ..errors import ShapeError


def _prepare(a: Tensor, b: Tensor, h0: Tensor | None, keep_constant: bool = False) -> tuple[Tensor, Tensor]:
    check_tensor("a", a, complex_ok=True)
    check_tensor("b", b, complex_ok=True)
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ShapeError(f"b: expected a shape broadcastable with a {tuple(a.shape)}, "
                         f"got {tuple(b.shape)}") from None
    if len(shape) == 0 or shape[-1] == 0:
        raise ShapeError(f"b: expected a time dimension (last) of length L >= 1, got shape {tuple(shape)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    b = b.to(dtype).expand(shape)
    if keep_constant and a.dim() >= 1 and a.shape[-1] == 1:
        # A multiplier constant in time stays one column, held in double precision (see _scan_last_dim).
        wide = torch.complex128 if dtype.is_complex else torch.float64
        a = a.to(wide).expand(*shape[:-1], 1)
    else:
        a = a.to(dtype).expand(shape)
    if h0 is not None:
        check_tensor("h0", h0, complex_ok=True)
        try:
            torch.broadcast_shapes(h0.shape, shape[:-1])
        except RuntimeError:
            raise ShapeError(f"h0: expected a shape broadcastable to {tuple(shape[:-1])} (b without its time "
                             f"dimension), got {tuple(h0.shape)}") from None
        # Fold the initial state into the first input: h_0 = a_0 h_{-1} + b_0.
        first = a[..., :1].to(dtype) * h0.to(dtype).unsqueeze(-1) + b[..., :1]
        b = torch.cat([first, b[..., 1:]], dim=-1)
    return a, b


def sequential_scan(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Reference: h_t = a_t ⊙ h_{t-1} + b_t one step at a time.

    Args:
        a: (..., L) multipliers (broadcastable with b).
        b: (..., L) inputs.
        h0: optional (...) state before the first step (zero when omitted).

    Returns:
        h: (..., L), every state.
    """
    a, b = _prepare(a, b, h0)
    states = []
    h = torch.zeros_like(b[..., 0])
    for t in range(b.shape[-1]):
        h = a[..., t] * h + b[..., t]
        states.append(h)
    return torch.stack(states, dim=-1)


def _scan_last_dim(a: Tensor, b: Tensor) -> Tensor:
    """The odd-even recursion; ``a`` has a time size of L, or of 1 when it is constant in time."""
    length = b.shape[-1]
    if length == 1:
        return b
    even = length - length % 2
    b_even, b_odd = b[..., 0:even:2], b[..., 1:even:2]
    if a.shape[-1] == 1:
        # Constant a: the paired multiplier is a², then a⁴, ... Squaring in double precision keeps a^(2^j)
        # correctly rounded; in single precision its error would double at every level (2^j · 6e-8).
        a_step = a.to(b.dtype)
        a_pair = a * a
        b_pair = a_step * b_even + b_odd
        a_fill = a_step
    else:
        # Pair (2k, 2k+1) into one step: h_{2k+1} = (a_{2k+1} a_{2k}) h_{2k-1} + (a_{2k+1} b_{2k} + b_{2k+1}).
        a_even, a_odd = a[..., 0:even:2], a[..., 1:even:2]
        a_pair = a_odd * a_even
        b_pair = a_odd * b_even + b_odd
        a_fill = a[..., 0::2]
    h_odd = _scan_last_dim(a_pair, b_pair)
    # Even positions take one more step from the odd state before them (h_{-1} = 0 for position 0).
    b_rest = b[..., 0::2]
    h_before = torch.cat([torch.zeros_like(h_odd[..., :1]), h_odd], dim=-1)[..., : b_rest.shape[-1]]
    h_evens = a_fill * h_before + b_rest
    # Interleave: positions 0, 2, 4, ... from h_evens and 1, 3, 5, ... from h_odd.
    pairs = torch.stack([h_evens[..., : h_odd.shape[-1]], h_odd], dim=-1).flatten(-2)
    if h_evens.shape[-1] > h_odd.shape[-1]:
        pairs = torch.cat([pairs, h_evens[..., -1:]], dim=-1)
    return pairs


def associative_scan(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Parallel scan for h_t = a_t ⊙ h_{t-1} + b_t in O(log L) sequential depth.

    Args:
        a: (..., L) multipliers (broadcastable with b); any values, real or complex, varying with t or not.
            A multiplier constant in time may be passed with a time size of 1 (an LTI SSM): it is then
            squared in double precision, which keeps long scans with |a| close to 1 as accurate as the loop.
        b: (..., L) inputs.
        h0: optional (...) state before the first step (zero when omitted).

    Returns:
        h: (..., L), every state, equal to :func:`sequential_scan` up to rounding.
    """
    a, b = _prepare(a, b, h0, keep_constant=True)
    return _scan_last_dim(a, b)
