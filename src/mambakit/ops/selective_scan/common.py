"""What the selective-scan implementations share: the argument checks (:func:`check_scan_args`, also the
reference's), the kernel layout of B and C, and (for the backends whose kernels run only the core
recurrence) the prologue and epilogue in differentiable torch.

The core of the ``chunked`` and ``triton`` backends computes, for real A, ``y_t = <C_t, h_t>`` with
``h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t`` from h_{-1} = 0 or a given initial state.
Before it: the bias and softplus on delta; after it: the skip term ``D·u`` and the ``SiLU(z)`` gate; these are
O(1) per (batch, channel, step) and autograd differentiates them (:func:`run_real_scan`). The ``cpu``
backend does all of it inside its kernels and uses only :func:`check_real_scan` and :func:`kernel_layout`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..._checks import check_same_device, check_same_real_dtype, check_shape, check_tensor, compute_dtype
from ...errors import DeviceError, DTypeError, ShapeError
from ..packing import check_seq_idx, sequence_starts


def _check_bc(name: str, X: torch.Tensor, batch: int, dim: int, N: int, L: int, complex_A: bool) -> None:
    check_tensor(name, X, ndim=(2, 3, 4), complex_ok=complex_A)
    if X.dim() == 2:
        check_shape(name, X, (dim, N), "time-invariant (dim, N)")
        if complex_A and not X.is_complex():
            raise DTypeError(f"{name}: time-invariant {name} must be complex when A is complex, "
                             f"got {X.dtype}")
        return
    if X.is_complex():
        raise DTypeError(f"{name}: input-dependent {name} must be real (interleaved re/im for complex A), "
                         f"got {X.dtype}")
    Lx = 2 * L if complex_A else L
    if X.dim() == 3:
        layout = "input-dependent (batch, N, L)" + (", L doubled" if complex_A else "")
        check_shape(name, X, (batch, N, Lx), layout)
    else:
        groups = X.shape[1]
        if groups < 1 or dim % groups != 0:
            raise ShapeError(f"{name}: groups (dim 1) must divide dim={dim}, got groups={groups}")
        check_shape(name, X, (batch, groups, N, Lx), "grouped (batch, groups, N, L)")


def check_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                    seq_idx=None) -> None:
    """Validate the arguments of a selective scan; raises a mambakit error naming the argument."""
    check_tensor("u", u, ndim=3)
    batch, dim, L = u.shape
    check_tensor("delta", delta, ndim=3)
    check_shape("delta", delta, (batch, dim, L), "same as u")
    check_tensor("A", A, ndim=2, complex_ok=True)
    if A.shape[0] != dim:
        raise ShapeError(f"A: expected shape (dim={dim}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    _check_bc("B", B, batch, dim, N, L, A.is_complex())
    _check_bc("C", C, batch, dim, N, L, A.is_complex())
    if D is not None:
        check_tensor("D", D, ndim=1)
        check_shape("D", D, (dim,))
    if z is not None:
        check_tensor("z", z, ndim=3)
        check_shape("z", z, (batch, dim, L), "same as u")
    if delta_bias is not None:
        check_tensor("delta_bias", delta_bias, ndim=1)
        check_shape("delta_bias", delta_bias, (dim,))
    if initial_state is not None:
        # Like A (and the last state returned), any real precision; complex exactly when A is complex.
        check_tensor("initial_state", initial_state, ndim=3, complex_ok=A.is_complex())
        check_shape("initial_state", initial_state, (batch, dim, N), "(batch, dim, N)")
        if A.is_complex() and not initial_state.is_complex():
            raise DTypeError(f"initial_state: must be complex when A is complex, got {initial_state.dtype}")
    if seq_idx is not None:
        check_seq_idx(seq_idx, batch, L)
    check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                      initial_state=initial_state, seq_idx=seq_idx)
    variable = {"B": B, "C": C} if A.is_complex() else {k: v for k, v in (("B", B), ("C", C)) if v.dim() > 2}
    check_same_real_dtype(u=u, delta=delta, z=z, **variable)


# core(u, dt, A, B, C[, h0][, starts=]) -> (y, last_state), all in the compute dtype: u, dt (batch, dim, L),
# B and C in the caller's layout; h0, the initial state (batch, dim, N), is passed only when given (a core
# that takes no h0 starts from zeros); starts (batch, L) bool only for packed sequences.
ScanCore = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def check_real_scan(backend: str, u, delta, A, B, C, D, z, delta_bias, device_type: str | None = None,
                    initial_state: torch.Tensor | None = None,
                    seq_idx: torch.Tensor | None = None) -> torch.dtype:
    """Validate the arguments of a real-A backend (see ``selective_scan_ref``) and return the compute dtype
    (float64 if any input is float64, else float32).

    Raises:
        ShapeError, DTypeError, DeviceError: naming the bad argument; DTypeError also for complex A, and
        DeviceError when ``device_type`` (the one device type the backend runs on; None: any) is not u's.
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx)
    if A.is_complex():
        raise DTypeError(f"A: the {backend!r} backend needs a real A, got {A.dtype}; "
                         f"use backend='auto' or 'ref' for complex A")
    if device_type is not None and u.device.type != device_type:
        raise DeviceError(f"u: the {backend!r} backend runs on {device_type}, got tensors on {u.device}")
    return compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)


