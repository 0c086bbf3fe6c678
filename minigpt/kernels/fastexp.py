"""A vectorisable exp() for numba loops.

Why: inside @njit, np.exp / math.exp on this machine is a call into libm
per element (numba uses Intel SVML only when icc_rt is installed), so a loop
of exps cannot be vectorised and costs ~20 cycles an element, more than the
dot products around it in attention. This version is plain arithmetic that
LLVM turns into AVX-512 code.

Math:     exp(x) = 2^n * exp(r),  n = round(x / ln 2),  r = x - n ln 2,  |r| <= ln(2)/2
exp(r) is a Taylor polynomial (degree 7 for float32, 12 for float64: the
first dropped term, 0.35^(d+1)/(d+1)!, is below the dtype's epsilon), and
2^n is built directly in the exponent bits of the float (a bit cast, which
numba cannot spell, so a two-line LLVM intrinsic does it).
ln 2 is split into a high part with few mantissa bits (n * LN2_HI is exact)
and a low correction (Cody and Waite), so r keeps full precision.
Inputs below the smallest normal result give 0; NaN and +inf are not handled
(the callers only pass max-subtracted scores, which are <= 0 and finite).
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

LN2_HI = 0.693145751953125  # ln 2 rounded to 16 significant bits: n * LN2_HI is exact
LN2_LO = 1.42860682030941723212e-6  # ln 2 - LN2_HI
LOG2E = 1.0 / math.log(2.0)


@intrinsic
def _i32_as_f32(typingctx, x):
    """Reinterpret the bits of an int32 as a float32."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _i64_as_f64(typingctx, x):
    """Reinterpret the bits of an int64 as a float64."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


def fexp(x):
    """exp(x) for a float32 or float64 scalar (numba only; see module docstring)."""
    return np.exp(x)


@overload(fexp)
def _fexp_overload(x):
    if x == types.float32:
        def exp32(x):
            x = max(x, np.float32(-87.33))  # exp(-87.34) is the smallest normal float32
            n = np.float32(np.floor(x * np.float32(LOG2E) + np.float32(0.5)))
            r = (x - n * np.float32(LN2_HI)) - n * np.float32(LN2_LO)
            p = np.float32(1.0 / 5040.0)
            p = p * r + np.float32(1.0 / 720.0)
            p = p * r + np.float32(1.0 / 120.0)
            p = p * r + np.float32(1.0 / 24.0)
            p = p * r + np.float32(1.0 / 6.0)
            p = p * r + np.float32(0.5)
            p = p * r + np.float32(1.0)
            p = p * r + np.float32(1.0)
            two_n = _i32_as_f32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
            return p * two_n if x > np.float32(-87.33) else np.float32(0.0)
        return exp32
    if x == types.float64:
        def exp64(x):
            x = max(x, -708.0)
            n = np.floor(x * LOG2E + 0.5)
            r = (x - n * LN2_HI) - n * LN2_LO
            p = 1.0 / 479001600.0
            p = p * r + 1.0 / 39916800.0
            p = p * r + 1.0 / 3628800.0
            p = p * r + 1.0 / 362880.0
            p = p * r + 1.0 / 40320.0
            p = p * r + 1.0 / 5040.0
            p = p * r + 1.0 / 720.0
            p = p * r + 1.0 / 120.0
            p = p * r + 1.0 / 24.0
            p = p * r + 1.0 / 6.0
            p = p * r + 0.5
            p = p * r + 1.0
            p = p * r + 1.0
            two_n = _i64_as_f64((np.int64(n) + np.int64(1023)) << np.int64(52))
            return p * two_n if x > -708.0 else 0.0
        return exp64
    return None


@njit(cache=True)
def fexp_array(x):
    """Elementwise fexp over a 1-D array (used by the tests to check accuracy)."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = fexp(x[i])
    return out
