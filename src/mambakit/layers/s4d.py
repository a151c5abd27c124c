"""S4D: a diagonal state-space layer (Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of
Diagonal State Space Models", NeurIPS 2022), and the skeleton it shares with the S4 and LRU mixers.

Every channel of the (batch, L, d_model) input runs its own SSM with a complex diagonal A:

    y = SSM(u) + D ⊙ u,   out = GLU(W · GELU(y))          (W: d_model -> 2 d_model, GLU halves it back)

The SSM can run three ways that give the same numbers (``mode``): ``"conv"`` (kernel by Vandermonde product,
FFT convolution: the training path), ``"scan"`` (parallel associative scan) and ``"recurrent"`` (one step
at a time); generation always uses :meth:`step`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_shape, check_tensor
from ..errors import ConfigError, ShapeError
from ..ssm.discretize import METHODS, discretize_diag
from ..ssm.kernels import kernel_vandermonde
from ..ssm.modes import diag_ssm_convolution, diag_ssm_final_state, diag_ssm_recurrent, diag_ssm_scan

S4D_INITS = ("lin", "inv", "real")


def check_positive_int(name: str, value: object) -> int:
    """Raise ConfigError unless ``value`` is an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
    return value


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


def s4d_eigenvalues(init: str, N: int) -> Tensor:
    """The diagonal A of an S4D initialisation for state size N, as complex128.

    ``"lin"``: −½ + iπn and ``"inv"``: −½ + i(N/π)(N/(2n+1) − 1), n < N/2 (half of N; the other half are their
    conjugates, accounted for by taking twice the real part); ``"real"``: −(n + 1), n < N.
    """
    if init not in S4D_INITS:
        raise ConfigError(f"init: expected one of {', '.join(S4D_INITS)}, got {init!r}")
    if init == "real":
        return torch.complex(-(torch.arange(N, dtype=torch.float64) + 1), torch.zeros(N, dtype=torch.float64))
    if N < 2 or N % 2:
        raise ConfigError(f"d_state: S4D-{init} keeps N/2 conjugate pairs, so expected an even N >= 2, "
                          f"got {N}")
    n = torch.arange(N // 2, dtype=torch.float64)
    imag = math.pi * n if init == "lin" else (N / math.pi) * (N / (2 * n + 1) - 1)
    return torch.complex(torch.full_like(n, -0.5), imag)


class SSMMixer(nn.Module):
    """Skeleton of the linear SSM mixers: checks, the D skip, GELU, GLU output and the mixer protocol.

    A subclass sets ``self.modes`` and implements ``_sequence(u (batch, H, L), want_state) -> (y, last state
    or None)``, ``_step(u (batch, H), h (batch, *state_shape)) -> y`` (updating h in place) and
    ``_state_shape()``. States are complex: (batch, *state_shape).
    """

    modes: tuple[str, ...] = ()

    def __init__(self, d_model: int, dropout: float, mode: str, layer_idx: int | None, device, dtype) -> None:
        super().__init__()
        self.d_model = check_positive_int("d_model", d_model)
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
        return torch.float64 if self.D.dtype == torch.float64 else torch.float32

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
        u = hidden_states.transpose(1, 2).to(self.compute_dtype())
        y, last = self._sequence(u, want_state=state is not None)
        if h is not None:
            h.copy_(last)
        return self._output(y, u, hidden_states.dtype)

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> dict[str, Tensor]:
        """A zero state {"ssm_state": (batch, *state shape)}, complex64 (complex128 in a float64 model).

        ``dtype`` may name the complex dtype to use; a real dtype is ignored (the state is complex).
        """
        check_positive_int("batch_size", batch_size)
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


class S4D(SSMMixer):
    """Diagonal SSM mixer: (batch, L, d_model) -> (batch, L, d_model).

    Args:
        d_model: width H; each channel has its own SSM.
        d_state: state size N per channel (for the complex inits, N/2 conjugate pairs are stored).
        init: ``"lin"`` (S4D-Lin), ``"inv"`` (S4D-Inv) or ``"real"`` (S4D-Real).
        A_init: optional explicit diagonal A, (M,) or (d_model, M), real or complex, every real part < 0;
            a complex A_init is taken as conjugate pairs (its real-part output is doubled).
            Overrides ``init``.
        dt_min, dt_max: Δ per channel is log-uniform in [dt_min, dt_max] at initialisation (learned as log Δ).
        discretization: ``"zoh"`` (as in S4D), ``"bilinear"`` or ``"euler"``.
        dropout: after the GELU.
        mode: ``"conv"``, ``"scan"`` or ``"recurrent"`` for :meth:`forward`.
    """

    modes = ("conv", "scan", "recurrent")

    def __init__(self, d_model: int, d_state: int = 64, *, init: str = "lin", A_init: Tensor | None = None,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, discretization: str = "zoh",
                 dropout: float = 0.0, mode: str = "conv", layer_idx: int | None = None, device=None,
                 dtype=None) -> None:
        super().__init__(d_model, dropout, mode, layer_idx, device, dtype)
        dtype = self.D.dtype  # the default dtype when none is given, so no parameter stays float64
        self.d_state = check_positive_int("d_state", d_state)
        if discretization not in METHODS:
            raise ConfigError(f"discretization: expected one of {', '.join(METHODS)}, got {discretization!r}")
        self.discretization = discretization
        self.init = init if A_init is None else "custom"
        if A_init is None:
            A = s4d_eigenvalues(init, d_state)
            self.conj_pairs = init != "real"
        else:
            A = self._check_A_init(A_init)
            self.conj_pairs = A_init.is_complex()
        A = A.expand(d_model, -1) if A.dim() == 1 else A
        modes = A.shape[-1]
        factory = {"device": device, "dtype": dtype}
        real_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        self.log_dt = nn.Parameter(log_uniform(d_model, dt_min, dt_max, device=device, dtype=dtype))
        self.A_log_neg_real = nn.Parameter(torch.log(-A.real).to(device=device, dtype=dtype).clone())
        if self.conj_pairs:
            self.A_imag = nn.Parameter(A.imag.to(device=device, dtype=dtype).clone())
        else:
            self.register_buffer("A_imag", torch.zeros(d_model, modes, device=device, dtype=real_dtype))
        B = torch.zeros(d_model, modes, 2, **factory)
        B[..., 0] = 1.0
        self.B = nn.Parameter(B)
        C = torch.randn(d_model, modes, 2, **factory)
        if self.conj_pairs:
            C = C * math.sqrt(0.5)
        else:
            C[..., 1] = 0.0
        self.C = nn.Parameter(C)
        for p in (self.log_dt, self.A_log_neg_real, self.B):
            p._no_weight_decay = True
        if self.conj_pairs:
            self.A_imag._no_weight_decay = True

    def _check_A_init(self, A_init: Tensor) -> Tensor:
        check_tensor("A_init", A_init, ndim=(1, 2), complex_ok=True)
        if A_init.shape[-1] == 0:
            raise ShapeError(f"A_init: expected at least one eigenvalue, got shape {tuple(A_init.shape)}")
        if A_init.dim() == 2 and A_init.shape[0] != self.d_model:
            raise ShapeError(f"A_init: expected shape (M,) or ({self.d_model}, M), got {tuple(A_init.shape)}")
        real = A_init.real if A_init.is_complex() else A_init
        if bool((real >= 0).any()):
            raise ConfigError(f"A_init: S4D needs a stable A (every real part < 0), got max real part "
                              f"{float(real.max()):.3g}")
        return A_init.to(torch.complex128)

    @classmethod
    def from_config(cls, config, layer_idx: int, device=None, dtype=None) -> S4D:
        """Build from a MambaConfig: d_model, d_state, dt_min, dt_max; ``mixer_cfg`` adds keyword options."""
        return cls(config.d_model, **{"d_state": config.d_state, "dt_min": config.dt_min,
                                      "dt_max": config.dt_max, **config.mixer_cfg},
                   layer_idx=layer_idx, device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------- the SSM
    def continuous_A(self) -> Tensor:
        """The diagonal A (d_model, M), complex; real parts are −exp(·) so always < 0."""
        real = -torch.exp(self.A_log_neg_real.to(self.compute_dtype()))
        return torch.complex(real, self.A_imag.to(self.compute_dtype()))

    def discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """(A_bar, B_bar, C) of shape (d_model, M) each, with C doubled for conjugate pairs."""
        dt = torch.exp(self.log_dt.to(self.compute_dtype()))
        A_bar, B_bar = discretize_diag(self.continuous_A(), as_complex(self.B.to(self.compute_dtype())), dt,
                                       self.discretization)
        C = as_complex(self.C.to(self.compute_dtype()))
        return A_bar, B_bar, 2 * C if self.conj_pairs else C

    def kernel(self, L: int) -> Tensor:
        """The convolution kernel (d_model, L), real: Re(Σ_n C_n B̄_n Ā_n^l), doubled for conjugate pairs."""
        A_bar, B_bar, C = self.discrete()
        return kernel_vandermonde(A_bar, B_bar, C, L).real

    def _state_shape(self) -> tuple[int, ...]:
        return (self.d_model, self.A_log_neg_real.shape[-1])

    def _sequence(self, u: Tensor, want_state: bool) -> tuple[Tensor, Tensor | None]:
        A_bar, B_bar, C = self.discrete()
        if self.mode == "conv":
            y = diag_ssm_convolution(A_bar, B_bar, C, u)
            return y, diag_ssm_final_state(A_bar, B_bar, u) if want_state else None
        if self.mode == "scan":
            return diag_ssm_scan(A_bar, B_bar, C, u)
        return diag_ssm_recurrent(A_bar, B_bar, C, u)

    def _step(self, u: Tensor, h: Tensor) -> Tensor:
        A_bar, B_bar, C = self.discrete()
        new = A_bar * h + B_bar * u[..., None]
        h.copy_(new)
        return (C * new).sum(-1).real

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, init={self.init}, "
                f"discretization={self.discretization}, mode={self.mode}")
