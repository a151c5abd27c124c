"""S4: the structured state-space layer with a diagonal-plus-low-rank A (Gu, Goel, Ré, "Efficiently Modeling
Long Sequences with Structured State Spaces", ICLR 2022).

Each channel's A starts as HiPPO-LegS written in its normal-plus-low-rank eigenbasis, A = diag(Λ) − p p*
(:func:`mambakit.ssm.hippo.legs_nplr`), discretised with the bilinear rule. Tying the low-rank factors (q = p)
keeps the Hermitian part of A at most Re Λ < 0, so the layer stays stable while Λ and p are learned.

* ``"conv"`` mode: the kernel from Cauchy sums and the Woodbury identity at the roots of unity and one inverse
  FFT (:func:`mambakit.ssm.kernels.kernel_dplr`), applied by causal FFT convolution.
* ``"recurrent"`` mode and :meth:`S4.step`: the bilinear step h' = (I − ΔA/2)⁻¹((I + ΔA/2)h + ΔB u) with the
  inverse applied in O(N) by the Woodbury identity.

All N eigenvalues are kept (no halving by conjugate symmetry), so the DPLR system equals the dense one exactly
and the output is Re(C h) of a complex state (d_model, N).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_int, check_tensor
from ..errors import ConfigError, ShapeError
from ..ssm.hippo import legs_nplr
from ..ssm.kernels import causal_fft_conv, dplr_dense, kernel_dplr, krylov
from .ssm_mixer import SSMMixer, as_complex, log_uniform


class S4(SSMMixer):
    """DPLR SSM mixer: (batch, L, d_model) -> (batch, L, d_model), the output stage as in :class:`S4D`.

    Args:
        d_model: width H; each channel has its own SSM (all initialised alike, then learned apart).
        d_state: state size N.
        dplr_init: optional (Lambda (N,), P (N,), B (N,)) complex, in place of LegS; every Re Lambda < 0.
        dt_min, dt_max: Δ per channel log-uniform in [dt_min, dt_max] at initialisation (learned as log Δ).
        dropout: after the GELU.
        mode: ``"conv"`` or ``"recurrent"`` for :meth:`forward`.
    """

    modes = ("conv", "recurrent")

    def __init__(self, d_model: int, d_state: int = 64, *,
                 dplr_init: tuple[Tensor, Tensor, Tensor] | None = None, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, dropout: float = 0.0, mode: str = "conv",
                 layer_idx: int | None = None, device=None, dtype=None) -> None:
        super().__init__(d_model, dropout, mode, layer_idx, device, dtype)
        dtype = self.D.dtype  # the default dtype when none is given, so no parameter stays float64
        self.d_state = check_int("d_state", d_state)
        if dplr_init is None:
            Lambda, V, P, B = legs_nplr(d_state)
            # In the eigenbasis: p̃ = V* p and B̃ = V* B (the output C is learned there directly).
            P = V.conj().T @ P.to(V.dtype)
            B = V.conj().T @ B.to(V.dtype)
        else:
            Lambda, P, B = self._check_dplr_init(dplr_init, d_state)
        factory = {"device": device, "dtype": dtype}

        def channels(t: Tensor) -> Tensor:
            pairs = torch.view_as_real(t.to(torch.complex128)).expand(d_model, -1, -1)
            return pairs.to(**factory).clone()

        self.log_dt = nn.Parameter(log_uniform(d_model, dt_min, dt_max, **factory))
        neg_real_log = torch.log(-Lambda.real).expand(d_model, -1)
        self.Lambda_log_neg_real = nn.Parameter(neg_real_log.to(**factory).clone())
        self.Lambda_imag = nn.Parameter(Lambda.imag.expand(d_model, -1).to(**factory).clone())
        self.P = nn.Parameter(channels(P))
        self.B = nn.Parameter(channels(B))
        self.C = nn.Parameter(torch.randn(d_model, d_state, 2, **factory) * math.sqrt(0.5))
        for p in (self.log_dt, self.Lambda_log_neg_real, self.Lambda_imag, self.P, self.B):
            p._no_weight_decay = True

    @staticmethod
    def _check_dplr_init(dplr_init: object, N: int) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(dplr_init, (tuple, list)) or len(dplr_init) != 3:
            raise ConfigError("dplr_init: expected a tuple (Lambda, P, B) of (N,) tensors, got "
                              f"{type(dplr_init).__name__}")
        Lambda, P, B = dplr_init
        for name, t in (("dplr_init Lambda", Lambda), ("dplr_init P", P), ("dplr_init B", B)):
            check_tensor(name, t, ndim=1, complex_ok=True)
            if t.shape[0] != N:
                raise ShapeError(f"{name}: expected shape ({N},) to match d_state, got {tuple(t.shape)}")
        Lambda = Lambda.to(torch.complex128)
        if bool((Lambda.real >= 0).any()):
            raise ConfigError("dplr_init Lambda: S4 needs a stable A (every Re Lambda < 0), got max real "
                              f"part {float(Lambda.real.max()):.3g}")
        return Lambda, P.to(torch.complex128), B.to(torch.complex128)

    @classmethod
    def from_config(cls, config, layer_idx: int, device=None, dtype=None) -> S4:
        """Build from a MambaConfig: d_model, d_state, dt_min, dt_max; ``mixer_cfg`` adds keyword options."""
        return cls(config.d_model, **{"d_state": config.d_state, "dt_min": config.dt_min,
                                      "dt_max": config.dt_max, **config.mixer_cfg},
                   layer_idx=layer_idx, device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------- the SSM
    def dplr(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(Lambda, P, B, C (d_model, N) complex, dt (d_model,)): the continuous system A = diag(Λ) − p p*."""
        real = self.compute_dtype()
        Lambda = torch.complex(-torch.exp(self.Lambda_log_neg_real.to(real)), self.Lambda_imag.to(real))
        P, B, C = (as_complex(t.to(real)) for t in (self.P, self.B, self.C))
        return Lambda, P, B, C, torch.exp(self.log_dt.to(real))

    def kernel(self, L: int) -> Tensor:
        """The convolution kernel (d_model, L), real (the real part of the complex system's kernel)."""
        Lambda, P, B, C, dt = self.dplr()
        return kernel_dplr(Lambda, P, P, B, C, dt, L).real

    def dense_discrete(self) -> tuple[Tensor, Tensor, Tensor]:
        """(A_bar (d_model, N, N), B_bar (d_model, N), C (d_model, N)): the bilinear system, written out."""
        Lambda, P, B, C, dt = self.dplr()
        A = dplr_dense(Lambda, P.unsqueeze(-2), P.unsqueeze(-2))
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        left = eye - (dt[:, None, None] / 2) * A
        A_bar = torch.linalg.solve(left, eye + (dt[:, None, None] / 2) * A)
        B_bar = torch.linalg.solve(left, (dt[:, None] * B).unsqueeze(-1)).squeeze(-1)
        return A_bar, B_bar, C

    def _state_shape(self) -> tuple[int, ...]:
        return (self.d_model, self.d_state)

    def _bilinear_step(self, h: Tensor, u: Tensor, parts: tuple[Tensor, ...]) -> Tensor:
        """h (batch, H, N) complex, u (batch, H) -> next state, in O(N) per channel."""
        Lambda, P, B, _, dt = parts
        half = (dt / 2)[:, None]
        Ah = Lambda * h - P * (P.conj() * h).sum(-1, keepdim=True)            # A h with A = Λ − p p*
        rhs = h + half * Ah + (dt[:, None] * B) * u[..., None]
        # (I − ΔA/2) = diag(1 − ΔΛ/2) + (Δ/2) p p*: Woodbury with one scalar denominator per channel.
        diag = 1 - half * Lambda
        w, v = rhs / diag, P / diag
        numerator = half * (P.conj() * w).sum(-1, keepdim=True)
        correction = numerator / (1 + half * (P.conj() * v).sum(-1, keepdim=True))
        return w - v * correction

    def _sequence(self, u: Tensor, want_state: bool) -> tuple[Tensor, Tensor | None]:
        parts = self.dplr()
        L = u.shape[-1]
        if self.mode == "recurrent":
            h = torch.zeros(u.shape[0], *self._state_shape(), dtype=self.complex_dtype(), device=u.device)
            outputs = []
            for t in range(L):
                h = self._bilinear_step(h, u[:, :, t], parts)
                outputs.append((parts[3] * h).sum(-1).real)
            return torch.stack(outputs, dim=-1), h
        Lambda, P, B, C, dt = parts
        y = causal_fft_conv(u, kernel_dplr(Lambda, P, P, B, C, dt, L).real)
        if not want_state:
            return y, None
        # The state after the prompt, Σ_t Ā^{L-1-t} B̄ u_t, from the Krylov vectors Ā^l B̄ (built by doubling).
        A_bar, B_bar, _ = self.dense_discrete()
        vectors = krylov(A_bar, B_bar, L)                                      # (H, N, L)
        return y, torch.einsum("hnl,bhl->bhn", vectors, u.flip(-1).to(vectors.dtype))

    def _step(self, u: Tensor, h: Tensor) -> Tensor:
        parts = self.dplr()
        new = self._bilinear_step(h.to(self.complex_dtype()), u, parts)
        h.copy_(new)
        return (parts[3] * new).sum(-1).real

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_state={self.d_state}, mode={self.mode}"
