"""Operations: the selective scan (Mamba), the SSD scan (Mamba-2) and the causal convolution, each with a
plain reference beside its faster forms."""

from .backends import available_backends
from .conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_update
from .selective_scan import selective_scan, selective_scan_ref, selective_state_update
from .ssd import mamba_chunk_scan_combined, ssd, ssd_chunked, ssd_quadratic, ssd_ref, ssd_state_update

__all__ = [
    "available_backends",
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "mamba_chunk_scan_combined",
    "selective_scan",
    "selective_scan_ref",
    "selective_state_update",
    "ssd",
    "ssd_chunked",
    "ssd_quadratic",
    "ssd_ref",
    "ssd_state_update",
]
