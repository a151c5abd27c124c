"""One recurrent step of the selective scan, for generation: :func:`selective_state_update`.

It takes both layouts of ``mamba_ssm``'s ``selective_state_update``:

- per channel (Mamba): state (batch, dim, N), x, dt, z (batch, dim), A (dim, N), D and dt_bias (dim,);
- multi-head (Mamba-2): state (batch, heads, headdim, N), x, dt, z (batch, heads, headdim),
  A (heads, headdim, N), D and dt_bias (heads, headdim). Mamba-2 passes A, dt, dt_bias and D as stride-0
  expanded views of per-head scalars; any strides work here.

B and C are (batch, N) (one group) or (batch, groups, N). The per-channel layout is the multi-head one with
headdim 1 (each channel a head), so one code path serves both: with groups, channel d reads group
d // (dim / groups), head k reads group k // (heads / groups).

``state_batch_indices`` (batch,) lets the step update rows of a larger pool of states (a server's slots):
row i of x updates ``state[state_batch_indices[i]]``; a negative index marks a padding row, whose output is
zero and which touches no state. Half-precision x, dt, z (and B, C) with a float32 state and A are accepted
as the official kernel does: the step computes in float32 (float64 if an input is float64) and returns x's
dtype. Complex A (with a complex state) is a mambakit extension: y = 2·Re<C, h>.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._checks import (
    check_integer_tensor,
    check_same_device,
    check_same_real_dtype,
    check_shape,
    check_tensor,
    compute_dtype,
)
from ...errors import ConfigError, DTypeError, ShapeError


def complex_of(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype with ``dtype``'s precision (float64 -> complex128, else complex64)."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _check_indices(indices: torch.Tensor, batch: int, pool: int) -> None:
    check_integer_tensor("state_batch_indices", indices, ndim=1)
    check_shape("state_batch_indices", indices, (batch,), "one state row per row of x")
    valid = indices[indices >= 0]
    if valid.numel() and int(valid.max()) >= pool:
        raise ShapeError(f"state_batch_indices: expected indices < {pool} (rows of state), "
                         f"got {int(valid.max())}")
    if valid.unique().numel() != valid.numel():
        raise ConfigError("state_batch_indices: expected each state row at most once, got repeated indices "
                          f"{indices.tolist()}")


def _check_step(state, x, dt, A, B, C, D, z, dt_bias, indices) -> tuple[int, int, int]:
    """Validate a step in either layout; returns (heads, headdim, N) of the multi-head view."""
    check_tensor("state", state, ndim=(3, 4), complex_ok=True)
    heads_layout = state.dim() == 4
    per = "(batch, heads, headdim)" if heads_layout else "(batch, dim)"
    check_tensor("x", x, ndim=3 if heads_layout else 2)
    batch = x.shape[0]
    inner = tuple(x.shape[1:])                                   # (heads, headdim) or (dim,)
    check_tensor("dt", dt, ndim=x.dim())
    check_shape("dt", dt, (batch, *inner), "same as x")
    check_tensor("A", A, ndim=len(inner) + 1, complex_ok=True)
    if tuple(A.shape[:-1]) != inner:
        what = "heads, headdim" if heads_layout else "dim"
        raise ShapeError(f"A: expected shape ({what}={inner if heads_layout else inner[0]}, N), "
                         f"got {tuple(A.shape)}")
    N = A.shape[-1]
    pool = state.shape[0] if indices is not None else batch
    check_shape("state", state, (pool, *inner, N), "(batch, heads, headdim, N)" if heads_layout
                else "(batch, dim, N)")
    if A.is_complex() != state.is_complex():
        raise DTypeError(f"state: must be complex exactly when A is complex; got state {state.dtype}, "
                         f"A {A.dtype}")
    heads = inner[0]
    for name, X in (("B", B), ("C", C)):
        check_tensor(name, X, ndim=(2, 3), complex_ok=A.is_complex())
        if X.dim() == 2:
            check_shape(name, X, (batch, N), "(batch, N)")
        else:
            if X.shape[1] < 1 or heads % X.shape[1] != 0:
                what = "heads" if heads_layout else "dim"
                raise ShapeError(f"{name}: groups (dim 1) must divide {what}={heads}, "
                                 f"got groups={X.shape[1]}")
            check_shape(name, X, (batch, X.shape[1], N), "grouped (batch, groups, N)")
    for name, X in (("D", D), ("dt_bias", dt_bias)):
        if X is not None:
            check_tensor(name, X, ndim=len(inner))
            check_shape(name, X, inner)
    if z is not None:
        check_tensor("z", z, ndim=x.dim())
        check_shape("z", z, (batch, *inner), f"same as x {per}")
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                      state_batch_indices=indices)
    activations = {"x": x, "dt": dt, "z": z, "B": B, "C": C}
    if any(t is not None and t.dtype == torch.float64 for t in activations.values()):
        check_same_real_dtype(**activations)   # float64 is not mixed; half with float32 is (as officially)
    if indices is not None:
        _check_indices(indices, batch, state.shape[0])
    return (heads, inner[1], N) if heads_layout else (heads, 1, N)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    state_batch_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step h_t = exp(Δ·A) h_{t-1} + Δ·x·B, y = <C, h_t> + D·x, y·silu(z); updates ``state`` in place.

    Args:
        state: (batch, dim, N) or (batch, heads, headdim, N); with ``state_batch_indices`` (pool, ...) with
            any pool size. Complex exactly when A is complex. Overwritten with h_t (in its own dtype).
        x, dt, z: (batch, dim) or (batch, heads, headdim); dt before ``dt_bias`` and softplus.
        A: (dim, N) or (heads, headdim, N).  B, C: (batch, N) or (batch, groups, N).
        D, dt_bias: optional (dim,) or (heads, headdim).
        state_batch_indices: optional (batch,) integer rows of ``state`` to update; negative: padding.

    Returns:
        y_t in x's shape and dtype. Running the step L times from a zero state equals
        :func:`~mambakit.ops.selective_scan.ref.selective_scan_ref` (per channel) or
        :func:`~mambakit.ops.ssd.ref.ssd_ref` (multi-head, per-head A) on the whole sequence.
    """
    heads, headdim, N = _check_step(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    dtype = compute_dtype(x, dt, A, B, C, D, z, dt_bias, state)
    cdtype = complex_of(dtype) if A.is_complex() else dtype

    def heads_view(t: torch.Tensor | None, dims: int) -> torch.Tensor | None:
        """The multi-head view of a tensor whose channel axis is ``dims``: per channel, (.., dim, ..) becomes
        (.., dim, 1, ..); multi-head tensors are already in it."""
        if state.dim() == 4:
            return t
        return t.reshape(*t.shape[:dims], heads, headdim, *t.shape[dims + 1:])

    def per_head(X: torch.Tensor) -> torch.Tensor:                 # -> (batch, heads, 1, N)
        X = X.to(complex_of(dtype) if X.is_complex() else dtype)
        X = X.unsqueeze(1) if X.dim() == 2 else X.repeat_interleave(heads // X.shape[1], dim=1)
        return X.unsqueeze(2)

    xf = heads_view(x, 1).to(dtype)
    delta = heads_view(dt, 1).to(dtype)
    if dt_bias is not None:
        delta = delta + heads_view(dt_bias, 0).to(dtype)
    if dt_softplus:
        delta = F.softplus(delta)
    Af = heads_view(A, 0).to(cdtype)
    states = state.unsqueeze(2) if state.dim() == 3 else state     # (pool, heads, headdim, N), a view
    if state_batch_indices is None:
        h_prev = states.to(cdtype, copy=True)  # a copy: autograd may keep h_{t-1} while state is overwritten
    else:
        valid = state_batch_indices >= 0
        h_prev = states.index_select(0, state_batch_indices.clamp(min=0)).to(cdtype)
    h = torch.exp(delta[..., None] * Af) * h_prev + (delta * xf)[..., None] * per_head(B)
    y = (h * per_head(C)).sum(-1)
    y = 2 * y.real if A.is_complex() else y
    if D is not None:
        y = y + xf * heads_view(D, 0).to(dtype)
    if z is not None:
        y = y * F.silu(heads_view(z, 1).to(dtype))
    if state_batch_indices is None:
        states.copy_(h)
    else:
        rows = valid.nonzero().squeeze(1)
        states.index_copy_(0, state_batch_indices[rows], h[rows].to(state.dtype))
        y = torch.where(valid[:, None, None], y, 0)               # padding rows give zeros
    return y.reshape(x.shape).to(x.dtype)
