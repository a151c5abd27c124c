"""The Mamba block (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", Fig. 3).

    x, z = in_proj(h).split                      (batch, L, d_inner) each
    x    = silu(causal_conv1d(x))                depthwise, kernel d_conv
    Δ, B, C = x_proj(x).split                    Δ of rank dt_rank, B and C of size d_state
    Δ    = softplus(dt_proj.weight @ Δ + dt_proj.bias)
    y    = selective_scan(x, Δ, A = -exp(A_log), B, C, D) * silu(z)
    out  = out_proj(y)

Parameter names, shapes and initialisation follow ``mamba_ssm`` (``Mamba`` in mamba_simple.py) so that
official and Hugging Face checkpoints load unchanged. The block follows the mixer protocol: ``forward``
(optionally filling a recurrent state), ``allocate_state`` and ``step``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_int, check_shape, check_tensor, compute_dtype
from ..errors import ConfigError, ShapeError
from ..ops import (
    causal_conv1d,
    causal_conv1d_update,
    causal_conv1d_with_state,
    selective_scan,
    selective_state_update,
)
from ..ops.decode import fused_step_applies, mamba_decode_step
from .lowp_linear import LowPrecisionLinear


def _project_channels_first(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``linear`` on the channels of x (batch, in_features, L) -> (batch, out_features, L), contiguous.

    An ``nn.Linear`` runs as one product W @ x, so what the conv and scan kernels read comes out in their
    (batch, channels, L) layout: transposing (batch, L, channels) into it is a copy that costs more than the
    product at prefill shapes (measured: benchmarks/inference.py). A low-precision layer does the same with
    its dequantized weight beyond the rows its own kernel takes; other layers see the (batch, L, ·) view.
    """
    if type(linear) is nn.Linear:
        weight, bias = linear.weight, linear.bias
    elif isinstance(linear, LowPrecisionLinear) and x.shape[0] * x.shape[2] > _lowp_kernel_rows():
        # what its forward multiplies by at this many rows, in x's dtype as its forward returns
        weight = linear.dequantized_weight().to(x.dtype)
        bias = None if linear.bias is None else linear.bias.to(x.dtype)
    else:
        return linear(x.transpose(1, 2)).transpose(1, 2)
    out = _weight_times(weight, x)
    return out if bias is None else out + bias[:, None]


def _lowp_kernel_rows() -> int:
    """Rows up to which a low-precision layer runs its own kernel (decoding sizes), beyond which it
    dequantizes and multiplies."""
    from ..ops.linear.cpu import MAX_ROWS  # numba: loaded with the first low-precision layer

    return MAX_ROWS


