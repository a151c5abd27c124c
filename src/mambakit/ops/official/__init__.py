"""The operations of ``mamba_ssm`` under their official names, arguments, layouts and results, so that code
written against them runs on mambakit (on a CPU, without CUDA) by changing the import.

Each official module has its mirror here (``mamba_ssm.ops.X`` -> ``mambakit.ops.official.Y``):

=================================  ============================  ==========================================
official ``mamba_ssm.ops.`` ...    ``mambakit.ops.official.`` ...  names
=================================  ============================  ==========================================
``selective_scan_interface``       ``selective_scan_interface``  ``selective_scan_fn``, ``mamba_inner_fn``,
                                                                 ``selective_scan_ref``, ``mamba_inner_ref``
``triton.selective_state_update``  ``selective_state_update``    ``selective_state_update``,
                                                                 ``selective_state_update_ref``
``triton.ssd_combined``            ``ssd_combined``              ``mamba_chunk_scan_combined``,
                                                                 ``mamba_split_conv1d_scan_combined``,
                                                                 ``mamba_split_conv1d_scan_ref``
=================================  ============================  ==========================================

For example ``from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined`` becomes
``from mambakit.ops.official.ssd_combined import mamba_chunk_scan_combined``. Every name is also importable
from ``mambakit.ops.official`` and from ``mambakit.ops``. The fused forms keep only their inputs for
backward and recompute on the fused CPU kernels (:mod:`.recompute`). Where an official operation is
undefined or silently wrong (each docstring says where) these raise a mambakit error or do the evident
right thing; where they take more (complex A in more places, gradients through every returned state) it is
a superset.
"""

from .selective_scan_interface import mamba_inner_fn, mamba_inner_ref, selective_scan_fn, selective_scan_ref
from .selective_state_update import selective_state_update, selective_state_update_ref
from .ssd_combined import (
           mamba_chunk_scan_combined,
           mamba_split_conv1d_scan_combined,
           mamba_split_conv1d_scan_ref,
)

__all__ = ["mamba_chunk_scan_combined", "mamba_inner_fn", "mamba_inner_ref",
           "mamba_split_conv1d_scan_combined", "mamba_split_conv1d_scan_ref", "selective_scan_fn",
           "selective_scan_ref", "selective_state_update", "selective_state_update_ref"]
