"""Fused GELU (tanh approximation) in numba; minigpt.layers.gelu defines it.

    gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
    d gelu / dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),  t = tanh(u)

Why: the profile of a `base` training step put the NumPy GELU forward at
more than half the step: it makes five full-size temporaries, and x**3 on a
float array is a libm pow() call per element. Here one pass computes it
with a vectorisable tanh:
    tanh(u) = sign(u) (1 - e) / (1 + e),  e = exp(-2|u|) in (0, 1]
(the exponent is never positive, so exp cannot overflow).
The cache is x alone; the backward recomputes t (cheaper than storing a
second array the size of the MLP's hidden layer and reading it back).
"""
import math

import numpy as np
from numba import njit, prange

from .fastexp import fexp
from .threads import SMALL_WORK, serial_twin, threads_for

# The reference's constants (minigpt.layers.gelu), repeated here because the
# kernels import nothing above them; tests/test_kernels_ops.py checks they agree.
GELU_K = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, inline="always", fastmath=FASTMATH)
def _tanh(u, one, two):
    e = fexp(-two * abs(u))
    t = (one - e) / (one + e)
    return t if u >= 0 else -t


# Python float literals are float64 in numba and would drag float32 math up
# to float64 (half the SIMD width and the slower exp), so every constant
# arrives as an array of the input's dtype.
def _constants(dtype):
    return np.array([GELU_K, GELU_A, 0.5, 1.0, 2.0, 3.0], dtype=dtype)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _gelu_forward_kernel(x, out, c):
    k, a, half, one, two = c[0], c[1], c[2], c[3], c[4]
    n_rows, n = x.shape
    for r in prange(n_rows):
        xr, orow = x[r], out[r]
        for i in range(n):
            xi = xr[i]
            t = _tanh(k * (xi + a * xi * xi * xi), one, two)
            orow[i] = half * xi * (one + t)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _gelu_backward_kernel(dout, x, dx, c):
    k, a, half, one, two, three = c[0], c[1], c[2], c[3], c[4], c[5]
    n_rows, n = x.shape
    for r in prange(n_rows):
        xr, gr, dr = x[r], dout[r], dx[r]
        for i in range(n):
            xi = xr[i]
            t = _tanh(k * (xi + a * xi * xi * xi), one, two)  # the forward's t, recomputed
            du = k * (one + three * a * xi * xi)  # du/dx
            # out = 0.5 x (1 + t): product rule, and dt/du = 1 - t^2
            dr[i] = gr[i] * (half * (one + t) + half * xi * (one - t * t) * du)


def _rows(a):
    """View as (rows, last axis), contiguous: the kernels work row by row."""
    a = np.ascontiguousarray(a)
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


# as in layernorm.py: small calls skip the parallel launch and threads_for's switch
_gelu_forward_kernel_serial = serial_twin(_gelu_forward_kernel, "_gelu_forward_kernel_serial", FASTMATH)


def gelu_forward(x):
    """Same contract as minigpt.layers.gelu.gelu_forward; cache = x."""
    x2 = _rows(x)
    out = np.empty_like(x2)
    if 16 * x2.size < SMALL_WORK:  # a decoding step's single row is not worth a second thread
        _gelu_forward_kernel_serial(x2, out, _constants(x2.dtype))
    else:
        with threads_for(16 * x2.size):
            _gelu_forward_kernel(x2, out, _constants(x2.dtype))
    return out.reshape(np.shape(x)), x


def gelu_backward(dout, cache):
    """Returns dx, recomputing tanh from the cached x."""
    x = cache
    x2 = _rows(x)
    dx = np.empty_like(x2)
    with threads_for(16 * x2.size):  # as the forward
        _gelu_backward_kernel(_rows(np.asarray(dout, dtype=x2.dtype)), x2, dx, _constants(x2.dtype))
    return dx.reshape(np.shape(x))
