"""Fused LayerNorm in numba; minigpt.layers.layernorm defines it.

    mu = mean(x), var = mean((x - mu)^2), xhat = (x - mu) / sqrt(var + eps)
    out = gamma * xhat + beta                        x (..., C) -> out (..., C)
Backward (same formulas as the reference):
    dgamma = sum over rows of dout * xhat,  dbeta = sum over rows of dout
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = dout * gamma

Why: after GELU, LayerNorm was the largest op left outside BLAS and attention
in the profile of a base training step (~7%): NumPy makes a pass over
memory per operation (mean, subtract, square, mean, multiply, ...), the
kernel makes two passes per row. Rows run in parallel; dgamma and dbeta,
which sum over rows, are accumulated per chunk of rows and the chunks'
partial sums added at the end (no two threads write the same numbers).
Below SMALL_WORK (the small training shapes, decoding) serial twins run the
same code on the calling thread: a thread is not worth waking for ~50 us.

The cache is (x, mu, rstd, gamma), not the reference's (xhat, rstd, gamma):
the backward recomputes xhat = (x - mu) * rstd from the row it reads anyway.
Measured inside a training step (small shape, 2-core Xeon Emerald Rapids),
the forward's cost was writing its outputs: fresh arrays whose memory is
not in cache, so every line written is first fetched (the same 9 calls with
their outputs made resident first took 0.55 ms instead of 0.91; no page
faults, and one thread as slow as two). Not storing xhat halves what the
forward writes: 9 calls in a step went from 1.0 ms to 0.47. x costs no
memory of its own: it is the residual stream, kept for the residual add anyway.
"""
import math

import numpy as np
from numba import njit, prange

from .threads import SMALL_WORK, serial_twin

# The reference's eps (minigpt.layers.layernorm), repeated because the kernels
# import nothing above them; tests/test_kernels_ops.py checks they agree.
LN_EPS = 1e-5

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
CHUNKS = 16  # row chunks with their own dgamma/dbeta partial sums


# numba types a Python float literal (and x / C) as float64, which would
# drag float32 rows up to float64 math; constants come in the input's dtype.
def _constants(dtype, C, eps=0.0):
    return np.array([eps, 1.0 / C, 1.0, 0.0], dtype=dtype)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward_kernel(x, gamma, beta, k, out, mu, rstd):
    eps, inv_c, one, zero = k[0], k[1], k[2], k[3]
    N, C = x.shape
    for n in prange(N):
        xr, orow = x[n], out[n]
        m = zero
        for c in range(C):
            m += xr[c]
        m *= inv_c
        var = zero
        for c in range(C):
            var += (xr[c] - m) * (xr[c] - m)
        rs = one / math.sqrt(var * inv_c + eps)
        mu[n] = m
        rstd[n] = rs
        for c in range(C):
            orow[c] = (xr[c] - m) * rs * gamma[c] + beta[c]  # xhat is not stored: see the module docstring


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward_kernel(dout, x, mu, rstd, gamma, k, dx, dgamma_parts, dbeta_parts, dgamma, dbeta):
    inv_c, zero = k[1], k[3]
    N, C = dout.shape
    n_chunks = dgamma_parts.shape[0]
    rows_per_chunk = (N + n_chunks - 1) // n_chunks
    for chunk in prange(n_chunks):
        dg = dgamma_parts[chunk]
        db = dbeta_parts[chunk]
        dg[:] = 0.0
        db[:] = 0.0
        for n in range(chunk * rows_per_chunk, min(N, (chunk + 1) * rows_per_chunk)):
            g, xr, dxr = dout[n], x[n], dx[n]
            m, rs = mu[n], rstd[n]
            mean_dxhat = zero
            mean_dxhat_xhat = zero
            for c in range(C):
                xh = (xr[c] - m) * rs  # the forward's xhat, recomputed from the row
                dg[c] += g[c] * xh  # out = gamma * xhat + beta
                db[c] += g[c]
                dxh = g[c] * gamma[c]  # dxhat
                mean_dxhat += dxh
                mean_dxhat_xhat += dxh * xh
            mean_dxhat *= inv_c
            mean_dxhat_xhat *= inv_c
            for c in range(C):  # xhat = (x - mu) * rstd, through mu and var too
                xh = (xr[c] - m) * rs
                dxr[c] = rs * (g[c] * gamma[c] - mean_dxhat - xh * mean_dxhat_xhat)
    # the chunks' partial sums, added here rather than by NumPy afterwards (~10 us a call saved)
    dgamma[:] = dgamma_parts[0]
    dbeta[:] = dbeta_parts[0]
    for chunk in range(1, n_chunks):
        dgamma += dgamma_parts[chunk]
        dbeta += dbeta_parts[chunk]


