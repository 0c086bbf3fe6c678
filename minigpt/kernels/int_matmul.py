"""Integer matmul kernels in numba; int_matmul_ref.py defines what they compute.

    int8_matmul_int32(a_q, w_q)                    (M, K) int8 x (N, K) int8 -> (M, N) int32, exact
    int8_matmul(a_q, a_scale, w_q, w_scale)        same, rescaled: acc * a_scale[m] * w_scale[n]
    int8_weight_matmul(x, w_q, w_scale)            float x, int8 weights  -> x @ deq(w)^T
    int4_weight_matmul(x, packed, scales, group)   float x, packed int4 weights, group scales
    quantized_linear_int8(x, w_q, w_scale)         W8A8: x quantized per token on the fly, then int8 x int8

How they are made fast (read the machine code with fn.inspect_asm(sig); `minigpt bench`
times each against float32 BLAS):
- int8 x int8, a batch (M >= GEMM_MIN_ROWS) on a CPU with AVX-512 VNNI (USE_VNNI):
  register tiles (vnni.gemm_tile_u8s8). Each task packs a panel of 64 output
  channels so that one 64-byte load holds 4 consecutive k of 16 channels, then
  runs every 6 activation rows through it: 24 zmm accumulators, each weight
  load used 6 times, each activation broadcast 4 times, vpdpbusd (64
  multiply-adds) throughout and no horizontal sums. From float x
  (quantized_linear_int8) the per-token quantization writes the activations
  straight into the tiles' interleaved layout, and the rescaling is fused
  into the tile's store;
- int8 x int8, a few rows, or no VNNI: each task computes 4 output channels
  (s0..s3) as dot products of contiguous rows (weights are (N, K)), so every
  activation loaded is used 4 times; with VNNI the k loop is vpdpbusd
  (vnni.dot4_u8s8), else LLVM's sign-extend + vpmaddwd vectorisation;
- weight-only int8 / int4, float32, M >= F32_GEMM_MIN_ROWS rows on a CPU
  with AVX-512 or AVX2 + FMA (USE_F32_GEMM): a float32 GEMM of our own whose
  packing is the dequantization. Per panel of 64 output columns (F32_TILES
  picks vnni's tile module, AVX-512's or AVX2's, _F32_GEMMS the driver
  compiled for it) the weight is dequantized straight into the panel
  layout (int8: pack_int8_panel_f32, 4 bytes of 16 / 8 rows at once, by a
  gather on AVX-512 where gathers are not slowed by the Downfall
  mitigation, else by loads; int4: pack_int4_panel_f32, a vector of bytes a
  step), then every 6 rows of x run through it in register tiles
  (gemm_tile_f32: 6 x 64 in 24 zmm accumulators, or four 6 x 16 tiles in
  turn in 12 ymm, FMAs). The dequantized weight never goes to memory, which
  BLAS's route pays twice (written, then read back by BLAS's packing);
- weight-only, a batch otherwise (float64, or neither AVX-512 nor AVX2):
  the weight is dequantized (a vectorised pass) into a buffer reused across calls, then
  BLAS multiplies (kernels.matmul: split over the thread budget like the
  float linear's products): what the reference does, in two fast steps;
- weight-only int8, a few rows: dot products of x with each weight row,
  converted to x's dtype in the loop (numba would promote int8 x float32 to
  float64: _as_float). float32 rows (decoding) run _int8_row_kernel: four
  weight rows a task, bytes sign-extended and converted 16 at a time in
  explicit vectors with prefetching (vnni.int8_rows4_f32, USE_VECTORS):
  numba's loop ran at 8 lanes and streamed memory at 7.4 GB/s (12.7 now).
  Measured, one thread, one row of 3072 x 768 / 768 x 3072: 0.13 / 0.12 ->
  0.10 / 0.10 ms (2-5 rows: 10-40% faster), the 50257 x 768 head with the
  cache flushed 4.8 -> 2.2 ms, GPT-2-small int8 generation 1.51x -> 1.87-
  1.95x float32; under the AVX2 proxy (vnni's docstring) one row 0.16 /
  0.14 -> 0.13 / 0.12 ms. The conversions are the limit when the weight
  is in cache: 3 instructions (sign-extend, convert, FMA) per 16 weights;
- int4, a few rows: weights stay (in, out), so the inner loops run along the
  output columns: a byte row is unpacked once (both nibbles) and used by 4
  rows of x; each column keeps a running per-group sum that gets its scale at
  the group's end. (A dot-product order over k spends more on the per-group
  horizontal sums than on the 32 multiply-adds of a group: measured 15x slower.)
  One row (decoding) has its own kernel: four byte rows (eight k) per pass
  over the columns, nibbles converted without the - 8 (folded into one term
  per group), in explicit 16-wide float32 vectors with prefetching
  (vnni.nibble_rows4_f32, USE_VECTORS): numba's own loop over the same four
  rows ran at 8 lanes (0.15 ms for 768 x 3072 here) and, once numba was
  allowed 512-bit vectors (kernels/__init__.py), with gathers (1.5 ms);
  float64 rows take the general loops;
- tasks are spread over threads with prange, and small calls run on one
  thread (threads.threads_for).
Every path is checked against int_matmul_ref in tests/test_kernels_int_matmul.py
(the tests switch USE_VNNI, USE_VECTORS, USE_F32_GEMM, F32_TILES and the row thresholds to reach each).
"""
import os
import threading
import types as types_module

import numba
import numpy as np
from numba import int32, njit, prange, types
from numba.extending import overload

from . import int_matmul_ref as ref
from . import vnni
from .matmul import matmul, pieces_for, run_pieces
from .threads import SMALL_WORK, threads_for

