"""``mamba_inner_fn``: the whole Mamba block between in_proj and out_proj as one operation, with the
argument list of ``mamba_ssm.ops.selective_scan_interface.mamba_inner_fn``; and ``mamba_inner_ref``.

    x, z   = xz.chunk(2)                                  (batch, d, L) each
    x      = silu(causal_conv1d(x, conv1d_weight, conv1d_bias))
    x_dbl  = x_proj_weight @ x                            rows: [Δ-low-rank | B | C]
    Δ      = delta_proj_weight @ x_dbl[:rank]
    B, C   = given, or x_dbl[B rows] (+ B_proj_bias), x_dbl[C rows] (+ C_proj_bias)
    y      = selective_scan(x, Δ, A, B, C, D, z, delta_bias, delta_softplus)
    out    = y @ out_proj_weightᵀ + out_proj_bias          (batch, L, d_out)

The projected B takes rows rank .. rank + d_state of x_proj_weight, the projected C its last d_state rows
(d_state = 2N for complex A, interleaved re/im), as officially. Optional RMSNorms (``b_rms_weight``,
``c_rms_weight`` over the state, ``dt_rms_weight`` over the channels of Δ, eps ``b_c_dt_rms_eps``; the
Falcon-Mamba variant) act on the projected B and C and on Δ before its bias and softplus.

``mamba_inner_fn`` with ``checkpoint_lvl=1`` (the default) keeps only its inputs (:mod:`.recompute`) and, in
backward, recomputes the block with the fused CPU kernels (conv and scan) under autograd and differentiates
that: the memory of training is that of the inputs, whatever L. (The official kernel keeps
x_dbl and the scan's chunk states too and recomputes the conv and Δ only.) ``checkpoint_lvl=0`` runs the
same fused composition under plain autograd, keeping its intermediates. ``mamba_inner_ref`` is the same
composition on the reference conv and scan. Unlike the official backward, the gradient reaches the RMSNorm
weights and passes through the norms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..._checks import check_shape, check_tensor
from ...errors import ConfigError, ShapeError
from ..conv1d import causal_conv1d, causal_conv1d_ref
from ..rmsnorm import rms_norm
from ..selective_scan import selective_scan, selective_scan_ref
from .recompute import recompute

# The tensor arguments, in the official order.
_TENSORS = ("xz", "conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight", "out_proj_weight",
            "out_proj_bias", "A", "B", "C", "D", "delta_bias", "B_proj_bias", "C_proj_bias",
            "b_rms_weight", "c_rms_weight", "dt_rms_weight")


def _rms(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis; the identity without weight."""
    return x if weight is None else rms_norm(x, weight, eps)


def _check(t: dict, eps: float) -> tuple[int, int]:
    """Validate the arguments; returns (rank, d_state)."""
    xz = check_tensor("xz", t["xz"], ndim=3)
    if xz.shape[1] % 2:
        raise ShapeError(f"xz: expected an even channel count (dim 1: x and z), got shape {tuple(xz.shape)}")
    d = xz.shape[1] // 2
    w = check_tensor("conv1d_weight", t["conv1d_weight"], ndim=(2, 3))
    check_shape("conv1d_weight", w, (d, 1, None) if w.dim() == 3 else (d, None),
                "(d, 1, width) or (d, width)")
    A = check_tensor("A", t["A"], ndim=2, complex_ok=True)
    check_shape("A", A, (d, None), "(d, N)")
    d_state = A.shape[1] * (2 if A.is_complex() else 1)
    dp = check_tensor("delta_proj_weight", t["delta_proj_weight"], ndim=2)
    check_shape("delta_proj_weight", dp, (d, None), "(d, rank)")
    rank = dp.shape[1]
    projected = (t["B"] is None) + (t["C"] is None)
    xp = check_tensor("x_proj_weight", t["x_proj_weight"], ndim=2)
    check_shape("x_proj_weight", xp, (None, d), "(rank + d_state per projected B/C, d)")
    if xp.shape[0] < rank + projected * d_state:
        raise ShapeError(f"x_proj_weight: expected at least rank + {projected}·d_state = "
                         f"{rank + projected * d_state} rows (rank={rank}, d_state={d_state}), "
                         f"got {xp.shape[0]}")
    op = check_tensor("out_proj_weight", t["out_proj_weight"], ndim=2)
    check_shape("out_proj_weight", op, (None, d), "(d_out, d)")
    sizes = {"conv1d_bias": d, "out_proj_bias": op.shape[0], "B_proj_bias": d_state, "C_proj_bias": d_state,
             "b_rms_weight": d_state, "c_rms_weight": d_state, "dt_rms_weight": d}
    for name, size in sizes.items():
        if t[name] is not None:
            check_shape(name, check_tensor(name, t[name], ndim=1), (size,))
    for which in ("B", "C"):
        if t[which] is not None:
            for name in (f"{which}_proj_bias", f"{which.lower()}_rms_weight"):
                if t[name] is not None:
                    raise ConfigError(f"{name}: applies to the projected {which} ({which}=None) only, "
                                      f"but {which} was given")
    if not eps > 0:
        raise ConfigError(f"b_c_dt_rms_eps: expected a positive number, got {eps!r}")
    return rank, d_state


