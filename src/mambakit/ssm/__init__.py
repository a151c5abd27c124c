"""The mathematics of linear state-space models: pure functions on tensors, no nn.Module.

discretize  continuous (A, B) -> discrete (Ā, B̄): Euler, bilinear, zero-order hold; dense or diagonal A
hippo       the HiPPO matrices (LegS, LegT, LagT, FouT), their bases, online reconstruction, LegS in NPLR form
kernels     convolution kernels (powers, Vandermonde, Cauchy + Woodbury) and the causal FFT convolution
scan        the associative parallel scan of h_t = a_t ⊙ h_{t-1} + b_t and its sequential reference
modes       a diagonal LTI SSM run by recurrence, convolution and scan
"""

from .discretize import discretize_dense, discretize_diag
from .hippo import hippo_basis, hippo_matrices, hippo_online, legs_nplr
from .kernels import causal_fft_conv, kernel_dplr, kernel_powers, kernel_vandermonde
from .modes import diag_ssm_convolution, diag_ssm_recurrent, diag_ssm_scan
from .scan import associative_scan, sequential_scan

__all__ = [
    "associative_scan",
    "causal_fft_conv",
    "diag_ssm_convolution",
    "diag_ssm_recurrent",
    "diag_ssm_scan",
    "discretize_dense",
    "discretize_diag",
    "hippo_basis",
    "hippo_matrices",
    "hippo_online",
    "kernel_dplr",
    "kernel_powers",
    "kernel_vandermonde",
    "legs_nplr",
    "sequential_scan",
]
