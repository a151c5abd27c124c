"""Keeping freed memory in the process during CPU training (glibc's malloc).

A training step allocates and frees tensors of a few MB (activations, their gradients, the concatenations of
autograd). glibc serves every allocation above its mmap threshold (128 KiB, raised by degrees as such blocks
are freed) with fresh pages from the kernel and gives them back on free, so each step touches thousands of new
pages; in the virtual machines measured here a page fault costs several microseconds, and a
(batch 8 x 256, d_model 256, 4 layers) step took 3,100-7,400 of them, 14-26 ms of system time per step
(docs/benchmarks.md, "Fifth round"). Fixing the mmap threshold at its maximum and not trimming the heap keeps
freed blocks for the next step: the faults fall to 70-340. The cost is a resident size that stays at
the step's peak, which the next step reaches anyway.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20   # glibc's upper bound on 64-bit (4 MiB * sizeof(long))
TRIM_THRESHOLD = 1 << 30        # free memory at the heap's top kept before it goes back to the kernel
ENV_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def uses_glibc() -> bool:
    """Whether this process runs on Linux with glibc, whose malloc :func:`keep_freed_memory` tunes."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Set glibc's mmap threshold to its maximum and its trim threshold to 1 GiB for the rest of the process
    (see the module docstring). Returns whether it did: not on other C libraries, and not where the user
    chose malloc settings already (any of the ``MALLOC_*_`` environment variables of :data:`ENV_SETTINGS`).
    Blocks above 32 MiB still come from mmap, as before."""
    if not uses_glibc():
        return False
    if any(name in os.environ for name in ENV_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, so a failure leaves trimming as it was
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) != 1:
        return False
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