# Calls below SMALL_WORK (the small training shapes, a decoding step's row)
# run on one thread anyway: their serial twins skip the parallel launch and
# threads_for's switch of numba's thread count (~15 us a call with two threads).
_forward_kernel_serial = serial_twin(_forward_kernel, "_ln_forward_kernel_serial", FASTMATH)
_backward_kernel_serial = serial_twin(_backward_kernel, "_ln_backward_kernel_serial", FASTMATH)
FORWARD_WORK, BACKWARD_WORK = 8, 12  # rough operations per element, for SMALL_WORK


def _rows(a, dtype):
    """a as a C-contiguous (rows, last axis) array of dtype (no copy if it already is one)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a.reshape(-1, a.shape[-1])


def layernorm_forward(x, gamma, beta, eps=LN_EPS):
    """Same output as minigpt.layers.layernorm.layernorm_forward; the cache is
    (x, mu, rstd, gamma) as rows, not the reference's (xhat, rstd, gamma)."""
    x2 = _rows(x, np.asarray(x).dtype)  # (N, C)
    N, C = x2.shape
    out = np.empty_like(x2)
    mu = np.empty(N, dtype=x2.dtype)
    rstd = np.empty(N, dtype=x2.dtype)
    args = (x2, _rows(gamma, x2.dtype)[0], _rows(beta, x2.dtype)[0], _constants(x2.dtype, C, eps), out, mu, rstd)
    if FORWARD_WORK * x2.size < SMALL_WORK:
        _forward_kernel_serial(*args)
    else:
        _forward_kernel(*args)
    return out.reshape(np.shape(x)), (x2, mu, rstd, args[1])


def layernorm_backward(dout, cache):
    """Returns (dx, dgamma, dbeta), recomputing xhat from the cached rows."""
    x2, mu, rstd, gamma = cache
    C = x2.shape[1]
    d2 = _rows(dout, x2.dtype)  # (N, C)
    dx = np.empty_like(x2)
    parts = np.empty((2, CHUNKS, C), dtype=x2.dtype)  # dgamma's and dbeta's per chunk
    sums = np.empty((2, C), dtype=x2.dtype)  # dgamma, dbeta
    args = (d2, x2, mu, rstd, gamma, _constants(x2.dtype, C), dx, parts[0], parts[1], sums[0], sums[1])
    if BACKWARD_WORK * x2.size < SMALL_WORK:
        _backward_kernel_serial(*args)
    else:
        _backward_kernel(*args)
    return dx.reshape(np.shape(dout)), sums[0], sums[1]


def warm_parallel(x, gamma, beta):
    """Run the parallel kernels once on x (any size), as a batch above SMALL_WORK would (kernels.warm_up)."""
    x2 = _rows(x, np.asarray(x).dtype)
    N, C = x2.shape
    out, mu, rstd = np.empty_like(x2), np.empty(N, dtype=x2.dtype), np.empty(N, dtype=x2.dtype)
    g, b = _rows(gamma, x2.dtype)[0], _rows(beta, x2.dtype)[0]
    _forward_kernel(x2, g, b, _constants(x2.dtype, C), out, mu, rstd)
    parts, sums = np.empty((2, CHUNKS, C), dtype=x2.dtype), np.empty((2, C), dtype=x2.dtype)
    _backward_kernel(out, x2, mu, rstd, g, _constants(x2.dtype, C), np.empty_like(x2), parts[0], parts[1], sums[0],
                     sums[1])
