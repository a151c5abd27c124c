"""The operations of ``mamba_ssm`` under their official names, arguments, layouts and results, so that code
written against them runs on mambakit (on a CPU, without CUDA) by changing the import.

Each official module has its mirror here (``mamba_ssm.ops.X`` -> ``mambakit.ops.official.Y``):

==================================  ==============================  ========================================
official module (``mamba_ssm.ops.``)  mambakit (``...ops.official.``)  names
==================================  ==============================  ========================================
``selective_scan_interface``        ``selective_scan_interface``    ``selective_scan_fn``, ``mamba_inner_fn``,
                                                                    ``selective_scan_ref``,
                                                                    ``mamba_inner_ref``
==================================  ==============================  ========================================

For example ``from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn`` becomes
``from mambakit.ops.official.selective_scan_interface import mamba_inner_fn``. Every name is also importable
from ``mambakit.ops.official`` and from ``mambakit.ops``. Where an official operation is undefined or
silently wrong (noted in each docstring) these raise a mambakit error or do the evident right thing; where
they take more (complex A in more places, gradients through returned states) it is a superset.
"""

from .selective_scan_interface import mamba_inner_fn, mamba_inner_ref, selective_scan_fn, selective_scan_ref

__all__ = ["mamba_inner_fn", "mamba_inner_ref", "selective_scan_fn", "selective_scan_ref"]
