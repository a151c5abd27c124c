"""Scalar float math for the numba CPU kernels (``selective_scan.cpu``, ``selective_scan.cpu_lanes``,
``conv1d.cpu``).

numba's ``np.exp`` / ``math.exp`` is a scalar libm call that LLVM cannot vectorise, and the kernels are bound
by their exponentials. So float32 gets its own branch-free exp (Cody-Waite range reduction and a degree-7
polynomial, relative error below 6e-7, exactly 0 / inf / NaN where exp underflows, overflows or gets NaN) and
log1p on [0, 1] (series of atanh), from which softplus (torch's threshold of 20) and sigmoid are built; the
float64 versions keep libm. ``scalar_exp``, ``scalar_softplus``, ``scalar_sigmoid`` and
``softplus_with_grad`` dispatch on the scalar type when compiled, so one kernel source serves both dtypes.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # no 'nnan'/'ninf': infinities and NaN must survive

# float32 exp constants (Cody-Waite split of ln 2 and a minimax polynomial for exp on [-ln2/2, ln2/2]).
_F32 = np.float32
_EXP_HI = _F32(88.72283)     # above: exp overflows float32
_EXP_LO = _F32(-87.33654)    # below: exp is under the smallest normal float32; we return 0
LOG2E = _F32(1.4426950408889634)
_LN2_HI = _F32(0.693359375)
_LN2_LO = _F32(-2.12194440e-4)
_P0, _P1, _P2 = _F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3)
_P3, _P4, _P5 = _F32(4.1665795894e-2), _F32(1.6666665459e-1), _F32(5.0000001201e-1)
_HALF, _ONE, _ZERO, _INF = _F32(0.5), _F32(1.0), _F32(0.0), _F32(np.inf)
_MAX_EXP2 = _F32(127.0)


@intrinsic
def int32_bits_as_float32(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32 (a no-op cast LLVM can vectorise)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def zero_of(v):
    """0 in v's float type (float32 stays float32: ``v * 0`` would be float64 in numba). Compiled only."""
    return 0.0


@overload(zero_of, inline="always")
def _zero_of_overload(v):
    if v == types.float32:
        return lambda v: _ZERO
    return lambda v: 0.0


def widen_weight(v):
    """A stored weight as a number to multiply by: bf16 bits (uint16) widened to float32, int8 converted to
    float32 (its row's scale is applied to the sum), float32 and float64 as they are. Compiled only."""
    return v


@overload(widen_weight, inline="always")
def _widen_weight_overload(v):
    if v == types.uint16:
        return lambda v: int32_bits_as_float32(np.int32(np.uint32(v) << np.uint32(16)))
    if v == types.int8:
        return lambda v: np.float32(v)
    return lambda v: v


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _exp_float32(v):
    """exp(v) for float32 v, branch-free so the loops that call it vectorise."""
    x = min(max(v, _EXP_LO), _EXP_HI)
    k = min(np.floor(x * LOG2E + _HALF), _MAX_EXP2)
    r = x - k * _LN2_HI - k * _LN2_LO
    p = _P0
    p = p * r + _P1
    p = p * r + _P2
    p = p * r + _P3
    p = p * r + _P4
    p = p * r + _P5
    p = p * r * r + r + _ONE
    two_to_k = int32_bits_as_float32(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))
    result = p * two_to_k
    result = _ZERO if v < _EXP_LO else result
    result = _INF if v > _EXP_HI else result
    return v if v != v else result  # NaN in, NaN out


def scalar_exp(v):
    """exp, dispatched on the scalar type when compiled (float32: ours; float64: libm)."""
    return math.exp(v)


@overload(scalar_exp, inline="always")
def _exp_overload(v):
    if v == types.float32:
        return lambda v: _exp_float32(v)
    return lambda v: math.exp(v)


