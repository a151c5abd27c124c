"""What the Mamba-3 forms share: the argument checks, the state tuple, the data-dependent rotation (RoPE) in
both of the official pairings, and the per-position preparation of keys, queries and values.

Layouts as in :mod:`mambakit.ops.mamba3`. Everything is computed in float32 (float64 for float64 x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..._checks import check_same_device, check_same_real_dtype, check_shape, check_tensor
from ...errors import ConfigError, ShapeError
from ..packing import check_seq_idx


class Mamba3State(NamedTuple):
    """The recurrent state of one Mamba-3 layer, in the order of the official kernels' ``Input_States``.

    angle: (batch, heads, n_angles), the cumulative rotation angles θ (mod 2π).
    ssm: (batch, heads, headdim, N), the state H after the last position.
    k: (batch, rank, heads, N), the last position's rotated, biased keys (B), for the trapezoid's next step.
    v: (batch, heads, headdim), the last position's x (before the MIMO projection).
    """

    angle: torch.Tensor
    ssm: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor


@dataclass(frozen=True)
class Mamba3Dims:
    """Sizes of a call: x (batch, length, heads, headdim), B and C (batch, length, rank, groups, N)."""

    batch: int
    length: int
    heads: int
    headdim: int
    rank: int
    groups: int
    state: int
    angles: int


def check_state(name: str, state: object, dims: Mamba3Dims) -> Mamba3State:
    """Validate an (angle, ssm, k, v) state tuple against the call's sizes."""
    if not isinstance(state, tuple) or len(state) != 4:
        raise ConfigError(f"{name}: expected a Mamba3State (angle, ssm, k, v), got {type(state).__name__}")
    angle, ssm, k, v = state
    b, h, p, r, n = dims.batch, dims.heads, dims.headdim, dims.rank, dims.state
    for part, t, shape, what in (("angle", angle, (b, h, dims.angles), "(batch, heads, n_angles)"),
                                 ("ssm", ssm, (b, h, p, n), "(batch, heads, headdim, N)"),
                                 ("k", k, (b, r, h, n), "(batch, rank, heads, N)"),
                                 ("v", v, (b, h, p), "(batch, heads, headdim)")):
        check_tensor(f"{name}.{part}", t, ndim=len(shape))
        check_shape(f"{name}.{part}", t, shape, what)
    return Mamba3State(angle, ssm, k, v)


def check_mamba3_args(x, dt, A, B, C, trap, angles, B_bias, C_bias, D, z, mimo_x, mimo_z, mimo_o,
                      seq_idx=None, step: bool = False) -> Mamba3Dims:
    """Validate the arguments shared by every form (``step``: one position, no L axis)."""
    lead = 2 if step else 3                                        # (batch[, L], ...) leading axes
    check_tensor("x", x, ndim=lead + 1)
    batch, heads, headdim = x.shape[0], x.shape[-2], x.shape[-1]
    length = 1 if step else x.shape[1]
    pre = (batch,) if step else (batch, length)
    seq = "(batch, heads)" if step else "(batch, L, heads)"
    for name, t in (("dt", dt), ("A", A), ("trap", trap)):
        check_tensor(name, t, ndim=lead)
        check_shape(name, t, (*pre, heads), seq + " of x")
    check_tensor("B", B, ndim=lead + 2)
    rank, groups, state = B.shape[-3:]
    if groups < 1 or heads % groups != 0:
        raise ShapeError(f"B: groups (dim {lead}) must divide heads={heads}, got groups={groups}")
    check_shape("B", B, (*pre, rank, groups, state), "(batch, L, rank, groups, N)")
    check_tensor("C", C, ndim=lead + 2)
    check_shape("C", C, (*pre, rank, groups, state), "same as B")
    check_tensor("angles", angles, ndim=lead + 1)
    n_angles = angles.shape[-1]
    check_shape("angles", angles, (*pre, heads, n_angles), "(batch, L, heads, n_angles)")
    if 2 * n_angles > state:
        raise ShapeError(f"angles: expected at most N/2 = {state // 2} angles (N = {state}), got {n_angles}")
    for name, t in (("B_bias", B_bias), ("C_bias", C_bias)):
        check_tensor(name, t, ndim=3)
        check_shape(name, t, (heads, rank, state), "(heads, rank, N)")
    if D is not None:
        check_tensor("D", D, ndim=1)
        check_shape("D", D, (heads,))
    if z is not None:
        check_tensor("z", z, ndim=lead + 1)
        check_shape("z", z, tuple(x.shape), "same as x")
    if mimo_x is None:
        if rank != 1:
            raise ShapeError(f"B: rank (dim {lead - 1}) must be 1 without mimo_x (SISO), got {rank}")
        if mimo_z is not None or mimo_o is not None:
            raise ConfigError("mimo_z, mimo_o: expected None without mimo_x (SISO)")
    else:
        for name, t in (("mimo_x", mimo_x), ("mimo_z", mimo_z), ("mimo_o", mimo_o)):
            if t is not None:
                check_tensor(name, t, ndim=3)
                check_shape(name, t, (heads, rank, headdim), "(heads, rank, headdim)")
        if z is not None and mimo_z is None:
            raise ConfigError("mimo_z: expected a (heads, rank, headdim) tensor when z and mimo_x are given")
    if seq_idx is not None:
        check_seq_idx(seq_idx, batch, length)
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, trap=trap, angles=angles, B_bias=B_bias, C_bias=C_bias,
                      D=D, z=z, mimo_x=mimo_x, mimo_z=mimo_z, mimo_o=mimo_o, seq_idx=seq_idx)
    check_same_real_dtype(x=x, B=B, C=C, z=z)
    return Mamba3Dims(batch, length, heads, headdim, rank, groups, state, n_angles)