def run_real_scan(core: ScanCore, backend: str, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool,
                  return_last_state: bool, device_type: str | None = None,
                  initial_state: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None):
    """Check the arguments, apply the prologue, run ``core``, apply the epilogue; see ``selective_scan_ref``.

    ``device_type``: the one device type the backend runs on (None: any). With ``seq_idx``, the core is
    called with ``starts=`` (batch, L) bool, True where a packed sequence starts (its state restarts at 0).
    """
    dtype = check_real_scan(backend, u, delta, A, B, C, D, z, delta_bias, device_type, initial_state,
                            seq_idx)
    uf = u.to(dtype)
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    args = (uf, dt, A.to(dtype), B.to(dtype), C.to(dtype))
    h0 = () if initial_state is None else (initial_state.to(dtype),)
    y, last = core(*args, *h0) if seq_idx is None else core(*args, *h0, starts=sequence_starts(seq_idx))
    if D is not None:
        y = y + uf * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    out = y.to(u.dtype)
    return (out, last) if return_last_state else out


def empty_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, dtype: torch.dtype,
               initial_state: torch.Tensor | None = None):
    """(out, last_state) for L = 0: nothing to scan, the last state is the initial one (zeros by default).
    The sum keeps every input in the graph, so each gradient is zeros of the input's shape."""
    batch, dim, _ = u.shape
    inputs = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    out = u.new_zeros(batch, dim, 0, dtype=dtype) + 0 * sum(t.to(dtype).sum() for t in inputs)
    if initial_state is not None:   # a copy, not the caller's tensor
        return out, initial_state.to(dtype, copy=True)
    return out, u.new_zeros(batch, dim, A.shape[1], dtype=dtype)


def kernel_layout(X: torch.Tensor, dim: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """B or C as one contiguous (batch or 1, groups, L or 1, N) tensor for a fused kernel, plus
    (batch_select, time_select, channels_per_group): (b, d, t) reads row b·batch_select, group
    d // channels_per_group, step t·time_select.

    (dim, N) -> (1, dim, 1, N); (batch, N, L) -> (batch, 1, L, N); (batch, G, N, L) -> (batch, G, L, N).
    Differentiable: autograd maps the kernel's gradient back to the caller's layout.
    """
    if X.dim() == 2:
        return X.reshape(1, dim, 1, X.shape[1]).contiguous(), (0, 0, 1)
    if X.dim() == 3:
        X = X.unsqueeze(1)
    groups = X.shape[1]
    return X.transpose(2, 3).contiguous(), (1, 1, dim // groups)


def kernel_core(kernel: type[torch.autograd.Function]) -> ScanCore:
    """A ``core`` for :func:`run_real_scan` from a fused kernel's autograd Function, which takes
    ``(u, dt, A, Bk, Ck, b_index, c_index, h0)`` with B and C in :func:`kernel_layout` and h0 the initial
    state (batch, dim, N) or None (zeros)."""

    def core(u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             h0: torch.Tensor | None = None):
        batch, dim, L = u.shape
        if L == 0:
            return empty_scan(u, dt, A, B, C, dtype=u.dtype, initial_state=h0)
        Bk, b_index = kernel_layout(B, dim)
        Ck, c_index = kernel_layout(C, dim)
        h0 = None if h0 is None else h0.contiguous()
        return kernel.apply(u.contiguous(), dt.contiguous(), A.contiguous(), Bk, Ck, b_index, c_index, h0)

    return core