# Float loops: let LLVM reorder the sums so the k loop vectorises.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
USE_VNNI = vnni.HAS_VNNI  # the tests switch it off to check the portable kernel too
ROWS = 4  # int4 task: rows of x sharing each unpacked weight
# ... times this many output columns: 256 for batches; for a decoding row,
# N / threads (at least 64), so each thread gets one long run of columns
TILE_BATCH, TILE_ROW = 256, 64
# int8 x int8 with VNNI: from this many rows, pack the weights into panels for the
# register-blocked tiles (vnni.gemm_tile_u8s8); below, the dot-product kernel (packing
# N K bytes per call costs about as much as 4-8 rows of products)
GEMM_MIN_ROWS = 16
USE_VECTORS = True  # decoding rows, float32: _int4_row_kernel, _int8_row_kernel (the tests switch it off too)
# Weight-only int8 / int4 from this many rows: dequantize the weight (K N conversions,
# about what the integer loops spend on 2-3 rows) into a reused buffer, then BLAS
DEQUANT_MIN_ROWS = 16
# ... and there, float32 on an AVX-512 or AVX2 + FMA CPU: the weight dequantized into the packed panels
# of a float32 GEMM of our own instead (gemm_tile_f32); the tests switch it off to reach BLAS's path
USE_F32_GEMM = vnni.F32_TILES is not None
# ... with which tiles (vnni.F32_AVX512 or F32_AVX2, _F32_GEMMS), chosen from the CPU's features
# (vnni.F32_TILES; MINIGPT_F32_TILES=avx2 forces the AVX2 tiles on an AVX-512 CPU, for measuring)
F32_TILES = vnni.F32_TILES or "avx512"
# ... which from 6 rows (one tile) beats the integer loops: measured, one thread, 768 x 3072 /
# 3072 x 768 / 768 x 768 weights, int8 and int4: at 4 rows 0.57-0.71 ms against 0.50-0.74 ms
# (mixed), at 6 rows 0.55-0.66 against 0.72-0.99 ms, at 12 rows 0.73-0.83 against 1.44-1.96 ms
# (AVX-512 tiles); the AVX2 tiles under the proxy (vnni's docstring): at 4 rows 0.74-0.90 ms
# against 0.56-0.76, at 6 rows 0.72-0.84 against 0.81-1.17, at 12 rows 1.07-1.20 against 1.79-2.07
F32_GEMM_MIN_ROWS = 6
f32t = vnni.F32_AVX512  # the tile module the GEMM driver's source reads (twins: _tiles_twin)
USE_GATHER = vnni.FAST_GATHER  # int8 panels read by vector gathers where they are not slowed (tests switch it)


def _l2_bytes():
    """This CPU's L2 cache per core in bytes, as Linux reports it (0 where it does not say)."""
    caches = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(caches)):
            with open(f"{caches}/{index}/level") as f:
                if f.read().strip() != "2":
                    continue
            with open(f"{caches}/{index}/size") as f:
                size = f.read().strip().upper()  # e.g. "2048K"
            scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
            return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return 0


