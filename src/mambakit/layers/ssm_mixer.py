"""The skeleton the linear SSM mixers (S4D, S4, LRU) share: argument checks, the D skip, the GELU and GLU
output, and the mixer protocol (``forward``, ``allocate_state``, ``step``) around a subclass's sequence and
step computations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_shape, check_tensor, compute_dtype
from ..errors import ConfigError, ShapeError


def log_uniform(count: int, low: float, high: float, device=None, dtype=None) -> Tensor:
    """log of values log-uniform in [low, high] (the usual Δ initialisation), shape (count,)."""
    if not 0 < low <= high:
        raise ConfigError(f"dt_min, dt_max: expected 0 < dt_min <= dt_max, got {low!r}, {high!r}")
    u = torch.rand(count, device=device, dtype=dtype)
    return u * (math.log(high) - math.log(low)) + math.log(low)


def as_complex(t: Tensor) -> Tensor:
    """A complex tensor stored as real (..., 2) pairs (so optimisers and gradcheck see real numbers)."""
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return torch.view_as_complex(t.contiguous())


class SSMMixer(nn.Module):
    """Skeleton of the linear SSM mixers: checks, the D skip, GELU, GLU output and the mixer protocol.

    A subclass sets ``self.modes`` and implements ``_sequence(u (batch, H, L), want_state) -> (y, last state
    or None)``, ``_step(u (batch, H), h (batch, *state_shape)) -> y`` (updating h in place) and
    ``_state_shape()``. States are complex: (batch, *state_shape).
    """

    modes: tuple[str, ...] = ()

    def __init__(self, d_model: int, dropout: float, mode: str, layer_idx: int | None, device, dtype) -> None:
        super().__init__()
        self.d_model = check_int("d_model", d_model)
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        if mode not in self.modes:
            raise ConfigError(f"mode: expected one of {', '.join(self.modes)}, got {mode!r}")
        self.mode = mode
        self.layer_idx = layer_idx
        factory = {"device": device, "dtype": dtype}
        self.D = nn.Parameter(torch.randn(d_model, **factory))
        self.D._no_weight_decay = True
        self.dropout = nn.Dropout(dropout)
        self.output_linear = nn.Linear(d_model, 2 * d_model, **factory)

    # ------------------------------------------------------------------------------------------- helpers
    def compute_dtype(self) -> torch.dtype:
        """The SSM runs in float32 (float64 in a float64 model), whatever the activations' precision."""
        return compute_dtype(self.D)

    def complex_dtype(self) -> torch.dtype:
        return torch.complex128 if self.compute_dtype() == torch.float64 else torch.complex64

    def _check_hidden(self, hidden_states: Tensor, ndim: int) -> None:
        check_tensor("hidden_states", hidden_states, ndim=ndim)
        if hidden_states.shape[-1] != self.d_model:
            raise ShapeError(f"hidden_states: expected last dimension d_model={self.d_model}, got shape "
                             f"{tuple(hidden_states.shape)}")
        if ndim == 3 and hidden_states.shape[1] == 0:
            raise ShapeError(f"hidden_states: expected a sequence length L >= 1, got shape "
                             f"{tuple(hidden_states.shape)}")

    def _check_state(self, state: object, batch: int) -> Tensor:
        if not isinstance(state, dict) or "ssm_state" not in state:
            raise ConfigError("state: expected a dict with 'ssm_state' (from allocate_state), got "
                              f"{type(state).__name__}")
        h = state["ssm_state"]
        check_tensor("state['ssm_state']", h, complex_ok=True)
        check_shape("state['ssm_state']", h, (batch, *self._state_shape()), "(batch, *state shape)")
        if not h.is_complex():
            raise ShapeError("state['ssm_state']: expected a complex tensor (from allocate_state), "
                             f"got {h.dtype}")
        return h

    def _output(self, y: Tensor, u: Tensor, out_dtype: torch.dtype) -> Tensor:
        """y, u (batch, H, ...) -> GLU(W · GELU(y + D u)) with channels last, in ``out_dtype``."""
        D = self.D.to(u.dtype)
        y = y + D.view(-1, *([1] * (u.dim() - 2))) * u
        y = self.dropout(F.gelu(y)).movedim(1, -1).to(out_dtype)
        return F.glu(self.output_linear(y), dim=-1)

    # ------------------------------------------------------------------------------------------- protocol
    def forward(self, hidden_states: Tensor, state: dict[str, Tensor] | None = None) -> Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_model).

        With ``state`` (from :meth:`allocate_state`) the sequence is a fresh prompt from a zero state; on
        return ``state['ssm_state']`` holds the state after the last position, ready for :meth:`step`.
        """
        self._check_hidden(hidden_states, 3)
        h = None if state is None else self._check_state(state, hidden_states.shape[0])
        if h is not None and bool((h != 0).any()):
            raise ConfigError(f"state: {type(self).__name__}.forward starts from a zero state (a fresh "
                              "prompt); continue a non-empty state with step(), one token at a time")
        u = hidden_states.transpose(1, 2).to(self.compute_dtype())
        y, last = self._sequence(u, want_state=state is not None)
        if h is not None:
            h.copy_(last)
        return self._output(y, u, hidden_states.dtype)

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> dict[str, Tensor]:
        """A zero state {"ssm_state": (batch, *state shape)}, complex64 (complex128 in a float64 model).

        ``dtype`` may name the complex dtype to use; a real dtype is ignored (the state is complex).
        """
        check_int("batch_size", batch_size)
        device = self.D.device if device is None else device
        ctype = dtype if dtype is not None and dtype.is_complex else self.complex_dtype()
        return {"ssm_state": torch.zeros(batch_size, *self._state_shape(), device=device, dtype=ctype)}

    def step(self, hidden_states: Tensor, state: dict[str, Tensor]) -> Tensor:
        """One token: hidden_states (batch, d_model) -> (batch, d_model); updates ``state`` in place, O(1)."""
        self._check_hidden(hidden_states, 2)
        h = self._check_state(state, hidden_states.shape[0])
        u = hidden_states.to(self.compute_dtype())
        y = self._step(u, h)
        return self._output(y, u, hidden_states.dtype)

    def _sequence(self, u: Tensor, want_state: bool) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def _step(self, u: Tensor, h: Tensor) -> Tensor:
        raise NotImplementedError

    def _state_shape(self) -> tuple[int, ...]:
        raise NotImplementedError
