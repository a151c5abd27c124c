"""``njit_noalias``: a numba kernel whose array arguments LLVM may take as never overlapping.

numba tells LLVM nothing about which arrays may share memory, neither for array arguments nor for arrays
a kernel allocates (their data pointers are loaded from memory). So in a loop that adds into one tile while
it writes another, LLVM must assume each store may change what the next load reads: accumulators go to
memory and come back on every iteration instead of staying in registers. numba has the remedy, its
``noalias`` compiler flag (LLVM's ``noalias`` on every pointer argument, which numba's parallel backend
sets for its own kernels), but ``@njit`` does not take it; ``njit_noalias`` sets it for one kernel.

The contract the caller keeps: no array that the kernel writes shares memory with any other array argument
(arrays it only reads may overlap each other). Scratch tiles therefore come in as arguments, allocated by a
plain ``@njit`` wrapper. Where this numba has no such flag or hook, the kernel compiles as a plain ``@njit``
one: the same results, only without the speed (:data:`NOALIAS_AVAILABLE` says which).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import njit
from numba.core import compiler

# numba's own flag, set by the hook every dispatcher's compiler calls before compiling (numba >= 0.49).
NOALIAS_AVAILABLE = "noalias" in getattr(compiler.Flags, "options", {})


def _with_noalias(flags):
    flags.noalias = True
    return flags


def njit_noalias(**options: Any) -> Callable:
    """``numba.njit(**options)`` for a kernel whose written arrays overlap no other argument (module
    docstring); its pointer arguments are compiled ``noalias``."""
    def decorate(function: Callable):
        dispatcher = njit(**options)(function)
        hooked = getattr(dispatcher, "_compiler", None)
        if NOALIAS_AVAILABLE and hasattr(hooked, "_customize_flags"):
            hooked._customize_flags = _with_noalias
        return dispatcher
    return decorate