def _weight_times(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """weight (out, in) @ x (batch, in, L) -> (batch, out, L), contiguous: a batched product with the weight
    broadcast (``torch.matmul`` computes x^T W^T for a weight that requires grad, then copies it out)."""
    return torch.bmm(weight.expand(x.shape[0], -1, -1), x)


class MambaBlock(nn.Module):
    """Selective state-space mixer: (batch, L, d_model) -> (batch, L, d_model).

    Args:
        d_model: model width.
        d_state: state size N per channel.
        d_conv: width of the causal depthwise convolution.
        expand: d_inner = expand * d_model.
        dt_rank: rank of the Δ projection, or "auto" = ceil(d_model / 16).
        dt_min, dt_max, dt_init_floor: Δ at initialisation is log-uniform in [dt_min, dt_max], floored.
        conv_bias: bias in the convolution; bias: biases in in_proj and out_proj.
        layer_idx: position in the stack (informational).
        scan_backend: passed to :func:`mambakit.ops.selective_scan` ("auto" picks the fastest).
    """

    #: ``step`` may run the fused decoding kernel, which computes exactly this class's _ssm_params split
    #: (a subclass that changes Δ, B or C on the way turns it off).
    fused_decode: bool = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        layer_idx: int | None = None,
        scan_backend: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            check_int(name, v)
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or isinstance(dt_rank, bool) or dt_rank < 1):
            raise ConfigError(f'dt_rank: expected "auto" or a positive integer, got {dt_rank!r}')
        if not 0 < dt_min <= dt_max:
            raise ConfigError(f"dt_min, dt_max: expected 0 < dt_min <= dt_max, got {dt_min!r}, {dt_max!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.layer_idx = layer_idx
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
            **factory,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, **factory))
        self.D = nn.Parameter(torch.empty(self.d_inner, **factory))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        # A and D are not decayed, as officially (the optimiser helper reads this mark).
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        # The Δ bias carries the initial step sizes; a model-level re-initialisation must keep it.
        self.dt_proj.bias._no_reinit = True
        self.reset_ssm_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(
        self,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        generator: torch.Generator | None = None,
    ) -> None:
        """The official S4D-real / Δ initialisation of A_log, D and dt_proj (weight and bias)."""
        bound = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound, generator=generator)
        # Δ log-uniform in [dt_min, dt_max], floored; the bias is its inverse softplus so softplus(bias) = Δ.
        # Computed in float32 as officially, so the same random draws give the same bits.
        u = torch.rand(self.d_inner, generator=generator, dtype=torch.float32)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        inv_softplus_dt = dt + torch.log(-torch.expm1(-dt))
        self.dt_proj.bias.copy_(inv_softplus_dt)
        # S4D-real: A = -(1, 2, ..., N) in every channel, stored as A_log = log(1..N).
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).expand(self.d_inner, -1)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)

    # -------------------------------------------------------------------------------------------- helpers
    def _check_hidden(self, hidden_states: torch.Tensor, ndim: int) -> None:
        check_tensor("hidden_states", hidden_states, ndim=ndim)
        if hidden_states.shape[-1] != self.d_model:
            raise ShapeError(
                f"hidden_states: expected last dimension d_model={self.d_model}, got shape "
                f"{tuple(hidden_states.shape)}"
            )

    def _check_state(self, state: object, batch: int) -> None:
        if not isinstance(state, dict) or "conv_state" not in state or "ssm_state" not in state:
            raise ConfigError(
                "state: expected a dict with 'conv_state' and 'ssm_state' (from allocate_state), "
                f"got {type(state).__name__}"
                + (f" with keys {sorted(state)}" if isinstance(state, dict) else "")
            )
        check_tensor("state['conv_state']", state["conv_state"], ndim=3)
        check_shape(
            "state['conv_state']",
            state["conv_state"],
            (batch, self.d_inner, self.d_conv),
            "(batch, d_inner, d_conv)",
        )
        check_tensor("state['ssm_state']", state["ssm_state"], ndim=3)
        check_shape(
            "state['ssm_state']",
            state["ssm_state"],
            (batch, self.d_inner, self.d_state),
            "(batch, d_inner, d_state)",
        )

    @staticmethod
    def _upcast(t: torch.Tensor) -> torch.Tensor:
        """The SSM's own parameters are used in float32 (as officially), or float64 in a float64 model."""
        return t if t.dtype == torch.float64 else t.float()

    def _conv_params(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conv weight (d_inner, d_conv) and bias in the activations' dtype (they differ under autocast)."""
        weight = self.conv1d.weight.squeeze(1).to(dtype)
        bias = None if self.conv1d.bias is None else self.conv1d.bias.to(dtype)
        return weight, bias

    def _ssm_params(self, x_dbl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split x_proj's output (..., dt_rank + 2N) into Δ-low-rank, B and C."""
        return torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)

    # -------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        state: dict[str, torch.Tensor] | None = None,
        seq_idx: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_model).

        ``seq_idx`` (batch, L) integer ids of packed sequences: each sequence of a row is processed as if
        alone (:mod:`mambakit.ops.packing`); with ``state``, the state continues the first and is left
        holding the last.

        With ``state`` (from :meth:`allocate_state`, or left by an earlier ``forward``/``step``), the sequence
        continues the one the state summarises (a zero state: a fresh prompt): the convolution reads the last
        d_conv − 1 inputs kept in ``conv_state`` and the scan starts from ``ssm_state``. On return the state
        holds the last d_conv inputs and the SSM state after the last position, ready for :meth:`step` or
        another ``forward``: feeding a sequence in pieces equals feeding it whole.
        """
        self._check_hidden(hidden_states, 3)
        batch, L, _ = hidden_states.shape
        if state is not None:
            self._check_state(state, batch)
        xz = _project_channels_first(self.in_proj, hidden_states.transpose(1, 2))  # (batch, 2·d_inner, L)
        x, z = xz.chunk(2, dim=1)
        if state is None:
            x = causal_conv1d(x, *self._conv_params(x.dtype), activation="silu", seq_idx=seq_idx)
        else:  # the first window reaches back d_conv - 1 inputs into what the state summarises
            x = causal_conv1d_with_state(x, state["conv_state"], *self._conv_params(x.dtype),
                                         activation="silu", seq_idx=seq_idx)
        x_dbl = _project_channels_first(self.x_proj, x)  # (batch, dt_rank + 2N, L)
        dt, B, C = self._ssm_params(x_dbl.transpose(1, 2))  # (batch, L, ·) views
        dt = _weight_times(self.dt_proj.weight, dt.transpose(1, 2))  # (batch, d_inner, L), bias added in scan
        A = -torch.exp(self._upcast(self.A_log))
        result = selective_scan(
            x,
            dt,
            A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            D=self._upcast(self.D),
            z=z,
            delta_bias=self._upcast(self.dt_proj.bias),
            delta_softplus=True,
            return_last_state=state is not None,
            backend=self.scan_backend,
            initial_state=None if state is None else state["ssm_state"],
            seq_idx=seq_idx,
        )
        if state is not None:
            y, last_state = result
            state["ssm_state"].copy_(last_state)
        else:
            y = result
        # W @ y in y's (batch, d_inner, L) layout, returned as a (batch, L, d_model) view: a Linear on
        # y.transpose(1, 2) would copy y into rows, and its gradient would reach the scan transposed
        return _project_channels_first(self.out_proj, y).transpose(1, 2)

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> dict[str, torch.Tensor]:
        """A zero state: conv_state (batch, d_inner, d_conv) in ``dtype`` (default: the conv weight's) and
        ssm_state (batch, d_inner, d_state) in float32 (float64 for a float64 model)."""
        weight = self.conv1d.weight
        device = weight.device if device is None else device
        conv_dtype = weight.dtype if dtype is None else dtype
        ssm_dtype = compute_dtype(weight)
        return {
            "conv_state": torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=conv_dtype),
            "ssm_state": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=ssm_dtype),
        }

    def _decay_rates(self) -> torch.Tensor:
        """A = -exp(A_log), (d_inner, d_state), kept between decoding steps while A_log is unchanged (its
        version counter moves with every in-place update, e.g. an optimiser step)."""
        key = (self.A_log._version, self.A_log.data_ptr(), self.A_log.dtype, torch.is_grad_enabled())
        cached = getattr(self, "_A_cached", None)
        if cached is None or cached[0] != key:
            cached = (key, -torch.exp(self._upcast(self.A_log)))
            if not cached[1].requires_grad:
                self._A_cached = cached
        return cached[1]

    def step(self, hidden_states: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """One token: hidden_states (batch, d_model) -> (batch, d_model); updates ``state`` in place, O(1).

        Outside autograd, on CPU tensors of one precision, the middle of the block (conv window, x_proj,
        dt_proj, state update, gate) is one fused kernel call (:mod:`mambakit.ops.decode`)."""
        self._check_hidden(hidden_states, 2)
        self._check_state(state, hidden_states.shape[0])
        xz = self.in_proj(hidden_states)
        if self.fused_decode and self.x_proj.bias is None:
            args = (xz, state["conv_state"], state["ssm_state"], self.conv1d.weight.squeeze(1),
                    self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                    self._upcast(self.dt_proj.bias), self._decay_rates(), self._upcast(self.D))
            if fused_step_applies(*args):
                return self.out_proj(mamba_decode_step(*args, backend="cpu"))
        x, z = xz.chunk(2, dim=-1)  # (batch, d_inner) each
        x = causal_conv1d_update(x, state["conv_state"], *self._conv_params(x.dtype), activation="silu")
        dt, B, C = self._ssm_params(self.x_proj(x))
        dt = dt @ self.dt_proj.weight.t()  # (batch, d_inner)
        A = self._decay_rates()
        y = selective_state_update(
            state["ssm_state"],
            x,
            dt,
            A,
            B,
            C,
            D=self._upcast(self.D),
            z=z,
            dt_bias=self._upcast(self.dt_proj.bias),
            dt_softplus=True,
        )
        return self.out_proj(y)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}"
        )
