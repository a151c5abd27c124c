"""Operations: the selective scan (Mamba), the SSD scan (Mamba-2) and the causal convolution, one package
each with its plain reference (``ref``) beside its faster forms; ``cpu`` holds what their numba kernels
share. Each operation picks its implementation with one ``backend=`` keyword ("auto" or a name)."""

from .conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_update, causal_conv1d_with_state
from .packing import seq_idx_from_attention_mask, seq_idx_from_cu_seqlens, seq_idx_from_position_ids
from .selective_scan import available_backends, selective_scan, selective_scan_ref, selective_state_update
from .ssd import (
    mamba_chunk_scan_combined,
    ssd,
    ssd_chunked,
    ssd_minimal,
    ssd_quadratic,
    ssd_ref,
    ssd_state_update,
)

__all__ = [
    "available_backends",
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "causal_conv1d_with_state",
    "mamba_chunk_scan_combined",
    "selective_scan",
    "selective_scan_ref",
    "selective_state_update",
    "seq_idx_from_attention_mask",
    "seq_idx_from_cu_seqlens",
    "seq_idx_from_position_ids",
    "ssd",
    "ssd_chunked",
    "ssd_minimal",
    "ssd_quadratic",
    "ssd_ref",
    "ssd_state_update",
]