# A panel (k block x 64 float32 columns) streams from L2 for each tile of rows: at most half of
# this CPU's L2 (1 MB where it is not known), so that x's rows and the output fit beside it
PANEL_BYTES = max(1 << 18, _l2_bytes() // 2 or 1 << 20)


@njit(cache=True, inline="always")
def _dot4_i8(a, w0, w1, w2, w3):
    s0 = int32(0)
    s1 = int32(0)
    s2 = int32(0)
    s3 = int32(0)
    for k in range(a.size):
        x = int32(a[k])
        s0 += x * int32(w0[k])
        s1 += x * int32(w1[k])
        s2 += x * int32(w2[k])
        s3 += x * int32(w3[k])
    return s0, s1, s2, s3


def _as_float(v, like):
    """v converted to the float type of `like` (numba would make uint8 * float32 a float64)."""
    return like.dtype.type(v)


@overload(_as_float, inline="always")
def _as_float_jit(v, like):
    to = np.float32 if like == types.float32 else np.float64
    return lambda v, like: to(v)


@njit(cache=True, inline="always")
def _lo(byte, like):
    """The low nibble of a uint8 as a float of like's type (kept 8-bit wide, so 16 lanes vectorise)."""
    return _as_float(np.uint8(byte & 15), like)


@njit(cache=True, inline="always")
def _hi(byte, like):
    """The high nibble, likewise."""
    return _as_float(np.uint8(byte >> 4), like)


@njit(cache=True, inline="always")
def _dot1_i8(a, w0):
    s = int32(0)
    for k in range(a.size):
        s += int32(a[k]) * int32(w0[k])
    return s


@njit(parallel=True, cache=True)
def _int8_kernel(a, w, out):
    """out[m, n] = sum_k a[m, k] w[n, k]; out's dtype decides int32 or float (see _rescale)."""
    M = a.shape[0]
    N = w.shape[0]
    for t in prange((N + 3) // 4):
        j = 4 * t
        if j + 4 <= N:
            w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
            for i in range(M):
                s0, s1, s2, s3 = _dot4_i8(a[i], w0, w1, w2, w3)
                out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = s0, s1, s2, s3
        else:
            for jj in range(j, N):  # the last N % 4 channels, one at a time
                for i in range(M):
                    out[i, jj] = _dot1_i8(a[i], w[jj])


@njit(parallel=True, cache=True)
def _int8_kernel_vnni(a_u, w, out):
    """As _int8_kernel, with a_u = a + 128 (uint8) and vpdpbusd (see vnni.py) for the k loop."""
    M, K = a_u.shape
    N = w.shape[0]
    k_vec = K - K % vnni.STEP  # the rest of k runs in the plain loop
    for t in prange((N + 3) // 4):
        j = 4 * t
        if j + 4 <= N:
            w0, w1, w2, w3 = w[j], w[j + 1], w[j + 2], w[j + 3]
            # sum_k a w = sum_k a_u w - 128 sum_k w: the row sums, once per task
            c0, c1, c2, c3 = _dot4_i8(np.ones(K, dtype=np.int8), w0, w1, w2, w3)
            for i in range(M):
                ai = a_u[i]
                s0, s1, s2, s3 = vnni.dot4_u8s8(ai, w, j, k_vec)
                for k in range(k_vec, K):
                    x = int32(ai[k])
                    s0 += x * int32(w0[k])
                    s1 += x * int32(w1[k])
                    s2 += x * int32(w2[k])
                    s3 += x * int32(w3[k])
                out[i, j] = s0 - 128 * c0
                out[i, j + 1] = s1 - 128 * c1
                out[i, j + 2] = s2 - 128 * c2
                out[i, j + 3] = s3 - 128 * c3
        else:
            for jj in range(j, N):  # the last N % 4 channels
                wj = w[jj]
                for i in range(M):
                    s = int32(0)
                    for k in range(K):
                        s += (int32(a_u[i, k]) - 128) * int32(wj[k])
                    out[i, jj] = s


@njit(cache=True, fastmath={"nnan", "nsz"})
def _absmax(v):
    """max |v[k]| (v not empty), with 16 running maxima so that the loop vectorises."""
    acc = np.zeros(16, dtype=v.dtype)
    k16 = v.size - v.size % 16
    for k in range(0, k16, 16):
        for u in range(16):
            a = abs(v[k + u])
            acc[u] = a if a > acc[u] else acc[u]
    m = abs(v[k16]) if k16 < v.size else acc[0]
    for u in range(16):
        m = acc[u] if acc[u] > m else m
    for k in range(k16, v.size):
        a = abs(v[k])
        m = a if a > m else m
    return m


@njit(parallel=True, cache=True)
def _quantize_rows_u8(x, a32, scale, qmax):
    """Dynamic per-row int8 quantization, fused with the packing of the VNNI tiles:
    scale[i] = max|x[i]| / qmax (1 if 0) and q[i, k] = clip(rint(x[i, k] / scale[i]), -qmax, qmax),
    exactly int_matmul_ref.quantize_per_row (the quotient is rounded to x's dtype first: `tmp`);
    q + 128 goes to byte k % 4 of a32[i // MR, k // 4, i % MR] (a32: _packed_activations'
    array seen as uint32, 4 bytes at a time), vnni.gemm_tile_u8s8's layout."""
    M, K = x.shape
    for i in prange(M):
        xi = x[i]
        scale[i] = _absmax(xi) / qmax  # the store rounds to x's dtype, as the reference's division does
        if not scale[i] > 0:
            scale[i] = 1
        s = scale[i]
        tmp = np.empty(K, dtype=x.dtype)
        for k in range(K):
            tmp[k] = xi[k] / s
        row = np.zeros(4 * a32.shape[1], dtype=np.uint8)  # the row padded to 4 K4 bytes
        for k in range(K):
            q = min(max(np.rint(tmp[k]), -qmax), qmax)
            row[k] = np.uint8(np.int32(q) + 128)
        words = row.view(np.uint32)
        ib, r = i // vnni.MR, i % vnni.MR
        for k4 in range(words.size):
            a32[ib, k4, r] = words[k4]


def _packed_activations(M, K):
    """Room for M rows of K uint8 in the tile layout (M and K rounded up to MR and 4; the padding
    rows are multiplied and thrown away, the padding k meet zero weights)."""
    return np.empty((-(-M // vnni.MR), -(-K // 4), vnni.MR, 4), dtype=np.uint8)


@njit(parallel=True, cache=True)
def _int8_gemm_vnni(a4, w, w32, out, a_scale, w_scale, scaled):
    """out[m, n] = sum_k (a_u[m, k] - 128) w[n, k], then (* a_scale[m]) * w_scale[n] if scaled.

    a4: a_u (uint8, a + 128) packed by _packed_activations' layout;
    w (N, 4 K4) int8 and w32 (N, K4) int32, the same weight rows viewed 4 bytes at a time. One task per panel of
    NR * 16 channels: pack it (vnni.gemm_tile_u8s8's layout), then run every MR rows through it.
    """
    M, N = out.shape
    K4 = w32.shape[1]
    NB = vnni.NR * 16
    for p in prange((N + NB - 1) // NB):
        j0 = p * NB
        nb = min(NB, N - j0)
        panel = np.zeros(K4 * NB, dtype=np.int32)  # channels past N stay 0
        colsum = np.zeros(NB, dtype=np.int32)  # 128 sum_k w[n, k]: what a_u's +128 adds
        for c in range(nb):
            wr = w32[j0 + c]
            for k in range(K4):
                panel[k * NB + c] = wr[k]
            wb = w[j0 + c]
            cs = int32(0)
            for k in range(4 * K4):
                cs += int32(wb[k])
            colsum[c] = cs
        for c in range(nb):
            colsum[c] *= 128
        tile = np.empty((vnni.MR, NB), dtype=np.int32)
        ws = w_scale[j0:j0 + nb] if scaled else w_scale[:0]
        for i0 in range(0, M, vnni.MR):
            vnni.gemm_tile_u8s8(a4, i0 * K4 * 4, panel, K4, tile)
            for r in range(min(vnni.MR, M - i0)):
                orow = out[i0 + r, j0:j0 + nb]
                trow = tile[r]
                for c in range(nb):
                    orow[c] = trow[c] - colsum[c]  # to out's dtype: exact, or rounded as astype rounds
                if scaled:  # in out's dtype and the reference's order
                    s = a_scale[i0 + r]
                    for c in range(nb):
                        orow[c] = (orow[c] * s) * ws[c]


def _use_gemm(M):
    """The packed VNNI tiles for a batch; a few rows go through the dot products (no packing to pay)."""
    return USE_VNNI and M >= GEMM_MIN_ROWS


def _weight_words(w_q):
    """(w, w32): the int8 rows padded with zeros to a multiple of 4 bytes, and the same bytes as int32."""
    pad = -w_q.shape[1] % 4
    if pad:
        w_q = np.pad(w_q, ((0, 0), (0, pad)))
    return w_q, w_q.view(np.int32)


def _pack_int8_rows(a_q):
    """a_q (M, K) int8 -> a + 128 in the tile layout of _packed_activations."""
    M, K = a_q.shape
    a4 = _packed_activations(M, K)
    Mb, K4 = a4.shape[:2]
    u = np.zeros((Mb * vnni.MR, 4 * K4), dtype=np.uint8)
    u[:M, :K] = a_q.view(np.uint8) ^ np.uint8(0x80)  # a + 128 as uint8
    a4[...] = u.reshape(Mb, vnni.MR, K4, 4).transpose(0, 2, 1, 3)
    return a4


def _int32_products(a_q, w_q, out, a_scale=None, w_scale=None):
    """out = a_q @ w_q^T in int32 (or exactly converted to out's float dtype), then
    (* a_scale[m]) * w_scale[n] if the scales are given; VNNI when available."""
    if _use_gemm(a_q.shape[0]):
        scaled = a_scale is not None
        one = np.ones(1, dtype=out.dtype)
        _int8_gemm_vnni(_pack_int8_rows(a_q), *_weight_words(w_q), out, a_scale if scaled else one,
                        w_scale if scaled else one, scaled)
        return
    if USE_VNNI:
        _int8_kernel_vnni(a_q.view(np.uint8) ^ np.uint8(0x80), w_q, out)  # a + 128 as uint8
    else:
        _int8_kernel(a_q, w_q, out)
    if a_scale is not None:
        _rescale(out, a_scale, w_scale)


@njit(parallel=True, cache=True)
def _rescale(out, a_scale, w_scale):
    """out[m, n] = (out[m, n] * a_scale[m]) * w_scale[n], in out's dtype as the reference does."""
    for i in prange(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = (out[i, j] * a_scale[i]) * w_scale[j]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _int8_weight_kernel(x, w, w_scale, zero, out):
    """out[m, n] = w_scale[n] * sum_k x[m, k] w[n, k]  (float accumulation)."""
    M = x.shape[0]
    N, K = w.shape
    for t in prange((N + 3) // 4):
        j = 4 * t
        for jj in range(j, min(j + 4, N)):
            wj = w[jj]
            for i in range(M):
                xi = x[i]
                s = zero
                for k in range(K):
                    s += xi[k] * _as_float(wj[k], zero)  # in x's dtype (float32 x int8 would be float64)
                out[i, jj] = s * w_scale[jj]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _int8_row_kernel(x, w, w_scale, out):
    """A few float32 rows (decoding): out[m, n] = w_scale[n] * sum_k x[m, k] w[n, k], four weight rows
    a task: their first K - K % 64 k in 16-wide vectors (vnni.int8_rows4_f32, which prefetches the
    next task's rows), the rest and the last N % 4 rows in numba loops. The four rows (4 K bytes)
    stay in L1 from one row of x to the next."""
    M, K = x.shape
    N = w.shape[0]
    k_vec = K - K % vnni.I8_STEP
    for t in prange(N // 4):
        j = 4 * t
        for i in range(M):
            s0, s1, s2, s3 = vnni.int8_rows4_f32(x, i, w, j, k_vec)
            for k in range(k_vec, K):
                xk = x[i, k]
                s0 += xk * _as_float(w[j, k], xk)
                s1 += xk * _as_float(w[j + 1, k], xk)
                s2 += xk * _as_float(w[j + 2, k], xk)
                s3 += xk * _as_float(w[j + 3, k], xk)
            out[i, j], out[i, j + 1] = s0 * w_scale[j], s1 * w_scale[j + 1]
            out[i, j + 2], out[i, j + 3] = s2 * w_scale[j + 2], s3 * w_scale[j + 3]
    for jj in range(N - N % 4, N):
        for i in range(M):
            s = _as_float(0, w_scale[jj])  # zero in x's dtype
            for k in range(K):
                s += x[i, k] * _as_float(w[jj, k], s)
            out[i, jj] = s * w_scale[jj]

@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _int4_weight_kernel(x, packed, scales, group, zero, out, tile):
    """out[m, n] = sum_g scales[g, n] * sum_{k in group g} x[m, k] q[k, n], q unpacked on the fly.

    One task = ROWS rows of x times `tile` output columns. Per byte row of the
    group, both nibbles are unpacked once into float buffers (lo, hi) and
    used by all ROWS rows; the per-group sums (part) get their scale when
    the group ends. Every inner loop runs along n, 0-based and contiguous.
    """
    M, K = x.shape
    N = packed.shape[1]
    half = group // 2
    n_row_blocks = (M + ROWS - 1) // ROWS
    n_col_tiles = (N + tile - 1) // tile
    for task in prange(n_row_blocks * n_col_tiles):
        i0 = (task // n_col_tiles) * ROWS
        j0 = (task % n_col_tiles) * tile
        nr = min(ROWS, M - i0)
        nt = min(tile, N - j0)
        lo = np.empty(nt, dtype=x.dtype)  # unpacked low nibbles of one byte row
        hi = np.empty(nt, dtype=x.dtype)
        part = np.empty((ROWS, nt), dtype=x.dtype)  # sums within the current group
        acc = np.zeros((ROWS, nt), dtype=x.dtype)  # scaled sums over the groups so far
        for g in range(K // group):
            part[:] = zero
            for t in range(half):
                prow = packed[g * half + t, j0:j0 + nt]  # (nt,) bytes
                if nr == 1:  # decoding one token: unpack and multiply in one pass
                    x_lo = x[i0, g * group + t]
                    x_hi = x[i0, g * group + half + t]
                    pr = part[0]
                    for j in range(nt):
                        byte = int32(prow[j])
                        pr[j] += x_lo * np.int8((byte & 15) - 8) + x_hi * np.int8((byte >> 4) - 8)
                    continue
                for j in range(nt):
                    byte = int32(prow[j])
                    lo[j] = (byte & 15) - 8  # q[g*group + t, j0 + j]
                    hi[j] = (byte >> 4) - 8  # q[g*group + half + t, j0 + j]
                for r in range(nr):
                    x_lo = x[i0 + r, g * group + t]
                    x_hi = x[i0 + r, g * group + half + t]
                    pr = part[r]
                    for j in range(nt):
                        pr[j] += x_lo * lo[j] + x_hi * hi[j]
            srow = scales[g, j0:j0 + nt]
            for r in range(nr):
                ar = acc[r]
                pr = part[r]
                for j in range(nt):
                    ar[j] += srow[j] * pr[j]
        for r in range(nr):
            for j in range(nt):
                out[i0 + r, j0 + j] = acc[r, j]


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _int4_row_kernel(x, packed, scales, group, out, tile):
    """One float32 row (decoding): out[n] = sum_g scales[g, n] (sum_{k in g} x[k] u[k, n] - 8 sum_{k in g} x[k]),
    u = q + 8 the stored nibble, so the nibbles go to float without the - 8 (it is one
    multiply-add per group and column instead). Four byte rows (eight k) are unpacked and
    multiplied per pass over the columns, so each partial sum is loaded and stored once
    per eight multiply-adds: the first nt - nt % COLS columns of a task in explicit 16-wide
    vectors (vnni.nibble_rows4_f32, float32 only), the rest in a numba loop. One task =
    `tile` columns; every loop runs along n.
    """
    K = x.size
    N = packed.shape[1]
    half = group // 2
    for task in prange((N + tile - 1) // tile):
        j0 = task * tile
        nt = min(tile, N - j0)
        part = np.empty(nt, dtype=x.dtype)  # sum_{k in g} x[k] u[k, n], this group
        xs8 = np.empty(8, dtype=x.dtype)  # the 8 x of a pass, for vnni.nibble_rows4_f32
        acc = np.zeros(nt, dtype=x.dtype)  # scaled sums of the groups so far
        for g in range(K // group):
            k0, r0 = g * group, g * half
            xs = x[k0]
            for k in range(k0 + 1, k0 + group):
                xs += x[k]
            part[:] = 0
            t = 0
            while t + 4 <= half:
                xs8[0], xs8[1], xs8[2], xs8[3] = x[k0 + t], x[k0 + t + 1], x[k0 + t + 2], x[k0 + t + 3]
                xs8[4], xs8[5] = x[k0 + half + t], x[k0 + half + t + 1]
                xs8[6], xs8[7] = x[k0 + half + t + 2], x[k0 + half + t + 3]
                j_vec = nt - nt % vnni.COLS
                vnni.nibble_rows4_f32(part, packed, r0 + t, j0, j_vec, xs8)
                p0 = packed[r0 + t, j0:j0 + nt]
                p1 = packed[r0 + t + 1, j0:j0 + nt]
                p2 = packed[r0 + t + 2, j0:j0 + nt]
                p3 = packed[r0 + t + 3, j0:j0 + nt]
                a0, a1, a2, a3 = x[k0 + t], x[k0 + t + 1], x[k0 + t + 2], x[k0 + t + 3]
                b0, b1, b2, b3 = x[k0 + half + t], x[k0 + half + t + 1], x[k0 + half + t + 2], x[k0 + half + t + 3]
                for j in range(j_vec, nt):
                    part[j] += ((a0 * _lo(p0[j], a0) + b0 * _hi(p0[j], a0))
                                + (a1 * _lo(p1[j], a0) + b1 * _hi(p1[j], a0))) \
                        + ((a2 * _lo(p2[j], a0) + b2 * _hi(p2[j], a0)) + (a3 * _lo(p3[j], a0) + b3 * _hi(p3[j], a0)))
                t += 4
            while t < half:  # group / 2 not a multiple of 4
                p0 = packed[r0 + t, j0:j0 + nt]
                a0, b0 = x[k0 + t], x[k0 + half + t]
                for j in range(nt):
                    part[j] += a0 * _lo(p0[j], a0) + b0 * _hi(p0[j], a0)
                t += 1
            srow = scales[g, j0:j0 + nt]
            off = _as_float(8, xs) * xs  # (a plain 8 * xs would be float64)
            for j in range(nt):
                acc[j] += srow[j] * (part[j] - off)
        out[j0:j0 + nt] = acc


@njit(parallel=True, cache=True)
def _dequantize_int8_rows(w, w_scale, out):
    """out[n, k] = w[n, k] * w_scale[n] in out's dtype: int_matmul_ref.dequantize_int8, value for value."""
    N, K = w.shape
    for j in prange(N):
        s = w_scale[j]
        wj, oj = w[j], out[j]
        for k in range(K):
            oj[k] = wj[k]  # exact in any float dtype; then the product in that dtype
            oj[k] = oj[k] * s


@njit(parallel=True, cache=True)
def _dequantize_int4_cols(packed, scales, group, out):
    """out (K, N) = int_matmul_ref.dequantize_int4(packed, scales, group), value for value:
    row g*group + t from the low nibbles of byte row g*group/2 + t, row g*group + group/2 + t
    from the high ones, each times its group's scale."""
    half = group // 2
    for r in prange(packed.shape[0]):
        g, t = r // half, r % half
        prow, srow = packed[r], scales[g]
        lo, hi = out[g * group + t], out[g * group + half + t]
        for j in range(prow.size):
            byte = int32(prow[j])
            lo[j] = (byte & 15) - 8
            hi[j] = (byte >> 4) - 8
            lo[j] = lo[j] * srow[j]
            hi[j] = hi[j] * srow[j]


@njit(cache=True, inline="always")
def _panel_tiles(x, x_tail, panel, k0, kc, out, cbuf, j0, nb, accumulate):
    """out[:, j0:j0 + nb] (+)= x[:, k0:k0 + kc] @ panel[:kc, :nb], FMR rows x TW columns at a time
    (f32t.gemm_tile_f32; the panel's tiles past nb, all zeros, are skipped).

    Rows of a full tile and a full panel go straight to out; the rest (the last M % FMR rows,
    copied into x_tail (FMR, K) with zero rows after them and run in a tile of 2, 4 or FMR rows,
    and every row when nb < the panel's width) to cbuf (FMR * ceil(M / FMR), panel width), at
    the same rows, for _panel_store."""
    M, K = x.shape
    TW = f32t.TW
    m_full = M - M % f32t.MR
    for i0 in range(0, m_full, f32t.MR):
        for j in range(0, nb, TW):  # the panel's tiles side by side, this tile's x rows still in L1
            if nb == cbuf.shape[1]:
                f32t.gemm_tile_f32(x, i0 * K + k0, K, panel[j:], kc, out[i0:i0 + f32t.MR, j0 + j:j0 + j + TW],
                                   accumulate)
            else:
                f32t.gemm_tile_f32(x, i0 * K + k0, K, panel[j:], kc, cbuf[i0:i0 + f32t.MR, j:j + TW], accumulate)
    rest = M - m_full  # in a tile of 2, 4 or MR rows (x_tail's first rows)
    for j in range(0, nb, TW):
        if 0 < rest <= 2:
            f32t.gemm_tile_f32_2(x_tail, k0, K, panel[j:], kc, cbuf[m_full:m_full + 2, j:j + TW], accumulate)
        elif 2 < rest <= 4:
            f32t.gemm_tile_f32_4(x_tail, k0, K, panel[j:], kc, cbuf[m_full:m_full + 4, j:j + TW], accumulate)
        elif rest > 4:
            f32t.gemm_tile_f32(x_tail, k0, K, panel[j:], kc, cbuf[m_full:m_full + f32t.MR, j:j + TW], accumulate)


@njit(cache=True, inline="always")
def _panel_store(out, cbuf, j0, nb):
    """The parts of out[:, j0:j0 + nb] that _panel_tiles left in cbuf."""
    M = out.shape[0]
    m_first = 0 if nb < cbuf.shape[1] else M - M % f32t.MR
    for i in range(m_first, M):
        out[i, j0:j0 + nb] = cbuf[i, :nb]


@njit(cache=True, inline="always")
def _gemm_buffers(M, K_rows):
    """A panel of K_rows x 64 floats and the output rows' spill (_panel_tiles' cbuf), for one
    piece of a product (no two threads share them)."""
    NB = f32t.NB
    # the panel on a 64-byte boundary, which numba's allocator does not promise: each of the
    # tile's 64-byte loads is then one cache line, not two
    room = np.empty(K_rows * NB + 16, dtype=np.float32)
    skip = (-(room.ctypes.data // 4)) % 16
    return (room[skip:skip + K_rows * NB],
            np.empty(((M + f32t.MR - 1) // f32t.MR * f32t.MR, NB), dtype=np.float32))


@njit(cache=True, nogil=True)
def _int8_gemm_f32(x, x_tail, w32, w_scale, kc, out, gather, p_start, p_end):
    """out = x @ (w * w_scale[:, None])^T, float32, the weight dequantized into each panel as it is
    packed (f32t.pack_int8_panel_f32) and the product in register tiles (f32t.gemm_tile_f32).

    w32 (N, K4) int32: the int8 rows (N, 4 K4 >= K, zero-padded) 4 bytes at a time; kc: the k
    block (a multiple of 4), so that a panel (kc x 64 floats) stays in L2; gather: how the
    panel's bytes are read (f32t.pack_int8_panel_f32). Only the panels of 64
    columns p_start <= p < p_end: a piece of _f32_gemm_pieces, run without the GIL."""
    M, K = x.shape
    N, K4 = w32.shape
    NB = f32t.NB
    panel, cbuf = _gemm_buffers(M, kc + 4)  # room for the last block's k rounded up to 4
    offsets = np.empty(NB, dtype=np.int64)
    sc = np.empty(NB, dtype=np.float32)
    for p in range(p_start, p_end):
        j0 = p * NB
        nb = min(NB, N - j0)
        for c in range(NB):  # columns past N: the last row again, times 0
            offsets[c] = min(j0 + c, N - 1) * K4
            sc[c] = w_scale[j0 + c] if c < nb else 0
        for k0 in range(0, K, kc):
            kk = min(kc, K - k0)
            f32t.pack_int8_panel_f32(w32, offsets, k0 // 4, (kk + 3) // 4, sc, panel, gather)
            _panel_tiles(x, x_tail, panel, k0, kk, out, cbuf, j0, nb, k0 > 0)
        _panel_store(out, cbuf, j0, nb)


@njit(cache=True, inline="always")
def _pack_int4_columns(packed, scales, group, k0, kk, j0, nb, panel):
    """panel[k - k0, c] = the dequantized int4 weight (k, j0 + c), k0 <= k < k0 + kk, c < nb: as
    f32t.pack_int4_panel_f32, a column at a time (for a last panel narrower than NB columns)."""
    NB = f32t.NB
    half = group // 2
    eight = np.float32(8)
    for r in range(k0 // 2, (k0 + kk) // 2):  # byte rows: k = g group + t and + half
        g, t = r // half, r % half
        prow, srow = packed[r, j0:j0 + nb], scales[g, j0:j0 + nb]
        lo = panel[(g * group + t - k0) * NB:(g * group + t - k0) * NB + nb]
        hi = panel[(g * group + half + t - k0) * NB:(g * group + half + t - k0) * NB + nb]
        for c in range(nb):  # the nibble - 8 is exact in float32: the reference's float(q) * scale
            lo[c] = (_lo(prow[c], eight) - eight) * srow[c]  # (8-bit wide until the float: 16 lanes)
            hi[c] = (_hi(prow[c], eight) - eight) * srow[c]


@njit(cache=True, nogil=True)
def _int4_gemm_f32(x, x_tail, packed, scales, group, kc, out, p_start, p_end):
    """out = x @ dequantize_int4(packed, scales, group), float32, as _int8_gemm_f32: the nibbles
    dequantized into each panel (value for value as int_matmul_ref does), then register tiles.
    kc: the k block, a multiple of group."""
    M, K = x.shape
    N = packed.shape[1]
    NB = f32t.NB
    half = group // 2
    panel, cbuf = _gemm_buffers(M, kc)
    for p in range(p_start, p_end):
        j0 = p * NB
        nb = min(NB, N - j0)
        if nb < NB:  # columns past N: 0 (the last panel; those before it filled every column)
            panel[:] = 0
        for k0 in range(0, K, kc):
            kk = min(kc, K - k0)
            if nb == NB:  # a full panel: a vector of bytes a step (f32t.pack_int4_panel_f32)
                f32t.pack_int4_panel_f32(packed, scales, k0 // group, (k0 + kk) // group, half, j0, panel)
            else:  # the last panel: its nb columns (the intrinsic would read past N)
                _pack_int4_columns(packed, scales, group, k0, kk, j0, nb, panel)
            _panel_tiles(x, x_tail, panel, k0, kk, out, cbuf, j0, nb, k0 > 0)
        _panel_store(out, cbuf, j0, nb)


def _f32_gemm_pieces(kernel, tiles, args, N, K):
    """kernel(*args, p_start, p_end) over all panels of tiles.NB columns, split into runs of panels over
    the thread budget as BLAS's products are (kernels.matmul: Python threads, each piece taken by
    whichever thread is free, the caller working too; matmul.pieces_for's count, one piece a
    thread). Not numba's prange: on a shared machine a worker that waits for a core holds a
    prange loop up until it has run its share (measured here with 2 threads and the other core
    busy: 3.5 ms instead of 0.6 ms at 64 x 768 x 768), while a piece nobody has started yet is
    taken by the caller."""
    n_panels = -(-N // tiles.NB)
    n_threads, n = pieces_for(args[0].shape[0], K, N)
    n = min(n, n_panels)
    if n == 1:
        kernel(*args, 0, n_panels)
        return
    run_pieces([(n_panels * i // n, n_panels * (i + 1) // n) for i in range(n)],
               lambda job: kernel(*args, *job), n_threads)


def _x_tail(x, tiles):
    """The last M % MR rows of x, then zero rows, as one (MR, K) tile for tiles.gemm_tile_f32."""
    tail = np.zeros((tiles.MR, x.shape[1]), dtype=x.dtype)
    m_full = x.shape[0] - x.shape[0] % tiles.MR
    tail[:x.shape[0] - m_full] = x[m_full:]
    return tail


def _k_block(K, multiple, tiles):
    """The k block of the float32 GEMM: all of K if its panel fits PANEL_BYTES, else the largest
    multiple of `multiple` that does (at least one multiple)."""
    fit = PANEL_BYTES // (4 * tiles.NB)
    if K <= fit:
        return K
    return max(multiple, fit // multiple * multiple)


def _use_f32_gemm(x, N):
    """The fused dequantizing GEMM for a float32 batch on an AVX-512 or AVX2 CPU (else dequantize + BLAS,
    which also takes the empty products: K = 0 must give zeros, and the GEMM would write nothing)."""
    return USE_F32_GEMM and x.dtype == np.float32 and x.shape[1] > 0 and N > 0


def _as_rows(x, dtype=None):
    x = np.ascontiguousarray(x, dtype=dtype)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {x.shape}")
    return x


def _check_k(a, w, k_of_w):
    if a.shape[1] != k_of_w:
        raise ValueError(f"inner sizes differ: x has K={a.shape[1]}, weights have K={k_of_w}")


def int8_matmul_int32(a_q, w_q):
    """(M, K) int8 x (N, K) int8 -> (M, N) int32, exactly int8_matmul_int32_ref."""
    a_q, w_q = _as_rows(a_q, np.int8), _as_rows(w_q, np.int8)
    _check_k(a_q, w_q, w_q.shape[1])
    out = np.empty((a_q.shape[0], w_q.shape[0]), dtype=np.int32)
    with threads_for(out.size * a_q.shape[1]):
        _int32_products(a_q, w_q, out)
    return out


def int8_matmul(a_q, a_scale, w_q, w_scale):
    """int8 x int8 with int32 accumulation, rescaled per row and per channel (a_scale's dtype)."""
    a_q, w_q = _as_rows(a_q, np.int8), _as_rows(w_q, np.int8)
    _check_k(a_q, w_q, w_q.shape[1])
    a_scale = np.ascontiguousarray(a_scale)
    w_scale = np.ascontiguousarray(w_scale, dtype=a_scale.dtype)
    # The float output holds the int32 sums exactly while |acc| < 2^24 (float32),
    # i.e. K < 1040 at full int8 range; beyond that it rounds as acc.astype(float32) does.
    out = np.empty((a_q.shape[0], w_q.shape[0]), dtype=a_scale.dtype)
    with threads_for(out.size * a_q.shape[1]):
        _int32_products(a_q, w_q, out, a_scale, w_scale)
    return out


def _serial_twin(kernel, name):
    """The same Python function compiled without parallel=True (prange runs as range), under its
    own name: numba's cache files are named after the function, and flags are not in the key."""
    f = kernel.py_func
    twin = types_module.FunctionType(f.__code__, f.__globals__, name, f.__defaults__, f.__closure__)
    twin.__qualname__ = name
    return njit(cache=True, fastmath=FASTMATH)(twin)


# A decoding call below SMALL_WORK runs on the calling thread anyway: its serial twin skips the
# parallel launch and threads_for's thread switch (30 us with 2 threads, more than the product).
_int8_weight_kernel_serial = _serial_twin(_int8_weight_kernel, "_int8_weight_kernel_serial")
_int8_row_kernel_serial = _serial_twin(_int8_row_kernel, "_int8_row_kernel_serial")
_int4_row_kernel_serial = _serial_twin(_int4_row_kernel, "_int4_row_kernel_serial")



def _tiles_twin(kernels, tiles, suffix):
    """The njit functions `kernels` (names, callers after the functions they call) compiled again
    with f32t = tiles: the weight-only GEMM's driver for another tile shape, from the same source
    (numba's cache files are named after the function, so each twin has its own name)."""
    g = dict(globals(), f32t=tiles)
    for name in kernels:
        f = globals()[name]
        twin = types_module.FunctionType(f.py_func.__code__, g, f"{name}_{suffix}", f.py_func.__defaults__,
                                         f.py_func.__closure__)
        twin.__qualname__ = f"{name}_{suffix}"
        options = {k: v for k, v in f.targetoptions.items() if k != "nopython"}  # (njit's own)
        g[name] = njit(cache=True, **options)(twin)
    return g


_avx2 = _tiles_twin(["_panel_tiles", "_panel_store", "_gemm_buffers", "_pack_int4_columns", "_int8_gemm_f32",
                     "_int4_gemm_f32"],
                    vnni.F32_AVX2, "avx2")
# F32_TILES -> (int8 GEMM, int4 GEMM, tile module). The AVX2 one reads int8 panels by loads, not
# gathers: AVX2 CPUs' gathers are microcoded (AMD Zen 2/3) or under the Downfall mitigation
# (Intel Skylake..Tiger Lake clients); measured too few of them to tell them apart by CPU.
_F32_GEMMS = {"avx512": (_int8_gemm_f32, _int4_gemm_f32, vnni.F32_AVX512),
              "avx2": (_avx2["_int8_gemm_f32"], _avx2["_int4_gemm_f32"], vnni.F32_AVX2)}

_scratch = threading.local()  # per Python thread: concurrent calls must not share a buffer


def _scratch_buffer(shape, dtype):
    """A (shape) array of dtype, reused from call to call (grown when too small): the
    dequantized weight of a batch product, without a fresh 10 MB allocation each time."""
    size = int(np.prod(shape))
    buf = getattr(_scratch, str(np.dtype(dtype)), None)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=dtype)
        setattr(_scratch, str(np.dtype(dtype)), buf)
    return buf[:size].reshape(shape)


def int8_weight_matmul(x, w_q, w_scale):
    """Float activations (M, K) times int8 weights (N, K) with per-channel scales -> (M, N).

    A float32 batch on an AVX-512 or AVX2 CPU (M >= F32_GEMM_MIN_ROWS) runs the float32 GEMM that
    dequantizes into its panels; otherwise a batch (M >= DEQUANT_MIN_ROWS) dequantizes the weight
    into a reused buffer and lets BLAS multiply (the reference's own two steps); fewer rows run
    the integer loops.
    """
    x, w_q = _as_rows(x), _as_rows(w_q, np.int8)
    _check_k(x, w_q, w_q.shape[1])
    w_scale = np.ascontiguousarray(w_scale, dtype=x.dtype)
    if x.shape[0] >= F32_GEMM_MIN_ROWS and _use_f32_gemm(x, w_q.shape[0]):
        out = np.empty((x.shape[0], w_q.shape[0]), dtype=x.dtype)
        int8_gemm, _, tiles = _F32_GEMMS[F32_TILES]
        gather = USE_GATHER and tiles is vnni.F32_AVX512  # AVX2 CPUs: loads (see _F32_GEMMS)
        args = (x, _x_tail(x, tiles), _weight_words(w_q)[1], w_scale, _k_block(x.shape[1], 4, tiles), out, gather)
        _f32_gemm_pieces(int8_gemm, tiles, args, out.shape[1], x.shape[1])
        return out
    if x.shape[0] >= DEQUANT_MIN_ROWS:
        w_hat = _scratch_buffer(w_q.shape, x.dtype)  # (N, K)
        with threads_for(4 * w_q.size):  # a few operations a weight
            _dequantize_int8_rows(w_q, w_scale, w_hat)
        return matmul(x, w_hat.T)  # (M, N): BLAS, split over the thread budget as the float linear's
    out = np.empty((x.shape[0], w_q.shape[0]), dtype=x.dtype)
    if USE_VECTORS and x.dtype == np.float32:  # decoding rows: 16-wide vectors (float64: the loops below)
        kernel, serial, args = _int8_row_kernel, _int8_row_kernel_serial, (x, w_q, w_scale, out)
    else:
        kernel, serial = _int8_weight_kernel, _int8_weight_kernel_serial
        args = (x, w_q, w_scale, x.dtype.type(0), out)
    if out.size * x.shape[1] < SMALL_WORK:  # one thread anyway: the serial twin skips prange's launch
        serial(*args)
        return out
    with threads_for(out.size * x.shape[1]):
        kernel(*args)
    return out


def int4_weight_matmul(x, packed, scales, group):
    """Float activations (M, K) times packed int4 weights (K/2, N) with (K/group, N) scales -> (M, N)."""
    x, packed = _as_rows(x), _as_rows(packed, np.uint8)
    _check_k(x, packed, 2 * packed.shape[0])
    if group % 2 or x.shape[1] % group or scales.shape != (x.shape[1] // group, packed.shape[1]):
        raise ValueError(f"scales {scales.shape} do not fit K={x.shape[1]} with group={group}")
    scales = np.ascontiguousarray(scales, dtype=x.dtype)
    if x.shape[0] >= F32_GEMM_MIN_ROWS and _use_f32_gemm(x, packed.shape[1]):  # a batch: into the GEMM's panels
        out = np.empty((x.shape[0], packed.shape[1]), dtype=x.dtype)
        _, int4_gemm, tiles = _F32_GEMMS[F32_TILES]
        args = (x, _x_tail(x, tiles), packed, scales, group, _k_block(x.shape[1], group, tiles), out)
        _f32_gemm_pieces(int4_gemm, tiles, args, out.shape[1], x.shape[1])
        return out
    if x.shape[0] >= DEQUANT_MIN_ROWS:  # a batch: dequantize, then BLAS (as int8_weight_matmul)
        w_hat = _scratch_buffer((x.shape[1], packed.shape[1]), x.dtype)  # (K, N)
        with threads_for(4 * w_hat.size):
            _dequantize_int4_cols(packed, scales, group, w_hat)
        return matmul(x, w_hat)  # (M, N)
    out = np.empty((x.shape[0], packed.shape[1]), dtype=x.dtype)
    # decoding: one long column run per thread (each byte row's slice costs a reference count);
    # the thread count numba started with (numba.get_num_threads() costs 3 us)
    tile = max(TILE_ROW, -(-packed.shape[1] // (16 * numba.config.NUMBA_NUM_THREADS)) * 16)
    if x.shape[0] == 1 and USE_VECTORS and x.dtype == np.float32:  # decoding (float64: the loops below)
        # the vector kernel costs about what int8's does a multiply-add (measured), so it counts
        # as int8's; below SMALL_WORK its serial twin runs without threads_for's switch
        if out.size * x.shape[1] < SMALL_WORK:
            _int4_row_kernel_serial(x[0], packed, scales, group, out[0], tile)
            return out
        with threads_for(out.size * x.shape[1]):
            _int4_row_kernel(x[0], packed, scales, group, out[0], tile)
        return out
    with threads_for(4 * out.size * x.shape[1]):  # unpacking makes each multiply-add ~4x dearer
        _int4_weight_kernel(x, packed, scales, group, x.dtype.type(0), out, TILE_BATCH if x.shape[0] > ROWS else tile)
    return out


def quantized_linear_int8(x, w_q, w_scale):
    """y = x @ W with W quantized per channel AND x quantized per row on the fly (product 1):
    exactly w8a8_matmul_ref. For a batch on a VNNI CPU the quantization writes the tiles directly."""
    x = _as_rows(x)
    if not _use_gemm(x.shape[0]) or x.dtype.kind != "f":
        a_q, a_scale = ref.quantize_per_row(x)
        return int8_matmul(a_q, a_scale, w_q, w_scale)
    w_q = _as_rows(w_q, np.int8)
    _check_k(x, w_q, w_q.shape[1])
    M, K = x.shape
    out = np.empty((M, w_q.shape[0]), dtype=x.dtype)
    a4, a_scale = _packed_activations(M, K), np.empty(M, dtype=x.dtype)
    with threads_for(out.size * K):
        _quantize_rows_u8(x, a4.view(np.uint32)[..., 0], a_scale, x.dtype.type(127))
        _int8_gemm_vnni(a4, *_weight_words(w_q), out, a_scale, np.ascontiguousarray(w_scale, dtype=x.dtype), True)
    return out
