"""The Mamba-3 block (Lahoti et al., "Mamba-3: Improved Sequence Modeling using State Space Principles",
ICLR 2026): a mixer (batch, L, d_model) -> (batch, L, d_model) built around :mod:`mambakit.ops.mamba3`.

    [z, x, B, C, dd_dt, dd_A, trap, angles] = in_proj(u)            (no convolution, unlike Mamba-2)
    Δ = softplus(dd_dt + dt_bias),  A = min(-f(dd_A), -A_floor)      f(a) = 1 + a (a >= 0), 1/(1 - a) (a < 0)
    B, C = B_norm(B), C_norm(C)                                      RMSNorm over N, per rank and group
    y = Mamba3(x, Δ, A, B, C, trap, angles, B_bias, C_bias, D, z, mimo_x, mimo_z, mimo_o)
    out = out_proj(y)        (is_outproj_norm: y = RMSNorm_per_head(y) · weight · silu(z) before out_proj,
                              per rank for MIMO, then contracted with mimo_o)

Parameter names, shapes and initialisation are those of ``mamba_ssm``'s ``Mamba3`` (in_proj, dt_bias,
B_bias, C_bias, B_norm.weight, C_norm.weight, mimo_x/mimo_z/mimo_o, D, norm.weight, out_proj), so its state
dicts load as they are. ``angles`` has one value per rotated pair, shared by the heads. The mixer protocol:
``forward`` (optionally continuing from and filling a state), ``allocate_state`` and ``step``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int, check_shape, check_tensor, compute_dtype
from ..errors import ConfigError, ShapeError
from ..ops.mamba3 import Mamba3State, mamba3, mamba3_step
from .norm import RMSNorm, RMSNormGated

STATE_KEYS = ("angle_state", "ssm_state", "k_state", "v_state")


def heavy_tail(a: torch.Tensor) -> torch.Tensor:
    """1 + a for a >= 0, 1 / (1 - a) for a < 0: positive, continuous, with derivative 1 at 0."""
    return torch.where(a >= 0, 1 + a, torch.reciprocal(1 - a.clamp(max=0)))


def rope_angles(d_state: int, rope_fraction: float) -> int:
    """Rotated pairs of the official layout: floor(d_state · rope_fraction) made even, halved."""
    rotated = int(d_state * rope_fraction)
    return (rotated - rotated % 2) // 2


class Mamba3Block(nn.Module):
    """The Mamba-3 mixer, SISO or MIMO, with the official parameter layout.

    Args:
        d_model: model width.  d_state: N.  expand: d_inner = expand · d_model.  headdim: p.
        ngroups: groups of heads sharing B and C (must divide the heads).
        rope_fraction: 0.5 or 1.0, the fraction of the N axis the rotation turns.
        dt_min, dt_max, dt_init_floor: Δ bias initialisation (log-uniform in [dt_min, dt_max]).
        A_floor: A <= -A_floor.  is_outproj_norm: gated RMSNorm (per head) instead of the SiLU gate.
        is_mimo, mimo_rank: MIMO with rank R (SISO: R = 1).
        fuse_pregate_headwise_norm: a kernel choice of the official code; the same result here.
        chunk_size: chunk length of the chunked form.  layer_idx: the layer's index (for the protocol).
        backend: passed to :func:`mambakit.ops.mamba3.mamba3` ("auto" picks the fastest form).
    """

    def __init__(self, d_model: int, d_state: int = 128, expand: float = 2, headdim: int = 64,
                 ngroups: int = 1, rope_fraction: float = 0.5, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, A_floor: float = 1e-4, is_outproj_norm: bool = False,
                 is_mimo: bool = False, mimo_rank: int = 4, fuse_pregate_headwise_norm: bool = True,
                 chunk_size: int = 64, layer_idx: int | None = None, backend: str = "auto", device=None,
                 dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model = check_int("d_model", d_model)
        self.d_state = check_int("d_state", d_state)
        self.headdim = check_int("headdim", headdim)
        self.ngroups = check_int("ngroups", ngroups)
        self.chunk_size = check_int("chunk_size", chunk_size)
        self.backend = backend
        self.is_mimo, self.is_outproj_norm = bool(is_mimo), bool(is_outproj_norm)
        self.mimo_rank = check_int("mimo_rank", mimo_rank) if self.is_mimo else 1
        self.fuse_pregate_headwise_norm = fuse_pregate_headwise_norm
        d_inner = expand * d_model
        if d_inner != int(d_inner) or d_inner < 1:
            raise ConfigError(f"expand: expand · d_model must be a positive integer, "
                              f"got {expand} · {d_model}")
        self.expand, self.d_inner = expand, int(d_inner)
        if self.d_inner % self.headdim:
            raise ConfigError(f"headdim: expected a divisor of d_inner={self.d_inner}, got {self.headdim}")
        self.nheads = self.d_inner // self.headdim
        if self.nheads % self.ngroups:
            raise ConfigError(f"ngroups: expected a divisor of the number of heads ({self.nheads}), "
                              f"got {self.ngroups}")
        if rope_fraction not in (0.5, 1.0):
            raise ConfigError(f"rope_fraction: expected 0.5 or 1.0, got {rope_fraction!r}")
        self.rope_fraction, self.num_rope_angles = rope_fraction, rope_angles(self.d_state, rope_fraction)
        if self.num_rope_angles < 1:
            raise ConfigError(f"d_state: expected d_state · rope_fraction >= 2 (one rotated pair), got "
                              f"{self.d_state} · {rope_fraction}")
        if not (0 < dt_min <= dt_max):
            raise ConfigError(f"dt_min, dt_max: expected 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if not A_floor >= 0:
            raise ConfigError(f"A_floor: expected a non-negative number, got {A_floor!r}")
        self.A_floor, self.layer_idx = float(A_floor), layer_idx
        h, R, N = self.nheads, self.mimo_rank, self.d_state
        self.bc_dim = N * self.ngroups * R

        # Order of the projection: [z, x, B, C, dd_dt, dd_A, trap, angles].
        d_in_proj = 2 * self.d_inner + 2 * self.bc_dim + 3 * h + self.num_rope_angles
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=False, **factory)
        # dt_bias = softplus⁻¹(dt), dt log-uniform in [dt_min, dt_max]. The SSM's own parameters are float32
        # as officially (float64 in a float64 block, so that float64 checks stay float64 end to end).
        own = {"device": device, "dtype": torch.float64 if dtype == torch.float64 else torch.float32}
        dt = torch.exp(torch.rand(h, **own) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.dt_bias._no_weight_decay = True
        self.B_bias = nn.Parameter(torch.ones(h, R, N, **own))
        self.C_bias = nn.Parameter(torch.ones(h, R, N, **own))
        self.B_norm = RMSNorm(N, eps=1e-5, **factory)
        self.C_norm = RMSNorm(N, eps=1e-5, **factory)
        if self.is_mimo:
            self.mimo_x = nn.Parameter(torch.full((h, R, self.headdim), 1.0 / R, **own))
            self.mimo_z = nn.Parameter(torch.ones(h, R, self.headdim, **own))
            self.mimo_o = nn.Parameter(torch.full((h, R, self.headdim), 1.0 / R, **own))
        self.D = nn.Parameter(torch.ones(h, **own))
        self.D._no_weight_decay = True
        if self.is_outproj_norm:
            self.norm = RMSNormGated(self.d_inner, eps=1e-5, group_size=self.headdim, norm_before_gate=True,
                                     **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False, **factory)

    # ------------------------------------------------------------------------------------------
    def _inputs(self, u: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """u (..., d_model) -> z (..., h, p) and the operation's arguments (leading axes kept)."""
        h, p, R, N, g = self.nheads, self.headdim, self.mimo_rank, self.d_state, self.ngroups
        z, x, B, C, dd_dt, dd_A, trap, angles = torch.split(
            self.in_proj(u), [self.d_inner, self.d_inner, self.bc_dim, self.bc_dim, h, h, h,
                              self.num_rope_angles], dim=-1)
        compute = compute_dtype(u, self.dt_bias)
        A = (-heavy_tail(dd_A.to(compute))).clamp(max=-self.A_floor)
        delta = F.softplus(dd_dt.to(compute) + self.dt_bias.to(compute))
        angles = angles.unsqueeze(-2).expand(*angles.shape[:-1], h, self.num_rope_angles)
        mimo = {k: getattr(self, k) for k in ("mimo_x", "mimo_z", "mimo_o")} if self.is_mimo else {}
        if self.is_outproj_norm:
            mimo.pop("mimo_o", None)                # the norm comes between the ranks' outputs and mimo_o
        args = dict(x=x.unflatten(-1, (h, p)), dt=delta, A=A,
                    B=self.B_norm(B.unflatten(-1, (R, g, N))), C=self.C_norm(C.unflatten(-1, (R, g, N))),
                    trap=trap, angles=angles, B_bias=self.B_bias, C_bias=self.C_bias, D=self.D,
                    z=None if self.is_outproj_norm else z.unflatten(-1, (h, p)), **mimo)
        return z.unflatten(-1, (h, p)), args

    def _output(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The operation's output (..., [R,] h, p) -> (..., d_model): the optional norm, then out_proj."""
        if self.is_outproj_norm:
            zr = z.unsqueeze(-3) * self.mimo_z.transpose(0, 1) if self.is_mimo else z
            y = self.norm(y.flatten(-2), zr.flatten(-2)).unflatten(-1, (self.nheads, self.headdim))
            if self.is_mimo:
                y = (y * self.mimo_o.to(y.dtype).transpose(0, 1)).sum(-3)
        return self.out_proj(y.flatten(-2).to(self.out_proj.weight.dtype))

    def _check_state(self, state: object, batch: int) -> Mamba3State:
        if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
            raise ConfigError(f"state: expected the dict made by allocate_state with keys "
                              f"{list(STATE_KEYS)}, got {type(state).__name__}"
                              + (f" with keys {sorted(state)}" if isinstance(state, dict) else ""))
        h, p, N = self.nheads, self.headdim, self.d_state
        for key, shape in zip(STATE_KEYS, ((batch, h, self.num_rope_angles), (batch, h, p, N),
                                           (batch, self.mimo_rank, h, N), (batch, h, p)), strict=True):
            check_tensor(f"state['{key}']", state[key], ndim=len(shape))
            check_shape(f"state['{key}']", state[key], shape)
        return Mamba3State(*(state[k] for k in STATE_KEYS))

    def _check_input(self, u: torch.Tensor, ndim: int) -> None:
        check_tensor("hidden_states", u, ndim=ndim)
        if u.shape[-1] != self.d_model:
            raise ShapeError(f"hidden_states: expected last dimension d_model={self.d_model}, "
                             f"got {u.shape[-1]}")

    # ------------------------------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, state: dict[str, torch.Tensor] | None = None,
                seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_model).

        With ``state`` (from :meth:`allocate_state`, or left by an earlier ``forward``/``step``) the sequence
        continues the one the state summarises; on return the state holds the angles, SSM state and last
        keys and values after the last position. ``seq_idx`` (batch, L): packed sequences, each starting
        from zero (the state belongs to the sequence at position 0).
        """
        self._check_input(hidden_states, 3)
        initial = None if state is None else self._check_state(state, hidden_states.shape[0])
        z, args = self._inputs(hidden_states)
        result = mamba3(**args, initial_state=initial, seq_idx=seq_idx, return_final_state=state is not None,
                        chunk_size=self.chunk_size, backend=self.backend)
        if state is not None:
            result, final = result
            for key, value in zip(STATE_KEYS, final, strict=True):
                state[key].copy_(value)
        return self._output(result, z)

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> dict[str, torch.Tensor]:
        """Zero generation state: angle_state (batch, heads, n_angles), ssm_state (batch, heads, p, N) in
        float32 (float64 for a float64 block), k_state (batch, R, heads, N), v_state (batch, heads, p) in
        in_proj's dtype (as mamba_ssm); ``dtype`` overrides them all."""
        check_int("batch_size", batch_size)
        device = self.in_proj.weight.device if device is None else device
        wide = dtype or compute_dtype(self.in_proj.weight)
        narrow = dtype or self.in_proj.weight.dtype
        h, p, N = self.nheads, self.headdim, self.d_state
        shapes = ((h, self.num_rope_angles), (h, p, N), (self.mimo_rank, h, N), (h, p))
        return {key: torch.zeros(batch_size, *shape, device=device, dtype=kind)
                for key, shape, kind in zip(STATE_KEYS, shapes, (wide, wide, narrow, narrow), strict=True)}

    def step(self, hidden_states: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """One token: hidden_states (batch, d_model) -> (batch, d_model); updates ``state`` in place."""
        self._check_input(hidden_states, 2)
        current = self._check_state(state, hidden_states.shape[0])
        z, args = self._inputs(hidden_states)
        return self._output(mamba3_step(current, **args), z)

    def extra_repr(self) -> str:
        kind = f"MIMO rank {self.mimo_rank}" if self.is_mimo else "SISO"
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, heads={self.nheads}, "
                f"headdim={self.headdim}, d_state={self.d_state}, ngroups={self.ngroups}, {kind}, "
                f"rope_angles={self.num_rope_angles}, chunk_size={self.chunk_size}")
