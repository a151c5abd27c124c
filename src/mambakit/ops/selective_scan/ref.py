"""The selective scan (S6), the core operation of Mamba.

For every batch row b and channel d, with a state h of size N (Mamba paper, Algorithm 2):

    Δ_t  = softplus(delta_t + delta_bias)          (softplus and bias optional)
    h_t  = exp(Δ_t · A) ⊙ h_{t-1} + Δ_t · B_t · u_t   (zero-order hold for A, Euler for B)
    y_t  = <C_t, h_t> + D · u_t                    (for complex A: 2·Re<C_t, h_t>)
    out  = y · silu(z)                              (gate optional)

with h_{-1} = 0, or the given ``initial_state`` (a state carried over from an earlier part of the sequence).
With ``seq_idx`` (packed sequences, :mod:`mambakit.ops.packing`), h restarts from 0 wherever a new sequence
starts.

Layouts follow the official implementation: u, delta, z are (batch, dim, L); A is (dim, N); B and C are
time-invariant (dim, N), input-dependent (batch, N, L), or grouped (batch, groups, N, L). For complex A,
input-dependent B and C are real tensors holding interleaved (re, im) pairs along L (length 2·L).

``selective_scan_ref`` is the plain reference (a Python loop over L, differentiable by autograd);
``selective_state_update`` is one step of it, for generation. ``mambakit.ops.selective_scan`` has the
reference's signature plus ``backend`` and dispatches to faster implementations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._checks import check_same_device, check_same_real_dtype, check_shape, check_tensor, compute_dtype
from ...errors import DTypeError, ShapeError
from ..packing import sequence_starts
from .common import check_scan_args


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype with ``dtype``'s precision (float64 -> complex128, else complex64)."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _expand_bc(X: torch.Tensor, dim: int, complex_A: bool, dtype: torch.dtype) -> torch.Tensor:
    """Bring B or C to (dim, N) or (batch, dim, N, L), complex where A is complex."""
    if X.dim() == 2:
        return X.to(_complex_of(dtype) if complex_A else dtype)
    X = X.to(dtype)
    if complex_A:
        # (..., 2L) interleaved (re, im) -> complex (..., L); unlike view_as_complex, any memory layout works.
        X = torch.complex(X[..., 0::2], X[..., 1::2])
    if X.dim() == 3:  # (batch, N, L): shared by all channels
        return X.unsqueeze(1)
    # (batch, groups, N, L): channel d reads group d // (dim / groups), as the official repeat "(G H)".
    return X.repeat_interleave(dim // X.shape[1], dim=1)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference selective scan: a readable loop over time, exact in float64.

    Args:
        u: (batch, dim, L) input.
        delta: (batch, dim, L) step sizes before ``delta_bias`` and softplus.
        A: (dim, N) real or complex state matrix (diagonal per channel).
        B, C: (dim, N), (batch, N, L) or (batch, groups, N, L); interleaved re/im along L for complex A.
        D: optional (dim,) skip connection.
        z: optional (batch, dim, L) gate, applied as ``y * silu(z)``.
        delta_bias: optional (dim,) added to delta before the softplus.
        delta_softplus: apply softplus to delta.
        return_last_state: also return the final state h_L, (batch, dim, N).
        initial_state: optional (batch, dim, N) state h_{-1} to start from (default zeros), complex exactly
            when A is complex: scanning x from the last state of a scan over a prefix equals scanning the
            concatenation [prefix, x]. Differentiable.
        seq_idx: optional (batch, L) integer ids of packed sequences: where the id changes, the state
            restarts from zero, so a packed row equals its sequences scanned alone (``initial_state`` is
            the first sequence's; the last state is the last sequence's).

    Returns:
        out (batch, dim, L) in u's dtype; with ``return_last_state``, ``(out, last_state)`` where
        ``last_state`` is float32/float64 (complex for complex A).
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx)
    dtype = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, dim, L = u.shape
    complex_A = A.is_complex()

    uf = u.to(dtype)
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Af = A.to(_complex_of(dtype) if complex_A else dtype)
    Bf = _expand_bc(B, dim, complex_A, dtype)
    Cf = _expand_bc(C, dim, complex_A, dtype)

    if initial_state is None:
        h = torch.zeros(batch, dim, A.shape[1], dtype=Af.dtype, device=u.device)
    else:  # a copy: for L = 0 the state returned must not be the caller's tensor
        h = initial_state.to(Af.dtype, copy=True)
    starts = None if seq_idx is None else sequence_starts(seq_idx)
    ys = []
    for t in range(L):
        if starts is not None:                                     # a new sequence forgets the old state
            h = torch.where(starts[:, t, None, None], torch.zeros_like(h), h)
        dt_t = dt[:, :, t, None]                                   # (batch, dim, 1)
        B_t = Bf if Bf.dim() == 2 else Bf[..., t]                  # (dim, N) or (batch, dim, N)
        C_t = Cf if Cf.dim() == 2 else Cf[..., t]
        h = torch.exp(dt_t * Af) * h + dt_t * B_t * uf[:, :, t, None]
        y_t = (h * C_t).sum(-1)                                    # (batch, dim)
        ys.append(2 * y_t.real if complex_A else y_t)
    y = torch.stack(ys, dim=-1) if L > 0 else uf.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + uf * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    out = y.to(u.dtype)
    return (out, h) if return_last_state else out


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
) -> torch.Tensor:
    """One recurrent step of the selective scan, for generation; updates ``state`` in place.

    Args:
        state: (batch, dim, N) state h_{t-1}; complex when A is complex. Overwritten with h_t.
        x: (batch, dim) input u_t.
        dt: (batch, dim) step size before ``dt_bias`` and softplus.
        A: (dim, N) real or complex.
        B, C: (batch, N) or grouped (batch, groups, N), in x's dtype; may be complex for complex A.
        D: optional (dim,); z: optional (batch, dim) gate; dt_bias: optional (dim,).

    Returns:
        y_t, (batch, dim), in x's dtype. Running this L times from a zero state equals
        :func:`selective_scan_ref` on the whole sequence.
    """
    check_tensor("x", x, ndim=2)
    batch, dim = x.shape
    check_tensor("dt", dt, ndim=2)
    check_shape("dt", dt, (batch, dim), "same as x")
    check_tensor("A", A, ndim=2, complex_ok=True)
    if A.shape[0] != dim:
        raise ShapeError(f"A: expected shape (dim={dim}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    check_tensor("state", state, ndim=3, complex_ok=True)
    check_shape("state", state, (batch, dim, N), "(batch, dim, N)")
    if A.is_complex() != state.is_complex():
        raise DTypeError(f"state: must be complex exactly when A is complex; got state {state.dtype}, "
                         f"A {A.dtype}")
    for name, X in (("B", B), ("C", C)):
        check_tensor(name, X, ndim=(2, 3), complex_ok=A.is_complex())
        if X.dim() == 2:
            check_shape(name, X, (batch, N), "(batch, N)")
        else:
            if X.shape[1] < 1 or dim % X.shape[1] != 0:
                raise ShapeError(f"{name}: groups (dim 1) must divide dim={dim}, got groups={X.shape[1]}")
            check_shape(name, X, (batch, X.shape[1], N), "grouped (batch, groups, N)")
    if D is not None:
        check_tensor("D", D, ndim=1)
        check_shape("D", D, (dim,))
    if z is not None:
        check_tensor("z", z, ndim=2)
        check_shape("z", z, (batch, dim), "same as x")
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, ndim=1)
        check_shape("dt_bias", dt_bias, (dim,))
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    check_same_real_dtype(x=x, dt=dt, z=z, B=B, C=C)  # complex B, C (for complex A) are skipped

    dtype = compute_dtype(x, dt, A, B, C, D, z, dt_bias, state)
    dtf = dt.to(dtype)
    if dt_bias is not None:
        dtf = dtf + dt_bias.to(dtype)
    if dt_softplus:
        dtf = F.softplus(dtf)

    def per_channel(X: torch.Tensor) -> torch.Tensor:  # -> (batch, dim, N) or (batch, 1, N)
        X = X.to(_complex_of(dtype) if X.is_complex() else dtype)
        return X.unsqueeze(1) if X.dim() == 2 else X.repeat_interleave(dim // X.shape[1], dim=1)

    Af = A.to(_complex_of(dtype) if A.is_complex() else dtype)
    h = state.to(Af.dtype, copy=True)  # a copy: autograd may keep h_{t-1} while state is overwritten below
    h = torch.exp(dtf[..., None] * Af) * h + (dtf * x.to(dtype))[..., None] * per_channel(B)
    state.copy_(h)
    y = (h * per_channel(C)).sum(-1)
    y = 2 * y.real if A.is_complex() else y
    if D is not None:
        y = y + x.to(dtype) * D.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(x.dtype)
