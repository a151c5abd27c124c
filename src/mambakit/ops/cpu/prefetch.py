"""Software prefetch for the numba CPU kernels that stream weights (``linear.cpu.linear_rows``).

A decoding step reads each weight row once. With int8 weights a row's 768 bytes take long enough to widen
and multiply that the hardware prefetcher falls behind, and one thread streamed ~6 GB/s where it computes at
~17 GB/s from cache; asking for the bytes a few rows ahead lets the loads overlap the arithmetic. numba has no
prefetch, so the LLVM intrinsic is emitted directly. A prefetch never faults, but callers keep it in bounds.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

CACHE_LINE = 64  # bytes


@intrinsic
def prefetch(typingctx, array, byte_offset):
    """Hint that the cache line ``byte_offset`` bytes past the first element of the contiguous ``array``
    will be read soon (into every cache level). Compiled only."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte_pointer = ir.IntType(8).as_pointer()
        address = builder.gep(builder.bitcast(data, byte_pointer), [args[1]])
        i32 = ir.IntType(32)
        signature_ir = ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32])
        function = cgutils.get_or_insert_function(builder.module, signature_ir, "llvm.prefetch.p0i8")
        # read (0), keep in every level (3), data cache (1)
        builder.call(function, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, types.intp), codegen


def prefetch_distance(weights):
    """How many bytes ahead a loop streaming the rows of ``weights`` prefetches (0: not at all), by dtype.
    Compiled only. Measured on a 2-core Intel Xeon, weights streamed from memory (docs/benchmarks.md,
    "Fourth round"): int8 rows 5.6 -> 11.2 GB/s on one thread at 2 KiB ahead (8.2 at 8 KiB),
    bf16 11.0 -> 11.5; float32 rows slower at every distance, so left to the hardware."""
    return 0


@overload(prefetch_distance, inline="always")
def _prefetch_distance_overload(weights):
    if weights.dtype in (types.int8, types.uint16):
        return lambda weights: 2048
    return lambda weights: 0
