"""LRU: the linear recurrent unit (Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De, "Resurrecting
Recurrent Neural Networks for Long Sequences", ICML 2023).

A complex diagonal recurrence over a state of size N, fed by a dense input map and read by a dense output map:

    h_t = λ ⊙ h_{t-1} + γ ⊙ (B u_t),    y_t = Re(C h_t) + D ⊙ u_t,    out = GLU(W · GELU(y))

with λ = exp(−exp(ν) + i·exp(θ)) (stable for any real ν, θ) and γ = sqrt(1 − |λ|²), which makes every
mode's impulse response have unit energy, so the state's scale does not blow up as |λ| → 1.
Initialisation samples λ uniformly on the ring r_min <= |λ| <= r_max (uniform in area) with phase in
[0, max_phase].

``mode``: ``"scan"`` (parallel associative scan: the training path), ``"conv"`` (the LRU is time-invariant,
so the per-mode kernel λ^l with an FFT convolution works too) or ``"recurrent"``; generation uses
:meth:`step`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..errors import ConfigError
from ..ssm.kernels import causal_fft_conv, diag_powers
from ..ssm.scan import associative_scan, sequential_scan
from .ssm_mixer import SSMMixer, as_complex


def ring_init(N: int, r_min: float, r_max: float, max_phase: float, device=None,
              dtype=None) -> tuple[Tensor, Tensor, Tensor]:
    """(nu_log, theta_log, gamma_log), each (N,): λ uniform on the ring, γ = sqrt(1 − |λ|²)."""
    u1 = torch.rand(N, device=device, dtype=torch.float64)
    u2 = torch.rand(N, device=device, dtype=torch.float64)
    # |λ|² uniform in [r_min², r_max²] is uniform in the ring's area; |λ| = exp(−exp(ν)).
    radius_sq = u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2
    nu_log = torch.log(-0.5 * torch.log(radius_sq))
    theta_log = torch.log(max_phase * u2)
    gamma_log = 0.5 * torch.log1p(-radius_sq)
    return tuple(t.to(dtype) for t in (nu_log, theta_log, gamma_log))


class LRU(SSMMixer):
    """Linear recurrent unit mixer: (batch, L, d_model) -> (batch, L, d_model).

    Args:
        d_model: width H.
        d_state: number N of complex modes.
        r_min, r_max: ring of |λ| at initialisation, 0 <= r_min < r_max < 1.
        max_phase: phases of λ are uniform in [0, max_phase] at initialisation (0 < max_phase <= 2π).
        dropout: after the GELU.
        mode: ``"scan"``, ``"conv"`` or ``"recurrent"`` for :meth:`forward`.
    """

    modes = ("scan", "conv", "recurrent")

    def __init__(self, d_model: int, d_state: int = 256, *, r_min: float = 0.9, r_max: float = 0.999,
                 max_phase: float = math.pi, dropout: float = 0.0, mode: str = "scan",
                 layer_idx: int | None = None, device=None, dtype=None) -> None:
        super().__init__(d_model, dropout, mode, layer_idx, device, dtype)
        dtype = self.D.dtype  # the default dtype when none is given, so no parameter stays float64
        self.d_state = check_int("d_state", d_state)
        if not 0.0 <= r_min < r_max:
            raise ConfigError(f"r_min, r_max: expected 0 <= r_min < r_max, got {r_min!r}, {r_max!r}")
        if not r_max < 1.0:
            raise ConfigError(f"r_max: the LRU needs a stable recurrence (|λ| < 1), so expected r_max < 1, "
                              f"got {r_max!r}")
        if not 0.0 < max_phase <= 2 * math.pi:
            raise ConfigError(f"max_phase: expected a value in (0, 2π], got {max_phase!r}")
        factory = {"device": device, "dtype": dtype}
        nu_log, theta_log, gamma_log = ring_init(d_state, r_min, r_max, max_phase, device=device, dtype=dtype)
        self.nu_log = nn.Parameter(nu_log)
        self.theta_log = nn.Parameter(theta_log)
        self.gamma_log = nn.Parameter(gamma_log)
        # Complex B (N, H) and C (H, N) as real pairs, scaled so that B u and Re(C h) keep unit variance.
        self.B = nn.Parameter(torch.randn(d_state, d_model, 2, **factory) / math.sqrt(2 * d_model))
        self.C = nn.Parameter(torch.randn(d_model, d_state, 2, **factory) / math.sqrt(d_state))
        for p in (self.nu_log, self.theta_log, self.gamma_log):
            p._no_weight_decay = True

    @classmethod
    def from_config(cls, config, layer_idx: int, device=None, dtype=None) -> LRU:
        """Build from a MambaConfig: d_model, d_state; ``mixer_cfg`` adds keyword options (r_min, r_max,
        max_phase, ...)."""
        return cls(config.d_model, **{"d_state": config.d_state, **config.mixer_cfg},
                   layer_idx=layer_idx, device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------- the SSM
    def eigenvalues(self) -> Tensor:
        """λ (N,) complex, |λ| = exp(−exp(ν)) < 1."""
        real = self.compute_dtype()
        return torch.exp(torch.complex(-torch.exp(self.nu_log.to(real)), torch.exp(self.theta_log.to(real))))

    def gamma(self) -> Tensor:
        """The input normalisation γ (N,), learned from its initial value sqrt(1 − |λ|²)."""
        return torch.exp(self.gamma_log.to(self.compute_dtype()))

    def _inputs(self, u: Tensor) -> Tensor:
        """γ ⊙ (B u) for u (batch, H, ...) -> (batch, N, ...) complex."""
        B = as_complex(self.B.to(self.compute_dtype()))
        Bu = torch.einsum("nh,bh...->bn...", B, u.to(B.dtype))
        return self.gamma().view(-1, *([1] * (u.dim() - 2))) * Bu

    def _read_out(self, h: Tensor) -> Tensor:
        """Re(C h) for h (batch, N, ...) -> (batch, H, ...)."""
        C = as_complex(self.C.to(self.compute_dtype()))
        return torch.einsum("hn,bn...->bh...", C, h).real

    def _state_shape(self) -> tuple[int, ...]:
        return (self.d_state,)

    def _sequence(self, u: Tensor, want_state: bool) -> tuple[Tensor, Tensor | None]:
        lam = self.eigenvalues()
        inputs = self._inputs(u)                                           # (batch, N, L)
        if self.mode == "conv":
            kernel = diag_powers(lam, 0, u.shape[-1])                      # (N, L): λ^l per mode
            states = causal_fft_conv(inputs, kernel)
        elif self.mode == "scan":
            states = associative_scan(lam[:, None], inputs)
        else:
            states = sequential_scan(lam[:, None], inputs)
        return self._read_out(states), states[..., -1]

    def _step(self, u: Tensor, h: Tensor) -> Tensor:
        new = self.eigenvalues() * h.to(self.complex_dtype()) + self._inputs(u)
        h.copy_(new)
        return self._read_out(new)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, mode={self.mode}"
