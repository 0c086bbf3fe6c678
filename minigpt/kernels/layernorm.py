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
The cache is the reference's (xhat, rstd, gamma), so either backward fits.
"""
import math

import numpy as np
from numba import njit, prange

from .threads import threads_for

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
def _forward_kernel(x, gamma, beta, k, out, xhat, rstd):
    eps, inv_c, one, zero = k[0], k[1], k[2], k[3]
    N, C = x.shape
    for n in prange(N):
        xr = x[n]
        mu = zero
        for c in range(C):
            mu += xr[c]
        mu *= inv_c
        var = zero
        for c in range(C):
            var += (xr[c] - mu) * (xr[c] - mu)
        rs = one / math.sqrt(var * inv_c + eps)
        rstd[n] = rs
        for c in range(C):
            xh = (xr[c] - mu) * rs
            xhat[n, c] = xh
            out[n, c] = xh * gamma[c] + beta[c]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward_kernel(dout, xhat, rstd, gamma, k, dx, dgamma_parts, dbeta_parts):
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
            g, xh = dout[n], xhat[n]
            mean_dxhat = zero
            mean_dxhat_xhat = zero
            for c in range(C):
                dg[c] += g[c] * xh[c]  # out = gamma * xhat + beta
                db[c] += g[c]
                dxh = g[c] * gamma[c]  # dxhat
                mean_dxhat += dxh
                mean_dxhat_xhat += dxh * xh[c]
            mean_dxhat *= inv_c
            mean_dxhat_xhat *= inv_c
            rs = rstd[n]
            for c in range(C):  # xhat = (x - mu) * rstd, through mu and var too
                dx[n, c] = rs * (g[c] * gamma[c] - mean_dxhat - xh[c] * mean_dxhat_xhat)


def layernorm_forward(x, gamma, beta, eps=LN_EPS):
    """Same contract as minigpt.layers.layernorm.layernorm_forward."""
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)  # (N, C)
    out = np.empty_like(x2)
    xhat = np.empty_like(x2)
    rstd = np.empty((x2.shape[0], 1), dtype=x2.dtype)
    with threads_for(8 * x2.size):  # a decoding step's single row is not worth a second thread
        _forward_kernel(x2, np.ascontiguousarray(gamma, dtype=x2.dtype), np.ascontiguousarray(beta, dtype=x2.dtype),
                        _constants(x2.dtype, C, eps), out, xhat, rstd[:, 0])
    shape = np.shape(x)
    return out.reshape(shape), (xhat.reshape(shape), rstd.reshape(*shape[:-1], 1), gamma)


def layernorm_backward(dout, cache):
    """Returns (dx, dgamma, dbeta)."""
    xhat, rstd, gamma = cache
    C = xhat.shape[-1]
    xh2 = np.ascontiguousarray(xhat).reshape(-1, C)
    d2 = np.ascontiguousarray(dout, dtype=xh2.dtype).reshape(-1, C)
    dx = np.empty_like(xh2)
    parts_g = np.empty((CHUNKS, C), dtype=xh2.dtype)
    parts_b = np.empty((CHUNKS, C), dtype=xh2.dtype)
    with threads_for(8 * xh2.size):  # as the forward: a small batch is not worth waking a thread
        _backward_kernel(d2, xh2, np.ascontiguousarray(rstd, dtype=xh2.dtype).reshape(-1),
                         np.ascontiguousarray(gamma, dtype=xh2.dtype), _constants(xh2.dtype, C), dx, parts_g, parts_b)
    return dx.reshape(xhat.shape), parts_g.sum(axis=0), parts_b.sum(axis=0)