def resolve_pairing(rotate_pairwise: bool | None, mimo: bool) -> bool:
    """The official choice when not given: SISO rotates (2i, 2i+1), MIMO pairs i with i + N/2."""
    return (not mimo) if rotate_pairwise is None else bool(rotate_pairwise)


# ------------------------------------------------------------------------------------------
# The data-dependent rotation
# ------------------------------------------------------------------------------------------

def wrap_angle(theta: torch.Tensor) -> torch.Tensor:
    """θ mod 2π in [0, 2π) (keeps cos/sin accurate over long sequences; the gradient passes through)."""
    return theta - (2 * math.pi) * torch.floor(theta.detach() / (2 * math.pi))


def angle_increment(angles: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Δθ_t = π · tanh(angles_t) · Δ_t: angles (..., heads, n_angles), delta (..., heads)."""
    return math.pi * torch.tanh(angles) * delta[..., None]


def rotate(u: torch.Tensor, theta: torch.Tensor, pairwise: bool) -> torch.Tensor:
    """Rotate pairs of the last axis of ``u`` (..., N) by the angles ``theta`` (..., n_angles).

    ``pairwise``: pair i is (2i, 2i+1) (the SISO kernels); else pair i is (i, i + N/2) (the MIMO kernels).
    Pairs beyond n_angles are left as they are. ``theta`` broadcasts against ``u``'s leading axes.
    """
    n, m = u.shape[-1], theta.shape[-1]
    cos, sin = torch.cos(theta), torch.sin(theta)
    if pairwise:
        pairs = u.unflatten(-1, (n // 2, 2))
        first, second = pairs[..., :m, 0], pairs[..., :m, 1]
        turned = torch.stack([first * cos - second * sin, first * sin + second * cos], dim=-1)
        return torch.cat([turned.flatten(-2), u[..., 2 * m:]], dim=-1)
    half = n // 2
    first, second = u[..., :m], u[..., half:half + m]
    return torch.cat([first * cos - second * sin, u[..., m:half], first * sin + second * cos,
                      u[..., half + m:]], dim=-1)


# ------------------------------------------------------------------------------------------
# Per-position preparation
# ------------------------------------------------------------------------------------------

def heads_of(X: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., rank, groups, N) -> (..., rank, heads, N): head k reads group k // (heads / groups)."""
    return X.repeat_interleave(heads // X.shape[-2], dim=-2)


def keys_queries(B, C, B_bias, C_bias, theta, heads: int, pairwise: bool, dtype: torch.dtype):
    """Rotated, biased keys and queries: B, C (..., rank, groups, N), biases (heads, rank, N), θ (..., heads,
    n_angles) -> k, q (..., rank, heads, N)."""
    th = theta.unsqueeze(-3)                                        # (..., 1, heads, n_angles)
    k = rotate(heads_of(B.to(dtype), heads) + B_bias.to(dtype).transpose(0, 1), th, pairwise)
    q = rotate(heads_of(C.to(dtype), heads) + C_bias.to(dtype).transpose(0, 1), th, pairwise)
    return k, q


def values(x: torch.Tensor, mimo_x: torch.Tensor | None) -> torch.Tensor:
    """x (..., heads, p) -> v (..., rank, heads, p): x · mimo_x[:, r] per rank (x itself for SISO)."""
    if mimo_x is None:
        return x.unsqueeze(-3)
    return x.unsqueeze(-3) * mimo_x.to(x.dtype).transpose(0, 1)


def trapezoid_weights(delta: torch.Tensor, trap: torch.Tensor):
    """λ = σ(trap); the weights of the current input, γ = λΔ, and of the previous one before the decay,
    (1 - λ)Δ (the exponential-trapezoidal rule: β = (1 - λ)Δ·exp(AΔ))."""
    lam = torch.sigmoid(trap)
    return lam * delta, (1 - lam) * delta


def finish(y: torch.Tensor, v: torch.Tensor, D, z, mimo_z, mimo_o, mimo: bool) -> torch.Tensor:
    """Skip, gate and MIMO output projection of the per-rank outputs y, v (..., rank, heads, p).

    y + D·v, times silu(z · mimo_z[:, r]) (z (..., heads, p)), then Σ_r · mimo_o[:, r]. Returns (..., heads,
    p) for SISO (``mimo`` False) or with mimo_o, else the per-rank (..., rank, heads, p).
    """
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * v
    if z is not None:
        zr = z.to(y.dtype).unsqueeze(-3)
        if mimo_z is not None:
            zr = zr * mimo_z.to(y.dtype).transpose(0, 1)
        y = y * F.silu(zr)
    if mimo_o is not None:
        return (y * mimo_o.to(y.dtype).transpose(0, 1)).sum(-3)
    return y if mimo else y.squeeze(-3)
