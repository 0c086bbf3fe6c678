"""Fused causal attention in numba: the FlashAttention idea on a CPU.

Same op as minigpt.layers.attention.causal_attention_forward/backward
(the NumPy reference that defines it), same contract:
    out, cache = attention_forward(q, k, v)      q (B, H, T_q, D), k, v (B, H, T_k, D)
    dq, dk, dv = attention_backward(dout, cache)
Query i sits at absolute position i + T_k - T_q and sees keys 0 .. i + T_k - T_q.

Why fused. The reference builds S = Q K^T and P = softmax(S), two (T_q, T_k)
arrays per head, and keeps P for the backward: memory grows as T^2 and every
element is written to and read back from RAM several times. Here one
(batch, head) pair is one parallel task, and within it:

Forward, one query row i at a time, keys in blocks of BLOCK (online softmax):
    m = running max of the scores seen so far, l = running sum of exp(s - m),
    acc = running sum of exp(s - m) v.
    For a new block with scores s_j:  m' = max(m, max_j s_j),
    rescale the old sums by exp(m - m'), then add exp(s_j - m') and exp(s_j - m') v_j.
    At the end out_i = acc / l and the row's log-sum-exp is L_i = m + log(l).
  Only a BLOCK-long score buffer exists; no T x T array is ever made.

Backward, recomputing instead of storing P:
    P_ij = exp(S_ij - L_i)                              (exact softmax, from L_i)
    dV   = P^T dout,  dP = dout V^T
    dS_ij = P_ij (dP_ij - delta_i),  delta_i = sum_j P_ij dP_ij = dout_i . out_i
    dQ = dS K * scale,  dK = dS^T Q * scale
  delta_i uses the identity sum_j P_ij (dout_i . v_j) = dout_i . out_i, so the
  row sum needs no second pass over keys. Recomputing P costs one more
  Q K^T, cheaper than writing and re-reading T^2 numbers.

Layout: k and v are copied transposed, (D, T_k), per task, so the inner loops
(over keys) walk contiguous memory and vectorise; exp is fexp (see fastexp.py).
The cache holds q, k, v, out and L: O(T D), not O(T^2).

To gate heads (pruning), multiply out (and dout) by a per-head factor outside
the kernel, or skip a (b, h) task inside it: the tasks are independent.
"""
import math

import numpy as np
from numba import njit, prange

from .fastexp import fexp

BLOCK = 256  # keys per online-softmax step; any value is correct, 256 floats sit in L1

