"""``mamba_split_conv1d_scan_combined``: the Mamba-2 block between in_proj and out_proj (out_proj included)
as one operation, with the arguments of ``mamba_ssm.ops.triton.ssd_combined``; and
``mamba_split_conv1d_scan_ref``.

    z0, x0, z, xBC, dt = zxbcdt.split([d_mlp, d_mlp, dim, dim + 2·ngroups·N, heads])
    x, B, C = silu(causal_conv1d(xBC)).split([dim, ngroups·N, ngroups·N])      (activation optional)
    y       = SSD(x, dt, A, B, C, D, dt_bias, softplus, dt_limit)               heads of ``headdim``
    y       = rmsnorm_gated(y, z) (groups of dim / ngroups)  or, without rmsnorm_weight,  y · silu(z)
    out     = outproj([silu(z0) · x0, y])                                         (or without outproj)

d_mlp (the gated-MLP channels beside the SSM, 0 by default) and N follow from the shapes, as officially.
The fused form keeps only its inputs and recomputes in backward (:mod:`.recompute`) on the fused CPU conv
and the chunked SSD with its hand-written backward; the reference runs the reference conv and the SSD
recurrence under plain autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..._checks import check_int, check_shape, check_tensor
from ...errors import ConfigError, ShapeError
from ..conv1d import causal_conv1d, causal_conv1d_ref
from ..rmsnorm import rms_norm_gated
from ..ssd import ssd
from .recompute import recompute

_TENSORS = ("zxbcdt", "conv1d_weight", "conv1d_bias", "dt_bias", "A", "D", "initial_states", "seq_idx",
            "rmsnorm_weight", "outproj_weight", "outproj_bias")


def _sizes(t: dict, headdim: int | None, ngroups: int) -> tuple[int, int, int, int]:
    """Validate the shapes; returns (heads, headdim, N, d_mlp)."""
    zxbcdt = check_tensor("zxbcdt", t["zxbcdt"], ndim=3)
    D = check_tensor("D", t["D"], ndim=(1, 2))
    if D.dim() == 1 and headdim is None:
        raise ConfigError("headdim: required when D is (heads,), got None")
    heads, headdim = (D.shape[0], headdim) if D.dim() == 1 else D.shape
    check_int("headdim", headdim)
    check_int("ngroups", ngroups)
    if heads % ngroups:
        raise ConfigError(f"ngroups: expected a divisor of the number of heads ({heads}), got {ngroups}")
    dim = heads * headdim
    w = check_tensor("conv1d_weight", t["conv1d_weight"], ndim=(2, 3))
    conv_dim = w.shape[0]
    N = (conv_dim - dim) // (2 * ngroups)
    if N < 1 or conv_dim != dim + 2 * ngroups * N:
        raise ShapeError(f"conv1d_weight: expected dim + 2·ngroups·N channels (dim={dim}, "
                         f"ngroups={ngroups}), "
                         f"got shape {tuple(w.shape)}")
    rest = zxbcdt.shape[-1] - dim - conv_dim - heads
    if rest < 0 or rest % 2:
        raise ShapeError(f"zxbcdt: expected 2·d_mlp + {dim + conv_dim + heads} channels (z, xBC, dt of "
                         f"{heads} heads), got shape {tuple(zxbcdt.shape)}")
    for name, shape in (("conv1d_bias", (conv_dim,)), ("dt_bias", (heads,)), ("A", (heads,)),
                        ("rmsnorm_weight", (dim,))):
        if t[name] is not None:
            check_shape(name, check_tensor(name, t[name], ndim=1), shape)
    if t["outproj_weight"] is not None:
        check_shape("outproj_weight", check_tensor("outproj_weight", t["outproj_weight"], ndim=2),
                    (None, rest // 2 + dim), "(out_dim, d_mlp + dim)")
    elif t["outproj_bias"] is not None:
        raise ConfigError("outproj_bias: given without outproj_weight")
    return heads, headdim, N, rest // 2


def _compose(t: dict, opts: dict, conv: Callable, backend: str):
    heads, headdim, N, d_mlp = _sizes(t, opts["headdim"], opts["ngroups"])
    if opts["activation"] not in (None, "silu", "swish"):
        raise ConfigError(f"activation: expected None, 'silu' or 'swish', got {opts['activation']!r}")
    ngroups, dim = opts["ngroups"], heads * headdim
    zxbcdt = t["zxbcdt"]
    z0, x0, z, xBC, dt = zxbcdt.split([d_mlp, d_mlp, dim, dim + 2 * ngroups * N, heads], dim=-1)
    weight = t["conv1d_weight"]
    weight = weight.squeeze(1) if weight.dim() == 3 else weight
    bias = t["conv1d_bias"]
    xBC = conv(xBC.transpose(1, 2), weight.to(xBC.dtype), None if bias is None else bias.to(xBC.dtype),
               opts["activation"], seq_idx=t["seq_idx"]).transpose(1, 2)
    x, B, C = xBC.split([dim, ngroups * N, ngroups * N], dim=-1)
    norm = t["rmsnorm_weight"]
    result = ssd(x.unflatten(-1, (heads, headdim)), dt, t["A"], B.unflatten(-1, (ngroups, N)),
                 C.unflatten(-1, (ngroups, N)), opts["chunk_size"], D=t["D"],
                 z=z.unflatten(-1, (heads, headdim)) if norm is None else None, dt_bias=t["dt_bias"],
                 initial_states=t["initial_states"], seq_idx=t["seq_idx"], dt_softplus=True,
                 dt_limit=opts["dt_limit"], return_final_states=opts["return_final_states"], backend=backend)
    y, final = result if opts["return_final_states"] else (result, None)
    y = y.flatten(-2)
    if norm is not None:
        y = rms_norm_gated(y, z, norm, opts["rmsnorm_eps"], dim // ngroups, opts["norm_before_gate"])
    if d_mlp > 0:
        y = torch.cat([F.silu(z0) * x0, y], dim=-1)
    if t["outproj_weight"] is not None:
        y = F.linear(y.to(t["outproj_weight"].dtype), t["outproj_weight"], t["outproj_bias"])
    return y if final is None else (y, final)


def _arguments(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size, initial_states, seq_idx,
               dt_limit, return_final_states, activation, rmsnorm_weight, rmsnorm_eps, outproj_weight,
               outproj_bias, headdim, ngroups, norm_before_gate) -> tuple[tuple, dict]:
    tensors = (zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, initial_states, seq_idx, rmsnorm_weight,
               outproj_weight, outproj_bias)
    opts = dict(chunk_size=chunk_size, dt_limit=tuple(dt_limit),
                return_final_states=bool(return_final_states), activation=activation,
                rmsnorm_eps=float(rmsnorm_eps), headdim=headdim, ngroups=ngroups,
                norm_before_gate=bool(norm_before_gate))
    return tensors, opts


def mamba_split_conv1d_scan_combined(
    zxbcdt: torch.Tensor,
    conv1d_weight: torch.Tensor,
    conv1d_bias: torch.Tensor | None,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    chunk_size: int,
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    return_final_states: bool = False,
    activation: str | None = "silu",
    rmsnorm_weight: torch.Tensor | None = None,
    rmsnorm_eps: float = 1e-6,
    outproj_weight: torch.Tensor | None = None,
    outproj_bias: torch.Tensor | None = None,
    headdim: int | None = None,
    ngroups: int = 1,
    norm_before_gate: bool = True,
    state_dtype: torch.dtype | None = None,
):
    """The Mamba-2 block's inner computation, fused; arguments as ``mamba_ssm``'s.

    Args:
        zxbcdt: (batch, L, 2·d_mlp + 2·dim + 2·ngroups·N + heads), in_proj's output; dim = heads·headdim.
        conv1d_weight: (dim + 2·ngroups·N, width) (or with a middle axis of 1).  conv1d_bias: optional.
        dt_bias: (heads,).  A: (heads,).  D: (heads, headdim), or (heads,) with ``headdim`` given.
        chunk_size: SSD chunk length.  initial_states: optional (batch, heads, headdim, N).
        seq_idx: optional (batch, L) integer ids of packed sequences (conv and SSD restart at each).
        dt_limit: clamp of Δ after the softplus.  return_final_states: also return the last state.
        activation: None, "silu" or "swish" after the convolution.
        rmsnorm_weight: optional (dim,), the gated RMSNorm (groups of dim / ngroups, ``rmsnorm_eps``,
            ``norm_before_gate``); without it the output is gated as y·silu(z).
        outproj_weight: optional (out_dim, d_mlp + dim); outproj_bias: optional (out_dim,).
        state_dtype: dtype of the returned final state (default float32, float64 for float64 input).

    Returns:
        (batch, L, out_dim or d_mlp + dim), and with ``return_final_states`` the final state
        (batch, heads, headdim, N). Under ``torch.autocast`` the out-projection runs in the autocast dtype.
    """
    tensors, opts = _arguments(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
                               initial_states, seq_idx, dt_limit, return_final_states, activation,
                               rmsnorm_weight, rmsnorm_eps, outproj_weight, outproj_bias, headdim, ngroups,
                               norm_before_gate)
    device = zxbcdt.device.type if isinstance(zxbcdt, torch.Tensor) else "cpu"
    if torch.is_autocast_enabled(device) and outproj_weight is not None:   # out-projection in that dtype
        cast = torch.get_autocast_dtype(device)
        bias = None if outproj_bias is None else outproj_bias.to(cast)
        tensors = (*tensors[:-2], outproj_weight.to(cast), bias)

    def fused(*tensors):
        return _compose(dict(zip(_TENSORS, tensors, strict=True)), opts, causal_conv1d, "chunked")

    out = recompute(fused, *tensors)
    if return_final_states and state_dtype is not None:
        return out[0], out[1].to(state_dtype)
    return out


def mamba_split_conv1d_scan_ref(
    zxbcdt: torch.Tensor,
    conv1d_weight: torch.Tensor,
    conv1d_bias: torch.Tensor | None,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    chunk_size: int,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    activation: str | None = "silu",
    rmsnorm_weight: torch.Tensor | None = None,
    rmsnorm_eps: float = 1e-6,
    outproj_weight: torch.Tensor | None = None,
    outproj_bias: torch.Tensor | None = None,
    headdim: int | None = None,
    ngroups: int = 1,
    norm_before_gate: bool = True,
) -> torch.Tensor:
    """Reference for :func:`mamba_split_conv1d_scan_combined` (the official reference's arguments: no
    initial or final states, no seq_idx): the same composition on ``causal_conv1d_ref`` and the SSD
    recurrence ``ssd_ref``, under plain autograd. Unlike the official reference it takes d_mlp > 0 too."""
    tensors, opts = _arguments(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size, None, None,
                               dt_limit, False, activation, rmsnorm_weight, rmsnorm_eps, outproj_weight,
                               outproj_bias, headdim, ngroups, norm_before_gate)
    return _compose(dict(zip(_TENSORS, tensors, strict=True)), opts, causal_conv1d_ref, "ref")
