"""The Mamba-2 block: a mixer (batch, L, d_model) -> (batch, L, d_model) built around SSD.

    zxbcdt = in_proj(u)                         split into [z0, x0 | z | xBC | dt]
    xBC    = silu(causal depthwise conv(xBC))    split into [x | B | C]
    y      = SSD(x, dt, A = -exp(A_log), B, C, D, dt_bias, softplus)        (mambakit.ops.ssd)
    y      = RMSNorm_grouped(y · silu(z)) · weight                          (norm_before_gate=False)
    out    = out_proj([silu(z0) · x0, y])        (z0, x0: the optional gated-MLP part when d_ssm < d_inner)

Parameter names and shapes are those of ``mamba_ssm``'s ``Mamba2`` and ``transformers``' ``Mamba2Mixer``
(in_proj, conv1d, dt_bias, A_log, D, norm.weight, out_proj), so their state dicts load as they are.
The block follows the mixer protocol: ``forward`` (optionally filling a generation state), ``allocate_state``
and ``step``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int, check_shape, check_tensor, compute_dtype
from ..errors import ConfigError, ShapeError
from ..ops.conv1d import causal_conv1d, causal_conv1d_update, causal_conv1d_with_state
from ..ops.ssd import ssd, ssd_state_update
from .norm import RMSNormGated


class Mamba2Block(nn.Module):
    """The Mamba-2 mixer (Dao & Gu 2024), with the official parameter layout.

    Args:
        d_model: model width.
        d_state: N, the state size per head.  d_conv: width of the causal depthwise convolution.
        expand: d_inner = expand · d_model (must be an integer).
        d_inner: the inner width itself, in place of expand · d_model (Falcon-H1 sets it on its own).
        headdim: p, channels per head; heads = d_ssm / headdim.
        d_ssm: channels that go through SSD (default d_inner); the remaining d_inner - d_ssm channels form a
            gated MLP beside it, as in ``mamba_ssm``.
        ngroups: groups of heads sharing B and C; must divide the number of heads.
        nheads: optional; if given it must equal d_ssm / headdim (the Hugging Face config states both).
        A_init_range, dt_min, dt_max, dt_init_floor: initialisation of A = -exp(A_log) and of dt_bias.
        D_has_hdim: D of shape (d_ssm,) instead of (heads,).
        rmsnorm, norm_before_gate, norm_eps: the gated output norm (without it, y · silu(z)).
        dt_limit: clamp of Δ after the softplus.  bias: biases of in_proj/out_proj.  conv_bias: of conv1d.
        chunk_size: chunk length of the chunked SSD.
        layer_idx: the layer's index in a stack (absorbed, for the protocol).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: float = 2,
        headdim: int = 64,
        d_ssm: int | None = None,
        ngroups: int = 1,
        nheads: int | None = None,
        A_init_range: tuple[float, float] = (1, 16),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        norm_eps: float = 1e-5,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, math.inf),
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 256,
        d_inner: int | None = None,
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model = check_int("d_model", d_model)
        self.d_state = check_int("d_state", d_state)
        self.d_conv = check_int("d_conv", d_conv)
        self.headdim = check_int("headdim", headdim)
        self.ngroups = check_int("ngroups", ngroups)
        self.chunk_size = check_int("chunk_size", chunk_size)
        d_inner = expand * d_model if d_inner is None else check_int("d_inner", d_inner)
        if d_inner != int(d_inner) or d_inner < 1:
            raise ConfigError(f"expand: expand · d_model must be a positive integer, "
                              f"got {expand} · {d_model}")
        self.expand, self.d_inner = expand, int(d_inner)
        self.d_ssm = self.d_inner if d_ssm is None else check_int("d_ssm", d_ssm)
        if self.d_ssm > self.d_inner:
            raise ConfigError(f"d_ssm: expected at most d_inner={self.d_inner}, got {self.d_ssm}")
        if self.d_ssm % self.headdim != 0:
            raise ConfigError(f"headdim: expected a divisor of d_ssm={self.d_ssm} (heads = d_ssm / headdim), "
                              f"got headdim={self.headdim}")
        self.nheads = self.d_ssm // self.headdim
        if nheads is not None and nheads != self.nheads:
            raise ConfigError(f"nheads: expected d_ssm / headdim = {self.d_ssm} / {self.headdim} = "
                              f"{self.nheads}, "
                              f"got nheads={nheads} (headdim mismatch)")
        if self.nheads % self.ngroups != 0:
            raise ConfigError(f"ngroups: expected a divisor of the number of heads ({self.nheads}), "
                              f"got ngroups={self.ngroups}")
        if not (0 < A_init_range[0] <= A_init_range[1]):
            raise ConfigError(f"A_init_range: expected 0 < low <= high, got {A_init_range!r}")
        if not (0 < dt_min <= dt_max):
            raise ConfigError(f"dt_min, dt_max: expected 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if len(dt_limit) != 2 or not dt_limit[0] <= dt_limit[1]:
            raise ConfigError(f"dt_limit: expected (low, high) with low <= high, got {dt_limit!r}")
        self.d_mlp = self.d_inner - self.d_ssm
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.layer_idx = layer_idx
        self.conv_dim = self.d_ssm + 2 * self.ngroups * self.d_state

        # Order of the projection: [z0, x0 (gated MLP), z, xBC, dt].
        d_in_proj = 2 * self.d_mlp + self.d_ssm + self.conv_dim + self.nheads
        self.in_proj = nn.Linear(self.d_model, d_in_proj, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.d_conv, groups=self.conv_dim,
                                padding=self.d_conv - 1, bias=conv_bias, **factory)

        # dt_bias = softplus⁻¹(dt), dt log-uniform in [dt_min, dt_max]: softplus(dt_bias) starts there.
        dt = torch.exp(torch.rand(self.nheads, device=device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        param_dtype = dtype or torch.get_default_dtype()
        self.dt_bias = nn.Parameter((dt + torch.log(-torch.expm1(-dt))).to(param_dtype))
        A = torch.empty(self.nheads, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(param_dtype))
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads, **factory))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        if rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=norm_eps, group_size=self.d_ssm // self.ngroups,
                                     norm_before_gate=norm_before_gate, **factory)
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **factory)

    # ------------------------------------------------------------------------------------------
    def _split(self, zxbcdt: torch.Tensor):
        """(..., d_in_proj) -> z0, x0, z, xBC, dt."""
        return torch.split(zxbcdt, [self.d_mlp, self.d_mlp, self.d_ssm, self.conv_dim, self.nheads], dim=-1)

    def _A(self) -> torch.Tensor:
        compute = compute_dtype(self.A_log)
        return -torch.exp(self.A_log.to(compute))                   # (heads,)

    def _D(self) -> torch.Tensor:
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    def _conv_weight(self) -> torch.Tensor:
        return self.conv1d.weight.view(self.conv_dim, self.d_conv)

    def _output(self, y: torch.Tensor, z: torch.Tensor, z0: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Norm (or gate), the gated-MLP channels, and out_proj: y (..., d_ssm) -> (..., d_model)."""
        if self.rmsnorm:
            y = self.norm(y, z)
        if self.d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)

    def _check_state(self, state: dict, batch: int) -> None:
        if not isinstance(state, dict) or "conv_state" not in state or "ssm_state" not in state:
            raise ConfigError("state: expected the dict made by allocate_state with keys 'conv_state' and "
                              f"'ssm_state', got {type(state).__name__}"
                              + (f" with keys {sorted(state)}" if isinstance(state, dict) else ""))
        check_tensor("state['conv_state']", state["conv_state"], ndim=3)
        check_shape("state['conv_state']", state["conv_state"], (batch, self.conv_dim, self.d_conv),
                    "(batch, conv_dim, d_conv)")
        check_tensor("state['ssm_state']", state["ssm_state"], ndim=4)
        check_shape("state['ssm_state']", state["ssm_state"],
                    (batch, self.nheads, self.headdim, self.d_state),
                    "(batch, heads, headdim, d_state)")

    # ------------------------------------------------------------------------------------------
    def forward(self, hidden_states: torch.Tensor, state: dict[str, torch.Tensor] | None = None,
                seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_model).

        ``seq_idx`` (batch, L) integer ids of packed sequences: each sequence of a row is processed as if
        alone (:mod:`mambakit.ops.packing`); with ``state``, the state continues the first and is left
        holding the last.

        With ``state`` (from :meth:`allocate_state`, or left by an earlier ``forward``/``step``), the sequence
        continues the one the state summarises (a zero state: a fresh prompt): the convolution reads the last
        ``d_conv − 1`` inputs kept in ``conv_state`` and SSD starts from ``ssm_state``. On return the state
        holds the last ``d_conv`` conv inputs and the SSD state after the last position, ready for
        :meth:`step` or another ``forward``.
        """
        check_tensor("hidden_states", hidden_states, ndim=3)
        batch, length, width = hidden_states.shape
        if width != self.d_model:
            raise ShapeError(f"hidden_states: expected last dimension d_model={self.d_model}, got {width}")
        if state is not None:
            self._check_state(state, batch)
        z0, x0, z, xBC, dt = self._split(self.in_proj(hidden_states))
        xBC_seq = xBC.transpose(1, 2)                                # (batch, conv_dim, L)
        if state is None:
            xBC = causal_conv1d(xBC_seq, self._conv_weight(), self.conv1d.bias, "silu", seq_idx=seq_idx)
        else:  # the first window reaches back d_conv - 1 inputs into what the state summarises
            xBC = causal_conv1d_with_state(xBC_seq, state["conv_state"], self._conv_weight(),
                                           self.conv1d.bias, "silu", seq_idx=seq_idx)
        xBC = xBC.transpose(1, 2)
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
        result = ssd(
            x.unflatten(-1, (self.nheads, self.headdim)), dt, self._A(),
            B.unflatten(-1, (self.ngroups, self.d_state)), C.unflatten(-1, (self.ngroups, self.d_state)),
            self.chunk_size, D=self._D(),
            z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)),
            dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.dt_limit,
            initial_states=None if state is None else state["ssm_state"], seq_idx=seq_idx,
            return_final_states=state is not None,
        )
        if state is not None:
            y, final = result
            state["ssm_state"].copy_(final)
        else:
            y = result
        return self._output(y.flatten(-2), z, z0, x0)

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> dict[str, torch.Tensor]:
        """Zero generation state: conv_state (batch, conv_dim, d_conv), ssm_state (batch, heads, headdim,
        d_state).

        Defaults: the block's device; conv_state in conv1d's dtype, ssm_state in in_proj's dtype (as
        mamba_ssm).
        """
        check_int("batch_size", batch_size)
        device = self.in_proj.weight.device if device is None else device
        # in_proj's precision, as mamba_ssm; float32 where in_proj holds low-precision inference weights
        ssm_dtype = self.in_proj.weight.dtype if isinstance(self.in_proj, nn.Linear) else torch.float32
        return {
            "conv_state": torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device,
                                      dtype=dtype or self.conv1d.weight.dtype),
            "ssm_state": torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                                     dtype=dtype or ssm_dtype),
        }

    def step(self, hidden_states: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """One token: hidden_states (batch, d_model) -> (batch, d_model); updates ``state`` in place."""
        check_tensor("hidden_states", hidden_states, ndim=2)
        batch, width = hidden_states.shape
        if width != self.d_model:
            raise ShapeError(f"hidden_states: expected last dimension d_model={self.d_model}, got {width}")
        self._check_state(state, batch)
        z0, x0, z, xBC, dt = self._split(self.in_proj(hidden_states))
        xBC = causal_conv1d_update(xBC, state["conv_state"], self._conv_weight(), self.conv1d.bias, "silu")
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
        y = ssd_state_update(
            state["ssm_state"], x.unflatten(-1, (self.nheads, self.headdim)), dt, self._A(),
            B.unflatten(-1, (self.ngroups, self.d_state)), C.unflatten(-1, (self.ngroups, self.d_state)),
            D=self._D(), z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)),
            dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.dt_limit,
        )
        return self._output(y.flatten(-2), z, z0, x0)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_ssm={self.d_ssm}, heads={self.nheads}, headdim={self.headdim}, "
                f"ngroups={self.ngroups}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"chunk_size={self.chunk_size}")