def _projected(x_dbl: torch.Tensor, rows: slice, bias, rms_weight, eps: float,
               complex_A: bool) -> torch.Tensor:
    """B or C from its rows of x_dbl (batch, L, ·): (batch, d_state, L), or (batch, N, 2L) for complex A."""
    X = x_dbl[..., rows]
    if bias is not None:
        X = X + bias.to(X.dtype)
    X = _rms(X, rms_weight, eps)
    if complex_A:   # (batch, L, N·2) -> (batch, N, L·2): the (re, im) pairs interleaved along L
        return X.unflatten(-1, (-1, 2)).permute(0, 2, 1, 3).flatten(2)
    return X.transpose(1, 2)


def _compose(t: dict, delta_softplus: bool, eps: float, conv: Callable, scan: Callable) -> torch.Tensor:
    """The block on the given conv and scan implementations (see the module's docstring)."""
    rank, d_state = _check(t, eps)
    xz, A = t["xz"], t["A"]
    x, z = xz.chunk(2, dim=1)
    weight = t["conv1d_weight"]
    weight = (weight.squeeze(1) if weight.dim() == 3 else weight).to(x.dtype)
    bias = None if t["conv1d_bias"] is None else t["conv1d_bias"].to(x.dtype)
    x = conv(x, weight, bias, "silu")                                         # (batch, d, L)
    x_dbl = F.linear(x.transpose(1, 2), t["x_proj_weight"])                   # (batch, L, rows)
    delta = _rms(F.linear(x_dbl[..., :rank], t["delta_proj_weight"]), t["dt_rms_weight"], eps)
    rows_B, rows_C = slice(rank, rank + d_state), slice(x_dbl.shape[-1] - d_state, x_dbl.shape[-1])
    B = t["B"] if t["B"] is not None else _projected(x_dbl, rows_B, t["B_proj_bias"], t["b_rms_weight"], eps,
                                                     A.is_complex())
    C = t["C"] if t["C"] is not None else _projected(x_dbl, rows_C, t["C_proj_bias"], t["c_rms_weight"], eps,
                                                     A.is_complex())
    y = scan(x, delta.transpose(1, 2), A, B, C, t["D"], z, t["delta_bias"], delta_softplus)
    return F.linear(y.transpose(1, 2), t["out_proj_weight"], t["out_proj_bias"])