def elementwise_float32(scalar, name: str):
    """``name(x, out=None)``: the compiled float32 scalar function ``scalar`` over a 1-D float32 array, one
    thread, so tests and benchmarks run exactly the arithmetic the kernels inline."""

    @njit(nogil=True, fastmath=FASTMATH, error_model="numpy")
    def kernel(x, out):
        for i in range(x.shape[0]):
            out[i] = scalar(x[i])

    def apply(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty_like(x) if out is None else out
        kernel(x, out)
        return out

    apply.__name__ = apply.__qualname__ = name
    op = name.removesuffix("_float32")
    apply.__doc__ = f"The kernels' float32 {op} over a 1-D float32 array, one thread."
    return apply


exp_float32 = elementwise_float32(_exp_float32, "exp_float32")


# float32 log1p on [0, 1]: log(1 + y) = 2·atanh(s), s = y / (2 + y) in [0, 1/3], by the series
# 2·(s + s^3/3 + ... + s^13/13); the first term left out is below 1.5e-8 relative.
_ATANH_COEFFS = tuple(_F32(1.0 / k) for k in (13, 11, 9, 7, 5, 3))
_C13, _C11, _C9, _C7, _C5, _C3 = _ATANH_COEFFS
_TWO = _F32(2.0)
_SOFTPLUS_THRESHOLD = 20.0   # softplus(x) = x above it, as torch's default threshold


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _log1p_unit_float32(y):
    """log(1 + y) for float32 y in [0, 1], accurate for tiny y, branch-free."""
    s = y / (_TWO + y)
    s2 = s * s
    p = _C13
    p = p * s2 + _C11
    p = p * s2 + _C9
    p = p * s2 + _C7
    p = p * s2 + _C5
    p = p * s2 + _C3
    return _TWO * s * (p * s2 + _ONE)


def scalar_softplus(x):
    """softplus with torch's threshold (x above 20), dispatched on the scalar type when compiled.

    float32: max(x, 0) + log1p(exp(-|x|)), which never overflows; above 20 the log1p term is under half an
    ulp of x, so it already returns x there without a threshold (and inf for inf, NaN for NaN).
    """
    return x if x > _SOFTPLUS_THRESHOLD else max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@overload(scalar_softplus)
def _softplus_overload(x):
    if x == types.float32:
        return lambda x: max(x, _ZERO) + _log1p_unit_float32(_exp_float32(-abs(x)))
    return lambda x: x if x > _SOFTPLUS_THRESHOLD else max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def scalar_sigmoid(x):
    """1 / (1 + exp(-x)), dispatched on the scalar type when compiled; 0 or 1 where exp overflows."""
    return 1.0 / (1.0 + math.exp(-x))


@overload(scalar_sigmoid)
def _sigmoid_overload(x):
    if x == types.float32:
        return lambda x: _ONE / (_ONE + _exp_float32(-x))
    return lambda x: 1.0 / (1.0 + math.exp(-x))


def softplus_with_grad(x):
    """(softplus(x), its derivative sigmoid(x)), as :func:`scalar_softplus` and :func:`scalar_sigmoid` give
    them, dispatched on the scalar type when compiled. float32 shares one exp between the two: with
    e = exp(-|x|), sigmoid(x) = 1 / (1 + e) for x >= 0 and e / (1 + e) below."""
    if x > _SOFTPLUS_THRESHOLD:
        return x, 1.0
    return max(x, 0.0) + math.log1p(math.exp(-abs(x))), 1.0 / (1.0 + math.exp(-x))


@njit(fastmath=FASTMATH, inline="always", cache=True)
def _softplus_with_grad_float32(x):
    e = _exp_float32(-abs(x))   # in [0, 1]: never overflows
    r = _ONE / (_ONE + e)
    return max(x, _ZERO) + _log1p_unit_float32(e), (r if x >= _ZERO else e * r)


@overload(softplus_with_grad)
def _softplus_with_grad_overload(x):
    if x == types.float32:
        return lambda x: _softplus_with_grad_float32(x)
    return lambda x: ((x, 1.0) if x > _SOFTPLUS_THRESHOLD
                      else (max(x, 0.0) + math.log1p(math.exp(-abs(x))), 1.0 / (1.0 + math.exp(-x))))


softplus_float32 = elementwise_float32(scalar_softplus, "softplus_float32")
