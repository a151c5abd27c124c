"""Operations: the selective scan (Mamba), the SSD scan (Mamba-2), Mamba-3's scan and the causal
convolution, one package each with its plain reference (``ref``) beside its faster forms; ``cpu`` holds
what their numba kernels share. Each operation picks its implementation with one ``backend=`` keyword
("auto" or a name). ``official`` has the operations of ``mamba_ssm`` under their official names and module
paths; ``packing`` turns the ways of marking packed sequences into ``seq_idx``."""

from .conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_update, causal_conv1d_with_state
from .mamba3 import mamba3, mamba3_chunked, mamba3_ref, mamba3_step
from .official import (
    mamba_chunk_scan_combined,
    mamba_inner_fn,
    mamba_inner_ref,
    mamba_split_conv1d_scan_combined,
    mamba_split_conv1d_scan_ref,
    selective_scan_fn,
    selective_state_update_ref,
)
from .packing import seq_idx_from_attention_mask, seq_idx_from_cu_seqlens, seq_idx_from_position_ids
from .selective_scan import available_backends, selective_scan, selective_scan_ref, selective_state_update
from .ssd import ssd, ssd_chunked, ssd_minimal, ssd_quadratic, ssd_ref, ssd_state_update, ssd_state_update_ref

__all__ = [
    "available_backends",
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "causal_conv1d_with_state",
    "mamba3",
    "mamba3_chunked",
    "mamba3_ref",
    "mamba3_step",
    "mamba_chunk_scan_combined",
    "mamba_inner_fn",
    "mamba_inner_ref",
    "mamba_split_conv1d_scan_combined",
    "mamba_split_conv1d_scan_ref",
    "selective_scan",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
    "seq_idx_from_attention_mask",
    "seq_idx_from_cu_seqlens",
    "seq_idx_from_position_ids",
    "ssd",
    "ssd_chunked",
    "ssd_minimal",
    "ssd_quadratic",
    "ssd_ref",
    "ssd_state_update",
    "ssd_state_update_ref",
]