# Reassociation lets LLVM vectorise the reductions; no 'nnan'/'ninf' because
# the code must stay correct for every finite input.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward_kernel(q, k, v, scale, out, lse):
    B, H, T_q, D = q.shape
    T_k = k.shape[2]
    offset = T_k - T_q
    for task in prange(B * H):
        b, h = task // H, task % H
        kT = np.ascontiguousarray(k[b, h].T)  # (D, T_k)
        vT = np.ascontiguousarray(v[b, h].T)  # (D, T_k)
        s = np.empty(BLOCK, dtype=q.dtype)  # scores, then exp(s - m), of one key block
        acc = np.empty(D, dtype=q.dtype)  # running sum of exp(s - m) v
        for i in range(T_q):
            n_visible = i + offset + 1
            m = scale  # overwritten by the first block's max; this only fixes the dtype
            l = scale - scale
            acc[:] = 0.0
            for j0 in range(0, n_visible, BLOCK):
                nb = min(BLOCK, n_visible - j0)
                sb = s[:nb]
                # Inner loops index 0-based slices: an index like j0 + j made numba
                # emit a negative-index check per element and blocked vectorisation (5x slower).
                sb[:] = 0.0
                for d in range(D):
                    qd = q[b, h, i, d] * scale
                    krow = kT[d, j0:j0 + nb]
                    for j in range(nb):
                        sb[j] += qd * krow[j]  # (nb,) scores q_i . k_j * scale
                block_max = sb[0]
                for j in range(1, nb):
                    block_max = max(block_max, sb[j])
                if j0 == 0:
                    m = block_max
                elif block_max > m:
                    alpha = fexp(m - block_max)  # rescale the old sums to the new max
                    l *= alpha
                    for d in range(D):
                        acc[d] *= alpha
                    m = block_max
                for j in range(nb):
                    sb[j] = fexp(sb[j] - m)
                    l += sb[j]
                for d in range(D):
                    vrow = vT[d, j0:j0 + nb]
                    a = acc[d]
                    for j in range(nb):
                        a += sb[j] * vrow[j]
                    acc[d] = a
            inv = 1.0 / l
            for d in range(D):
                out[b, h, i, d] = acc[d] * inv
            lse[b, h, i] = m + math.log(l)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward_kernel(q, k, v, out, lse, dout, scale, dq, dk, dv):
    B, H, T_q, D = q.shape
    T_k = k.shape[2]
    offset = T_k - T_q
    for task in prange(B * H):
        b, h = task // H, task % H
        kT = np.ascontiguousarray(k[b, h].T)  # (D, T_k)
        vT = np.ascontiguousarray(v[b, h].T)  # (D, T_k)
        dkT = np.zeros((D, T_k), dtype=q.dtype)  # accumulated over query rows
        dvT = np.zeros((D, T_k), dtype=q.dtype)
        p = np.empty(T_k, dtype=q.dtype)  # one row of P, recomputed
        ds = np.empty(T_k, dtype=q.dtype)  # one row of dS (times scale)
        for i in range(T_q):
            n = i + offset + 1
            delta = q.dtype.type(0.0)  # dout_i . out_i = sum_j P_ij dP_ij
            for d in range(D):
                delta += dout[b, h, i, d] * out[b, h, i, d]
            # P_ij = exp(q_i . k_j * scale - L_i)     (forward: S, then softmax)
            p[:n] = 0.0
            ds[:n] = 0.0
            for d in range(D):
                qd = q[b, h, i, d] * scale
                g = dout[b, h, i, d]
                for j in range(n):
                    p[j] += qd * kT[d, j]
                    ds[j] += g * vT[d, j]  # dP_ij = dout_i . v_j   (from out = P V)
            L = lse[b, h, i]
            for j in range(n):
                p[j] = fexp(p[j] - L)
                ds[j] = p[j] * (ds[j] - delta) * scale  # dS, with S's scale folded in
            for d in range(D):
                # dQ_i = sum_j dS_ij k_j * scale            (from S = Q K^T * scale)
                acc = q.dtype.type(0.0)
                for j in range(n):
                    acc += ds[j] * kT[d, j]
                dq[b, h, i, d] = acc
                qd = q[b, h, i, d]
                g = dout[b, h, i, d]
                for j in range(n):
                    dkT[d, j] += ds[j] * qd  # dK_j += dS_ij q_i * scale
                    dvT[d, j] += p[j] * g  # dV_j += P_ij dout_i   (from out = P V)
        dk[b, h] = dkT.T
        dv[b, h] = dvT.T


def _check(q, k, v):
    if q.ndim != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit (B, H, T, D)")
    if q.shape[2] > k.shape[2]:
        raise ValueError("T_q must not exceed T_k (queries are the last T_q of the keys)")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (np.float32, np.float64):
        raise ValueError("q, k, v must share one dtype, float32 or float64")


def attention_forward(q, k, v):
    """out = softmax(q k^T / sqrt(D) + causal mask) v; cache (q, k, v, out, lse)."""
    _check(q, k, v)
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    B, H, T_q, D = q.shape
    out = np.empty_like(q)  # (B, H, T_q, D)
    lse = np.empty((B, H, T_q), dtype=q.dtype)  # log-sum-exp of each score row
    scale = q.dtype.type(1.0 / math.sqrt(D))
    if T_q > 0:
        _forward_kernel(q, k, v, scale, out, lse)
    return out, (q, k, v, out, lse, scale)


def attention_backward(dout, cache):
    """Returns (dq, dk, dv), recomputing P from the stored log-sum-exp."""
    q, k, v, out, lse, scale = cache
    dout = np.ascontiguousarray(dout, dtype=q.dtype)
    dq = np.empty_like(q)
    dk = np.empty_like(k)
    dv = np.empty_like(v)
    if q.shape[2] > 0:
        _backward_kernel(q, k, v, out, lse, dout, scale, dq, dk, dv)
    else:
        dk[:] = 0.0
        dv[:] = 0.0
    return dq, dk, dv