def mamba_inner_fn(
    xz: torch.Tensor,
    conv1d_weight: torch.Tensor,
    conv1d_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    delta_proj_weight: torch.Tensor,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor | None = None,
    C: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    B_proj_bias: torch.Tensor | None = None,
    C_proj_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    checkpoint_lvl: int = 1,
    b_rms_weight: torch.Tensor | None = None,
    c_rms_weight: torch.Tensor | None = None,
    dt_rms_weight: torch.Tensor | None = None,
    b_c_dt_rms_eps: float = 1e-6,
) -> torch.Tensor:
    """The Mamba block's inner computation, fused; arguments as ``mamba_ssm``'s ``mamba_inner_fn``.

    Args:
        xz: (batch, 2·d, L), in_proj's output (x then z along dim 1).
        conv1d_weight: (d, 1, width) (as ``nn.Conv1d``) or (d, width).  conv1d_bias: optional (d,).
        x_proj_weight: (rank + d_state per projected B and C, d).  delta_proj_weight: (d, rank).
        out_proj_weight: (d_out, d).  out_proj_bias: optional (d_out,).
        A: (d, N), real or complex.  B, C: None (projected from x) or as ``selective_scan``: (d, N),
            (batch, N, L) or (batch, groups, N, L).  D, delta_bias: optional (d,).
        B_proj_bias, C_proj_bias: optional (d_state,), added to the projected B, C.
        delta_softplus: softplus on Δ + delta_bias.
        checkpoint_lvl: 1 (keep the inputs only, recompute in backward) or 0 (keep the intermediates).
        b_rms_weight, c_rms_weight: optional (d_state,); dt_rms_weight: optional (d,); b_c_dt_rms_eps.

    Returns:
        (batch, L, d_out). Under ``torch.autocast`` the projection weights are cast to the autocast dtype,
        as officially.

    Raises:
        ConfigError: a ``checkpoint_lvl`` other than 0 or 1, a projection bias or RMSNorm weight for a B or
            C that was given, a non-positive eps. ShapeError / DTypeError: naming the bad argument.
    """
    if checkpoint_lvl not in (0, 1) or isinstance(checkpoint_lvl, bool):
        raise ConfigError(f"checkpoint_lvl: expected 0 or 1, got {checkpoint_lvl!r}")
    check_tensor("xz", xz, ndim=3)
    device = xz.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x_proj_weight, delta_proj_weight, out_proj_weight = (
            w.to(dtype) for w in (x_proj_weight, delta_proj_weight, out_proj_weight))
        out_proj_bias = None if out_proj_bias is None else out_proj_bias.to(dtype)
    tensors = (xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
               out_proj_bias, A, B, C, D, delta_bias, B_proj_bias, C_proj_bias, b_rms_weight, c_rms_weight,
               dt_rms_weight)
    options = (bool(delta_softplus), float(b_c_dt_rms_eps))

    def fused(*tensors: torch.Tensor | None) -> torch.Tensor:
        return _compose(dict(zip(_TENSORS, tensors, strict=True)), *options, causal_conv1d, selective_scan)

    if checkpoint_lvl == 0:
        with torch.autocast(device, enabled=False):
            return fused(*tensors)
    return recompute(fused, *tensors)


def mamba_inner_ref(
    xz: torch.Tensor,
    conv1d_weight: torch.Tensor,
    conv1d_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    delta_proj_weight: torch.Tensor,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    A: torch.Tensor,
    B: torch.Tensor | None = None,
    C: torch.Tensor | None = None,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    B_proj_bias: torch.Tensor | None = None,
    C_proj_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    b_rms_weight: torch.Tensor | None = None,
    c_rms_weight: torch.Tensor | None = None,
    dt_rms_weight: torch.Tensor | None = None,
    b_c_dt_rms_eps: float = 1e-6,
) -> torch.Tensor:
    """Reference for :func:`mamba_inner_fn`: the same composition on ``causal_conv1d_ref`` and
    ``selective_scan_ref`` under plain autograd. (The official reference always applies the softplus; this
    one honours ``delta_softplus``, and takes the RMSNorm weights too.)"""
    t = dict(zip(_TENSORS, (xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                            out_proj_bias, A, B, C, D, delta_bias, B_proj_bias, C_proj_bias, b_rms_weight,
                            c_rms_weight, dt_rms_weight), strict=True))
    return _compose(t, bool(delta_softplus), float(b_c_dt_rms_eps), causal_conv1d_ref, selective_scan_ref)
