"""Operations: the selective scan and the causal convolution, each with a plain reference beside it."""

from .backends import available_backends
from .conv1d import causal_conv1d_ref, causal_conv1d_update
from .selective_scan import selective_scan, selective_scan_ref, selective_state_update

__all__ = [
    "available_backends",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "selective_scan",
    "selective_scan_ref",
    "selective_state_update",
]
