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

Forward, per query row i, keys in blocks of BLOCK (online softmax):
    m = running max of the scores seen so far, l = running sum of exp(s - m),
    acc = running sum of exp(s - m) v.
    For a new block with scores s_j:  m' = max(m, max_j s_j),
    rescale the old sums by exp(m - m'), then add exp(s_j - m') and exp(s_j - m') v_j.
    At the end out_i = acc / l.
  Only a (ROWS, BLOCK) score buffer exists; no T x T array is ever made.
  ROWS = 4 query rows go through the blocks together, so each k and v element
  loaded serves four rows (rows see different numbers of keys: the surplus
  scores of the shorter rows are set to probability 0).

Backward, recomputing instead of storing P:
    P_ij = exp(S_ij - m_i) / sum_j exp(S_ij - m_i)     (each row whole, m_i its max)
    dV   = P^T dout,  dP = dout V^T
    dS_ij = P_ij (dP_ij - delta_i),  delta_i = sum_j P_ij dP_ij = dout_i . out_i
    dQ = dS K * scale,  dK = dS^T Q * scale
  delta_i uses the identity sum_j P_ij (dout_i . v_j) = dout_i . out_i, so the
  row sum needs no second pass over keys. Recomputing P costs one more
  Q K^T, cheaper than writing and re-reading T^2 numbers.
  Again four query rows at a time, with one (ROWS, T_k) buffer for P and one
  for dS; dK and dV accumulate over the rows in (D, T_k) arrays per task.

Layout: k and v are copied transposed, (D, T_k), per task, so the inner loops
(over keys) walk contiguous memory and vectorise; exp is fexp (see fastexp.py).
Key counts are padded to whole vectors (LANES, EXP_CHUNK: LLVM runs a loop's
remainder as scalar code, which at short T was most of the work), and each
thread keeps one set of scratch arrays for all its (batch, head) tasks.
The cache holds q, k, v and out: O(T D), not O(T^2). Decoding (one query row
against a KV cache) has its own kernel, _decode_kernel.

The same two kernels also run on GPT-2's packed qkv (B, T, 3C) as it comes
out of c_attn (attention_forward_qkv / attention_backward_qkv): they read
each head's rows from its columns of qkv, write out into (B, T, C) and
dq, dk, dv into dqkv (B, T, 3C), so the multi-head layer splits and merges
no heads (see _layout, and AttentionKernel for how the layer finds them).

To gate heads (pruning), multiply out (and dout) by a per-head factor outside
the kernel, or skip a (b, h) task inside it: the tasks are independent.
"""
import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .fastexp import _i32_as_f32, _i64_as_f64, fexp
from .threads import SMALL_WORK, serial_twin, threads_for

# Keys per online-softmax step; any value is correct. The (4, BLOCK) score
# buffer sits in L1 (8 KB float32). 512 measured ~5% faster than 256 in the
# forward at T=1024 (fewer horizontal sums and rescales; one thread, Xeon
# family 6 model 207); 1024 no better than 512.
BLOCK = 512
# Key counts are rounded up to a multiple of LANES (16 float32 = one AVX-512
# vector, two AVX2 ones) so that loops over keys run in whole vectors, never in
# a scalar remainder; BLOCK must be a multiple of it.
LANES = 16
EXP_CHUNK = 64  # see _softmax_block_row; BLOCK must be a multiple of it
ROWS = 4  # query rows handled together (the loops spell out 4)
# The backward's six scratch arrays start multiples of this many elements
# apart modulo 1024 elements (4 KB in float32, 8 in float64). Allocated apart,
# large ones all came page-aligned: the same key's elements of dkT, dvT and kT
# then had the same address modulo 4 KB, which x86 cores take for a possible
# store-to-load dependence (4K aliasing), stalling the loads after each store.
SKEW = 64

# Reassociation lets LLVM vectorise the reductions; no 'nnan'/'ninf' because
# the code must stay correct for every finite input.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, inline="always")
def _round_up(n, m):
    return (n + m - 1) // m * m


@intrinsic
def _f32_bits(typingctx, x):
    """The bits of a float32 as an int32."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def _f64_bits(typingctx, x):
    """The bits of a float64 as an int64."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


def _order_key(x):
    """An integer with the order of the float x (numba only)."""


@overload(_order_key)
def _order_key_overload(x):
    # A float's bits read as a signed integer are in order for x >= 0 and in
    # reverse for x < 0; flipping every bit but the sign of a negative one
    # puts them in order too. The map is its own inverse.
    if x == types.float32:
        def key32(x):
            i = _f32_bits(x)
            # np.int32(): numba computes int32 operations in int64; narrowed, LLVM
            # vectorises the loop sixteen lanes wide, not eight
            return np.int32(i ^ ((i >> np.int32(31)) & np.int32(0x7FFFFFFF)))
        return key32
    if x == types.float64:
        def key64(x):
            i = _f64_bits(x)
            return i ^ ((i >> np.int64(63)) & np.int64(0x7FFFFFFFFFFFFFFF))
        return key64
    return None


def _from_key(key, like):
    """The float (of like's type) whose _order_key is key (numba only)."""


@overload(_from_key)
def _from_key_overload(key, like):
    if like == types.float32:
        def back32(key, like):
            return _i32_as_f32(np.int32(key ^ ((key >> np.int32(31)) & np.int32(0x7FFFFFFF))))
        return back32
    if like == types.float64:
        def back64(key, like):
            return _i64_as_f64(key ^ ((key >> np.int64(63)) & np.int64(0x7FFFFFFFFFFFFFFF)))
        return back64
    return None


@njit(cache=True, inline="always", fastmath=FASTMATH)
def _row_max(a, n):
    """max(a[:n]), n >= 1, a finite, over the floats' integer order keys.

    LLVM does not vectorise a float max reduction without 'nnan' (a single
    chain of max() took 0.78 ns an element, eight running maxima 0.19, Xeon
    family 6 model 207), but it does an integer one; and like the exp loop
    it runs whole vectors only (four at a time), so the loop goes to n
    rounded up to EXP_CHUNK with the keys past n masked; a must have that
    many finite entries (or n itself). (Masking only the last chunk, in a
    loop of its own, made that loop scalar code: slower.)"""
    first = _order_key(a[0])  # a[0] is among the n: a neutral stand-in for the masked keys
    best = first
    n_pad = min(_round_up(n, EXP_CHUNK), a.shape[0])
    for j in range(n_pad):
        key = _order_key(a[j])
        key = key if j < n else first
        best = max(best, key)
    return _from_key(best, a[0])


@njit(cache=True, inline="always", fastmath=FASTMATH)
def _scores4(qs, kT, j0, nb, s):
    """s[r, j] = sum_d qs[r, d] kT[d, j0 + j] over d in groups of four (the
    D % 4 tail is left to the caller; s[:, :nb] is set to zero if D < 4). Four
    d at a time because the sum runs through memory: with one d per pass, every
    pass loaded and stored all four score rows for four FMAs; a group of four
    does sixteen per load and store. The first group writes s instead of adding
    to it, so s needs no zeroing pass (a slice fill costs ~2% at T=512)."""
    D = qs.shape[1]
    if D < 4:
        s[:, :nb] = 0.0
    for d in range(0, D - D % 4, 4):
        q00, q01, q02, q03 = qs[0, d], qs[0, d + 1], qs[0, d + 2], qs[0, d + 3]
        q10, q11, q12, q13 = qs[1, d], qs[1, d + 1], qs[1, d + 2], qs[1, d + 3]
        q20, q21, q22, q23 = qs[2, d], qs[2, d + 1], qs[2, d + 2], qs[2, d + 3]
        q30, q31, q32, q33 = qs[3, d], qs[3, d + 1], qs[3, d + 2], qs[3, d + 3]
        # 0-based views (see the caller's note on negative-index checks)
        k0, k1, k2, k3 = kT[d, j0:j0 + nb], kT[d + 1, j0:j0 + nb], kT[d + 2, j0:j0 + nb], kT[d + 3, j0:j0 + nb]
        if d == 0:
            for j in range(nb):
                a, b, c, e = k0[j], k1[j], k2[j], k3[j]
                s[0, j] = q00 * a + q01 * b + q02 * c + q03 * e
                s[1, j] = q10 * a + q11 * b + q12 * c + q13 * e
                s[2, j] = q20 * a + q21 * b + q22 * c + q23 * e
                s[3, j] = q30 * a + q31 * b + q32 * c + q33 * e
            continue
        for j in range(nb):
            a, b, c, e = k0[j], k1[j], k2[j], k3[j]
            s[0, j] += q00 * a + q01 * b + q02 * c + q03 * e
            s[1, j] += q10 * a + q11 * b + q12 * c + q13 * e
            s[2, j] += q20 * a + q21 * b + q22 * c + q23 * e
            s[3, j] += q30 * a + q31 * b + q32 * c + q33 * e


@njit(cache=True, inline="always", fastmath=FASTMATH)
def _weighted_sum4(s, vT, j0, nb, acc):
    """acc[r, d] += sum_j s[r, j] vT[d, j0 + j] for d in groups of four (the
    tail to the caller): each s element loaded serves four d, not one."""
    D = acc.shape[1]
    zero = acc[0, 0] - acc[0, 0]
    for d in range(0, D - D % 4, 4):
        v0, v1, v2, v3 = vT[d, j0:j0 + nb], vT[d + 1, j0:j0 + nb], vT[d + 2, j0:j0 + nb], vT[d + 3, j0:j0 + nb]
        a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = zero
        a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = zero
        for j in range(nb):
            p0, p1, p2, p3 = s[0, j], s[1, j], s[2, j], s[3, j]
            x0, x1, x2, x3 = v0[j], v1[j], v2[j], v3[j]
            a00 += p0 * x0
            a01 += p0 * x1
            a02 += p0 * x2
            a03 += p0 * x3
            a10 += p1 * x0
            a11 += p1 * x1
            a12 += p1 * x2
            a13 += p1 * x3
            a20 += p2 * x0
            a21 += p2 * x1
            a22 += p2 * x2
            a23 += p2 * x3
            a30 += p3 * x0
            a31 += p3 * x1
            a32 += p3 * x2
            a33 += p3 * x3
        acc[0, d] += a00
        acc[0, d + 1] += a01
        acc[0, d + 2] += a02
        acc[0, d + 3] += a03
        acc[1, d] += a10
        acc[1, d + 1] += a11
        acc[1, d + 2] += a12
        acc[1, d + 3] += a13
        acc[2, d] += a20
        acc[2, d + 1] += a21
        acc[2, d + 2] += a22
        acc[2, d + 3] += a23
        acc[3, d] += a30
        acc[3, d + 1] += a31
        acc[3, d + 2] += a32
        acc[3, d + 3] += a33


@njit(cache=True, inline="always", fastmath=FASTMATH)
def _transpose_into(x, c0, D, xT):
    """xT[:, :T] = x[:, c0:c0 + D].T for x (T, W): one head's columns of the
    rows; xT's padding columns are left as they are.

    In blocks of 16 rows of x: a block (16 x D) stays in L1 while its D
    columns are written out. Measured per element, one thread, Xeon family 6
    model 207, D = 32: 0.28 / 0.45 ns at T = 128 / 1024, where column by
    column (strided reads over all of x) took 0.47 / 0.80."""
    T = x.shape[0]
    for j0 in range(0, T - T % 16, 16):
        blk = x[j0:j0 + 16]
        for d in range(D):
            dst = xT[d, j0:j0 + 16]
            for jj in range(16):
                dst[jj] = blk[jj, c0 + d]
    for j in range(T - T % 16, T):
        for d in range(D):
            xT[d, j] = x[j, c0 + d]


@njit(cache=True, inline="always", fastmath=FASTMATH)
def _transpose_from(xT, x, c0, D):
    """x[:, c0:c0 + D] = xT[:, :T].T for x (T, W), in the same blocks as _transpose_into."""
    T = x.shape[0]
    for j0 in range(0, T - T % 16, 16):
        blk = x[j0:j0 + 16]
        for d in range(D):
            src = xT[d, j0:j0 + 16]
            for jj in range(16):
                blk[jj, c0 + d] = src[jj]
    for j in range(T - T % 16, T):
        for d in range(D):
            x[j, c0 + d] = xT[d, j]


@njit(cache=True, inline="always", fastmath=FASTMATH)
def _softmax_block_row(sr, nr, nbp, mr):
    """sr[:nr] = exp(sr[:nr] - mr), sr[nr:nbp] = 0; returns the sum of the exps.

    LLVM vectorises this loop four vectors at a time (64 float32 with
    AVX-512) and runs any shorter count as scalar code: at T = 128 that was
    nearly every row (1.2 ns an element against 0.3 in vector code). So the
    loop runs to nr rounded up to EXP_CHUNK and masks the keys past nr; sr
    must have finite values there (it is zero-initialised, then holds
    earlier scores and exps)."""
    zero = mr - mr
    total = zero
    nrp = min(_round_up(nr, EXP_CHUNK), sr.shape[0])
    for j in range(nrp):
        e = fexp(sr[j] - mr)
        e = e if j < nr else zero  # masked: key past the row's position
        sr[j] = e
        total += e
    for j in range(nrp, nbp):  # a loop: a slice fill's overhead is more than these few keys
        sr[j] = zero
    return total


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward_kernel(q, k, v, H, D, lay, scale, out, n_threads):
    B = q.shape[0] // lay[0]  # q, k, v, out 3-D, heads found through lay (see _layout)
    T_q, T_k = q.shape[1], k.shape[1]
    T_pad = _round_up(T_k, LANES)
    offset = T_k - T_q
    zero = scale - scale  # 0 in the input's dtype
    n_tasks = B * H
    n_chunks = min(n_threads, n_tasks)
    # One chunk of (batch, head) tasks per thread: the scratch arrays are made
    # once per thread instead of once per task (the tasks all cost the same,
    # so the split is even). A chunk is a run of consecutive tasks (all the
    # heads of its batches but at its ends): on the packed layout two threads
    # then write different rows of out and dqkv, where every n_chunks-th task had them write
    # neighbouring heads of the same rows at once, sharing cache lines (the
    # packed forward 1.19 -> 1.10 ms at B=16, T=128, 4 heads of 32, two threads;
    # base training step 1.035x faster; Xeon family 6 model 207, load 1.0).
    for chunk in prange(n_chunks):
        # k and v transposed, (D, T_pad), so the loops over keys walk contiguous
        # memory; the padding columns stay 0, so scores there are finite (0)
        # and every loop over keys can run in whole vectors of LANES.
        # scores, then exp(s - m), of one key block: no wider than T_k needs;
        # kT, vT and s from one buffer, as in the backward (see SKEW)
        W = _round_up(min(T_pad, BLOCK), EXP_CHUNK)
        size = _round_up(max(D * T_pad, ROWS * W), 1024) + SKEW
        buf = np.zeros(3 * size + 64, dtype=q.dtype)
        buf = buf[(64 - buf.ctypes.data % 64) % 64 // buf.itemsize:]  # from a 64-byte boundary
        kT = buf[:D * T_pad].reshape((D, T_pad))
        vT = buf[size:size + D * T_pad].reshape((D, T_pad))
        s = buf[2 * size:2 * size + ROWS * W].reshape((ROWS, W))
        acc = np.empty((ROWS, D), dtype=q.dtype)  # running sums of exp(s - m) v
        qs = np.empty((ROWS, D), dtype=q.dtype)  # the rows' q * scale
        m = np.empty(ROWS, dtype=q.dtype)  # running max of each row's scores
        l = np.empty(ROWS, dtype=q.dtype)  # running sum of exp(s - m)
        n_vis = np.empty(ROWS, dtype=np.int64)
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            b, h = task // H, task % H
            t, o = b * lay[0] + h * lay[1], h * lay[2]  # head h's rows: [t, :, o:o + D] (q, out)
            _transpose_into(k[t], o + lay[3], D, kT)  # (D, T_k) of (D, T_pad)
            _transpose_into(v[t], o + lay[4], D, vT)
            # ROWS query rows at a time share every k and v element loaded.
            # Rows past T_q get no keys (n_vis = 0) and are not written.
            for i0 in range(0, T_q, ROWS):
                n = 0
                for r in range(ROWS):
                    i = min(i0 + r, T_q - 1)
                    n_vis[r] = i + offset + 1 if i0 + r < T_q else 0
                    n = max(n, n_vis[r])
                    l[r] = zero
                    # loops, not acc[:] = 0 and n_vis.max(): numba's slice fill and
                    # max cost ~20-30 ns a call, 10% of the forward at T = 128
                    for d in range(D):
                        qs[r, d] = q[t, i, o + d] * scale
                        acc[r, d] = zero
                for j0 in range(0, n, BLOCK):
                    nb = min(BLOCK, n - j0)
                    nbp = _round_up(nb, LANES)  # <= BLOCK and <= T_pad - j0: both are multiples of LANES
                    _scores4(qs, kT, j0, nbp, s)
                    for d in range(D - D % 4, D):
                        q0, q1, q2, q3 = qs[0, d], qs[1, d], qs[2, d], qs[3, d]
                        # 0-based view: an index like j0 + j made numba emit a
                        # negative-index check per element and blocked SIMD (5x slower)
                        krow = kT[d, j0:j0 + nbp]
                        for j in range(nbp):
                            kj = krow[j]
                            s[0, j] += q0 * kj  # scores q_i . k_j * scale
                            s[1, j] += q1 * kj
                            s[2, j] += q2 * kj
                            s[3, j] += q3 * kj
                    for r in range(ROWS):
                        nr = min(max(n_vis[r] - j0, 0), nb)  # keys of this block row r may see
                        if nr == 0:
                            s[r, :nbp] = 0.0
                            continue
                        block_max = _row_max(s[r], nr)
                        if j0 == 0:
                            m[r] = block_max
                        elif block_max > m[r]:
                            alpha = fexp(m[r] - block_max)  # rescale the old sums to the new max
                            l[r] *= alpha
                            for d in range(D):
                                acc[r, d] *= alpha
                            m[r] = block_max
                        l[r] += _softmax_block_row(s[r], nr, nbp, m[r])
                    _weighted_sum4(s, vT, j0, nbp, acc)
                    for d in range(D - D % 4, D):
                        vrow = vT[d, j0:j0 + nbp]
                        a0, a1, a2, a3 = zero, zero, zero, zero
                        for j in range(nbp):
                            vj = vrow[j]
                            a0 += s[0, j] * vj
                            a1 += s[1, j] * vj
                            a2 += s[2, j] * vj
                            a3 += s[3, j] * vj
                        acc[0, d] += a0
                        acc[1, d] += a1
                        acc[2, d] += a2
                        acc[3, d] += a3
                for r in range(min(ROWS, T_q - i0)):
                    inv = 1.0 / l[r]
                    for d in range(D):
                        out[t, i0 + r, o + d] = acc[r, d] * inv


@njit(cache=True, inline="always", fastmath=FASTMATH)
def _probs_and_grads_row(pr, dsr, nv, n_pad, delta):
    """From one row's scores pr[:nv] and dP dsr[:nv]: pr = exp(S - max) (P
    before its normalisation), dsr = pr (dP - delta) (dS before it), both 0
    from nv to n_pad; returns 1 / sum_j exp(S_j - max), the factor that makes
    pr P and dsr dS. pr and dsr must hold finite values up to nv rounded up
    to EXP_CHUNK.

    P is normalised here, from the whole row's scores (the backward has
    them all anyway), not from a log-sum-exp kept by the forward, so the
    forward writes nothing but out (its peak memory: out and per-thread
    scratch). The factor is left for the caller to fold into the row's dout
    (dV = P^T dout), q (dK = dS^T Q) and dq, so dS comes out of the exp loop
    itself, not a pass of its own over the row (3-4% of the backward at
    T = 1024, see _backward_kernel)."""
    if nv == 0:  # a padding row
        pr[:n_pad] = 0.0
        dsr[:n_pad] = 0.0
        return pr[0] - pr[0]
    mr = _row_max(pr, nv)
    zero = mr - mr
    total = zero
    nvp = min(_round_up(nv, EXP_CHUNK), pr.shape[0])  # whole vectors, keys past nv masked (see _softmax_block_row)
    for j in range(nvp):
        e = fexp(pr[j] - mr)
        e = e if j < nv else zero
        pr[j] = e
        dsr[j] = e * (dsr[j] - delta)  # dS_ij = P_ij (dP_ij - delta_i), but for the row's factor
        total += e
    for j in range(nvp, n_pad):
        pr[j] = zero
        dsr[j] = zero
    return 1.0 / total


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward_kernel(q, k, v, out, dout, H, D, lay, scale, dq, dk, dv, n_threads):
    B = q.shape[0] // lay[0]  # every array 3-D, heads found through lay (see _layout)
    T_q, T_k = q.shape[1], k.shape[1]
    T_pad = _round_up(T_k, LANES)
    offset = T_k - T_q
    zero = scale - scale  # 0 in the input's dtype
    n_tasks = B * H
    n_chunks = min(n_threads, n_tasks)
    for chunk in prange(n_chunks):  # a run of tasks, scratch once per thread (see the forward)
        # kT, vT (padding columns stay 0) and dkT, dvT (accumulated over query
        # rows), (D, T_pad) each, and p, ds below, carved from one buffer so
        # that their starts differ by multiples of SKEW elements modulo 1024 (see SKEW).
        W = _round_up(T_k, EXP_CHUNK)
        size = _round_up(max(D * T_pad, ROWS * W), 1024) + SKEW
        buf = np.zeros(6 * size + 64, dtype=q.dtype)
        # from a 64-byte boundary (numba aligns arrays to 32 bytes; an AVX-512
        # vector off a line boundary takes two lines per load)
        buf = buf[(64 - buf.ctypes.data % 64) % 64 // buf.itemsize:]
        kT = buf[:D * T_pad].reshape((D, T_pad))
        vT = buf[size:size + D * T_pad].reshape((D, T_pad))
        dkT = buf[2 * size:2 * size + D * T_pad].reshape((D, T_pad))
        dvT = buf[3 * size:3 * size + D * T_pad].reshape((D, T_pad))
        # ROWS rows of P (unnormalised), recomputed, and of dS (times scale); as
        # wide as whole EXP_CHUNKs, so the padded loops never end in a part chunk
        p = buf[4 * size:4 * size + ROWS * W].reshape((ROWS, W))
        ds = buf[5 * size:5 * size + ROWS * W].reshape((ROWS, W))
        qs = np.empty((ROWS, D), dtype=q.dtype)  # those rows of q * scale, of q, of dout
        qr = np.empty((ROWS, D), dtype=q.dtype)
        g = np.empty((ROWS, D), dtype=q.dtype)
        gp = np.empty((ROWS, D), dtype=q.dtype)  # dout's rows over their softmax sums
        n_vis = np.empty(ROWS, dtype=np.int64)
        delta = np.empty(ROWS, dtype=q.dtype)
        c = np.empty(ROWS, dtype=q.dtype)  # each row's softmax factor times scale
        for task in range(chunk * n_tasks // n_chunks, (chunk + 1) * n_tasks // n_chunks):
            b, h = task // H, task % H
            t, o = b * lay[0] + h * lay[1], h * lay[2]  # head h's rows: [t, :, o:o + D] (q, out)
            _transpose_into(k[t], o + lay[3], D, kT)  # (D, T_k) of (D, T_pad)
            _transpose_into(v[t], o + lay[4], D, vT)
            dkT[:] = 0.0
            dvT[:] = 0.0
            # ROWS query rows at a time: every k, v, dk, dv element loaded is used
            # ROWS times. Rows past T_q are computed with P = 0 and not written.
            for i0 in range(0, T_q, ROWS):
                n = 0
                for r in range(ROWS):
                    i = min(i0 + r, T_q - 1)
                    n_vis[r] = i + offset + 1 if i0 + r < T_q else 0
                    n = max(n, n_vis[r])
                    delta[r] = zero  # dout_i . out_i = sum_j P_ij dP_ij
                    for d in range(D):
                        qs[r, d] = q[t, i, o + d] * scale
                        qr[r, d] = q[t, i, o + d]
                        g[r, d] = dout[t, i, o + d]
                        delta[r] += dout[t, i, o + d] * out[t, i, o + d]
                n = _round_up(n, LANES)  # whole vectors; the padding gets P = dS = 0
                _scores4(qs, kT, 0, n, p)  # S = Q K^T * scale, head dims in fours
                _scores4(g, vT, 0, n, ds)  # dP = dout V^T
                for d in range(D - D % 4, D):
                    q0, q1, q2, q3 = qs[0, d], qs[1, d], qs[2, d], qs[3, d]
                    g0, g1, g2, g3 = g[0, d], g[1, d], g[2, d], g[3, d]
                    for j in range(n):
                        kj = kT[d, j]
                        vj = vT[d, j]
                        p[0, j] += q0 * kj  # S_ij = q_i . k_j * scale     (forward: S = Q K^T)
                        p[1, j] += q1 * kj
                        p[2, j] += q2 * kj
                        p[3, j] += q3 * kj
                        ds[0, j] += g0 * vj  # dP_ij = dout_i . v_j        (from out = P V)
                        ds[1, j] += g1 * vj
                        ds[2, j] += g2 * vj
                        ds[3, j] += g3 * vj
                for r in range(ROWS):
                    inv = _probs_and_grads_row(p[r], ds[r], n_vis[r], n, delta[r])
                    c[r] = inv * scale  # ds times it is dS, S's scale folded in
                    for d in range(D):
                        gp[r, d] = g[r, d] * inv  # dout_i / sum_j exp(S_ij - max): p times it is P
                        qr[r, d] = qr[r, d] * c[r]  # for dK = dS^T Q * scale
                for d in range(D):
                    # dQ_i = sum_j dS_ij k_j * scale                 (from S = Q K^T * scale)
                    a0, a1, a2, a3 = zero, zero, zero, zero
                    q0, q1, q2, q3 = qr[0, d], qr[1, d], qr[2, d], qr[3, d]
                    g0, g1, g2, g3 = gp[0, d], gp[1, d], gp[2, d], gp[3, d]
                    for j in range(n):
                        kj = kT[d, j]
                        a0 += ds[0, j] * kj
                        a1 += ds[1, j] * kj
                        a2 += ds[2, j] * kj
                        a3 += ds[3, j] * kj
                        # dK_j += sum_i dS_ij q_i * scale;  dV_j += sum_i P_ij dout_i   (from out = P V)
                        dkT[d, j] += ds[0, j] * q0 + ds[1, j] * q1 + ds[2, j] * q2 + ds[3, j] * q3
                        dvT[d, j] += p[0, j] * g0 + p[1, j] * g1 + p[2, j] * g2 + p[3, j] * g3
                    acc = (a0 * c[0], a1 * c[1], a2 * c[2], a3 * c[3])
                    for r in range(min(ROWS, T_q - i0)):
                        dq[t, i0 + r, o + d] = acc[r]
            # Element by element: `dk[b, h] = dkT.T` makes numba compile the
            # shape-mismatch error message (its string formatting); the cold
            # compile of this kernel took 17-20 s with it, 7-10 s without
            # (2-core Xeon, busy machine).
            _transpose_from(dkT, dk[t], o + lay[3], D)
            _transpose_from(dvT, dv[t], o + lay[4], D)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _decode_kernel(q, kT, vT, T_k, scale, out, n_threads):
    """One query row per (batch, head), at the last of T_k positions (a decoding
    step): q (B, H, 1, D); kT, vT (B, H, D, >= T_k), the keys and values
    transposed in their first T_k columns, which is how a KV cache
    (minigpt.layers.attention.KVPast) stores them, so they are read in place:
    no per-call transposes, and no block of four query rows of which three
    would be padding."""
    B, H, _, D = q.shape
    zero = scale - scale  # 0 in the input's dtype
    n_tasks = B * H
    n_chunks = min(n_threads, n_tasks)
    for chunk in prange(n_chunks):
        s = np.zeros(_round_up(T_k, EXP_CHUNK), dtype=q.dtype)  # the row's scores, then exp(s - max)
        for task in range(chunk, n_tasks, n_chunks):
            b, h = task // H, task % H
            s[:T_k] = 0.0
            for d in range(D):
                qd = q[b, h, 0, d] * scale
                krow = kT[b, h, d, :T_k]
                for j in range(T_k):
                    s[j] += qd * krow[j]  # s_j = q . k_j * scale, over contiguous keys
            mx = _row_max(s, T_k)
            total = _softmax_block_row(s, T_k, T_k, mx)  # every key is visible
            for d in range(D):
                vrow = vT[b, h, d, :T_k]
                a = zero
                for j in range(T_k):
                    a += s[j] * vrow[j]
                out[b, h, 0, d] = a / total


_decode_kernel_serial = serial_twin(_decode_kernel, "_attention_decode_kernel_serial", FASTMATH)


def _check(q, k, v):
    if q.ndim != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit (B, H, T, D)")
    if q.shape[2] > k.shape[2]:
        raise ValueError("T_q must not exceed T_k (queries are the last T_q of the keys)")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (np.float32, np.float64):
        raise ValueError("q, k, v must share one dtype, float32 or float64")


def _keys_along_rows(x):
    """x (B, H, T, D) as a C-contiguous (B, H, D, T') array whose first T
    columns are x transposed: the buffer x is a view of if it is a KV cache's
    (minigpt.layers.attention.KVPast: read in place), else a transposed copy.
    (A strided view itself would make numba compile loops with run-time
    strides, which it does not vectorise: 10x slower.)"""
    xT = x.swapaxes(2, 3)
    base = xT.base
    if (isinstance(base, np.ndarray) and base.ndim == 4 and base.flags.c_contiguous and base.dtype == x.dtype
            and base.shape[:3] == xT.shape[:3] and base.strides == xT.strides
            and base.ctypes.data == xT.ctypes.data):
        return base
    return np.ascontiguousarray(xT)


def _layout(H, D, packed):
    """lay: where the kernels find head h of batch b in their 3-D arrays.
    Head h's rows of q (and of out, dout, dq) are x[t, :, o:o + D] with
    t = b * lay[0] + h * lay[1] and o = h * lay[2]; its k rows start at column
    o + lay[3], its v rows at o + lay[4] (of k's and v's arrays, dk's and dv's).

    Heads apart, q (B, H, T, D) seen as (B H, T, D): t = b H + h, o = 0.
    Packed, GPT-2's qkv (B, T, 3 H D) (q, k, v side by side, heads side by
    side in each) and out (B, T, H D): t = b, o = h D, k at C + o, v at 2C + o.
    The kernels index whole C-contiguous arrays with these offsets (a strided
    view per head would make numba compile loops with run-time strides, which
    it does not vectorise)."""
    C = H * D
    return (1, 0, D, C, 2 * C) if packed else (H, 1, 0, 0, 0)


def _rows3(x):
    """(B, H, T, D) -> (B H, T, D), a view of the C-contiguous x."""
    return x.reshape(-1, *x.shape[2:])


def attention_forward(q, k, v):
    """out = softmax(q k^T / sqrt(D) + causal mask) v; cache (q, k, v, out)."""
    _check(q, k, v)
    B, H, T_q, D = q.shape
    q = np.ascontiguousarray(q)
    out = np.empty_like(q)  # (B, H, T_q, D)
    scale = q.dtype.type(1.0 / math.sqrt(D))
    if T_q == 1:  # a decoding step: keys and values read in place, transposed (see _decode_kernel)
        kT, vT = (_keys_along_rows(a) for a in (k, v))  # (B, H, D, T_k); no copy for a KVPast's views
        T_k = k.shape[2]
        if B * H * T_k * D < SMALL_WORK:  # one thread, without threads_for's switch (~30 us a call)
            _decode_kernel_serial(q, kT, vT, T_k, scale, out, 1)
        else:
            _decode_kernel(q, kT, vT, T_k, scale, out, numba.get_num_threads())
        return out, (q, k, v, out, scale)
    k, v = np.ascontiguousarray(k), np.ascontiguousarray(v)
    if T_q > 0:
        with threads_for(B * H * T_q * k.shape[2] * D):  # one decoding step is small work
            _forward_kernel(*map(_rows3, (q, k, v)), H, D, _layout(H, D, False), scale, _rows3(out),
                            numba.get_num_threads())
    return out, (q, k, v, out, scale)


def attention_backward(dout, cache):
    """Returns (dq, dk, dv), recomputing P from q and k."""
    q, k, v, out, scale = cache
    k, v = np.ascontiguousarray(k), np.ascontiguousarray(v)  # a decoding step's may be views of a cache
    dout = np.ascontiguousarray(dout, dtype=q.dtype)
    dq = np.empty_like(q)
    dk = np.empty_like(k)
    dv = np.empty_like(v)
    B, H, T_q, D = q.shape
    if T_q > 0:
        _backward_kernel(*map(_rows3, (q, k, v, out, dout)), H, D, _layout(H, D, False), scale,
                         *map(_rows3, (dq, dk, dv)), numba.get_num_threads())
    else:
        dk[:] = 0.0
        dv[:] = 0.0
    return dq, dk, dv


def attention_forward_qkv(qkv, n_head):
    """The same op on GPT-2's packed layout, heads neither split nor merged:
    qkv (B, T, 3C), C = H D, is [q | k | v] with H heads of D side by side in
    each; returns out (B, T, C) (heads side by side) and the cache (qkv, out, H, scale).
    Equals merge_heads(attention_forward(q, k, v)) for the split q, k, v
    (minigpt.layers.attention.split_heads); T_q = T_k = T."""
    B, T, C3 = qkv.shape
    if C3 % (3 * n_head) or n_head < 1:
        raise ValueError(f"qkv of width {C3} does not hold 3 x {n_head} heads")
    if qkv.dtype not in (np.float32, np.float64):
        raise ValueError("qkv must be float32 or float64")
    qkv = np.ascontiguousarray(qkv)
    D = C3 // (3 * n_head)
    out = np.empty((B, T, C3 // 3), dtype=qkv.dtype)  # (B, T, C)
    scale = qkv.dtype.type(1.0 / math.sqrt(D))
    if T > 0:
        with threads_for(B * n_head * T * T * D):
            _forward_kernel(qkv, qkv, qkv, n_head, D, _layout(n_head, D, True), scale, out,
                            numba.get_num_threads())
    return out, (qkv, out, n_head, scale)


def attention_backward_qkv(dout, cache):
    """dqkv (B, T, 3C) for attention_forward_qkv's out: dq, dk, dv written
    straight into their heads' columns, recomputing P from q and k."""
    qkv, out, H, scale = cache
    dout = np.ascontiguousarray(dout, dtype=qkv.dtype)  # (B, T, C)
    dqkv = np.empty_like(qkv)  # every element written: each head its own columns
    if qkv.shape[1] > 0:
        D = qkv.shape[2] // (3 * H)
        _backward_kernel(qkv, qkv, qkv, out, dout, H, D, _layout(H, D, True), scale, dqkv, dqkv, dqkv,
                         numba.get_num_threads())
    return dqkv


class AttentionKernel(tuple):
    """The op table's (forward, backward) pair for the attention core on
    (B, H, T, D) arrays, which also carries .on_qkv, the pair of the same op
    on GPT-2's packed layout (attention_forward_qkv, attention_backward_qkv):
    minigpt.layers.attention.multihead_attention_forward runs that one when
    its kernel has it, so that no copies split the heads out of qkv or merge
    them back: those NumPy copies ran on one core, ~8 ms of a ~110 ms base
    training step under cProfile on two threads. Measured with the code
    before, one process, alternating (Xeon family 6 model 207, load 1.9-2.4):
    base step 1.04x faster on one and on two threads, the small shape
    1.04x / 1.06x. It is a tuple, equal to the plain pair, so whatever
    unpacks or compares the pair sees no difference."""

    def __new__(cls, pair, on_qkv):
        obj = super().__new__(cls, pair)
        obj.on_qkv = on_qkv
        return obj


ATTENTION = AttentionKernel((attention_forward, attention_backward), (attention_forward_qkv, attention_backward_qkv))
