"""S4D: a diagonal state-space layer (Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of
Diagonal State Space Models", NeurIPS 2022).

Every channel of the (batch, L, d_model) input runs its own SSM with a complex diagonal A:

    y = SSM(u) + D ⊙ u,   out = GLU(W · GELU(y))          (W: d_model -> 2 d_model, GLU halves it back)

The SSM can run three ways that give the same numbers (``mode``): ``"conv"`` (kernel by Vandermonde product,
FFT convolution: the training path), ``"scan"`` (parallel associative scan) and ``"recurrent"`` (one step
at a time); generation always uses :meth:`step`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_int, check_tensor
from ..errors import ConfigError, ShapeError
from ..ssm.discretize import METHODS, discretize_diag
from ..ssm.kernels import kernel_vandermonde
from ..ssm.modes import diag_ssm_convolution, diag_ssm_final_state, diag_ssm_recurrent, diag_ssm_scan
from .ssm_mixer import SSMMixer, as_complex, log_uniform

S4D_INITS = ("lin", "inv", "real")


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
        self.d_state = check_int("d_state", d_state)
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
