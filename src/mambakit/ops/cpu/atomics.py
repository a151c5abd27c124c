"""Atomic counters for the numba kernels that several threads run together (``decode.stack_cpu``).

numba has no atomics on the CPU, so two LLVM instructions are emitted directly: a sequentially consistent
fetch-and-add and an atomic load. With them threads claim work items from one counter and wait, spinning,
until the items an item depends on are done; the spin loop cannot be hoisted because the load is atomic.
"""

from __future__ import annotations

from numba import njit, types
from numba.extending import intrinsic


def _counter_pointer(context, builder, array_type, array_value, index):
    array = context.make_array(array_type)(context, builder, array_value)
    return builder.gep(array.data, [index])


@intrinsic
def atomic_fetch_add(typingctx, counters, index, value):
    """``counters[index] += value`` atomically on a C-contiguous int64 array; returns the old value."""
    if not (isinstance(counters, types.Array) and counters.dtype == types.int64 and counters.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        ptr = _counter_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

    return types.int64(counters, types.intp, types.int64), codegen


@intrinsic
def atomic_load(typingctx, counters, index):
    """``counters[index]`` read atomically (never cached in a register across loop iterations)."""
    if not (isinstance(counters, types.Array) and counters.dtype == types.int64 and counters.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        ptr = _counter_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "seq_cst", 8)

    return types.int64(counters, types.intp), codegen


@njit(nogil=True, cache=True)
def wait_until_at_least(counters, index, target):
    """Spin until ``counters[index] >= target``."""
    while atomic_load(counters, index) < target:
        pass
