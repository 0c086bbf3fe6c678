"""Integer matmul: quantizers, int4 packing, and the NumPy references that
define the three quantized products. The numba kernels in int_matmul.py
must reproduce these (int32 results exactly, float results to rounding).

The quantizers here are the one quantizer of quantizer.py, symmetric
(zero point 0) with b bits, qmax = 2^(b-1) - 1:
    scale = max|x| / qmax   (1 if x is all zero, so nothing divides by 0)
    q = clip(round(x / scale), -qmax, qmax),   x ~ q * scale
-128 is never produced (symmetric range), but the kernels accept it.

Weights are stored transposed, w_q (N, K) for a layer y = x @ W with W (K, N):
row j of w_q is output channel j, so every dot product walks two contiguous
rows (that is what lets the int8 loop vectorise).

The three products, x (M, K) float, W (K, N):
1. int8 x int8:   acc = a_q @ w_q^T in int32 (exact),
                  y = acc * a_scale[:, None] * w_scale[None, :]
   with a_q, a_scale = quantize_per_row(x)   (one scale per activation row)
   and  w_q, w_scale = quantize_per_channel(W) (one scale per output channel).
2. int8 weights only:  y = x @ (w_q * w_scale[:, None])^T, i.e. dequantize then matmul.
3. packed int4 weights, group-wise, kept in the (in, out) layout, W_q (K, N)
   in [-7, 7] with one scale per group of `group` consecutive k in each
   column: scales (K/group, N). Two values per byte, packed (K/2, N): within
   the group starting at k0, with h = group / 2, byte row k0/2 + t holds
       low nibble  W_q[k0 + t] + 8,   high nibble  W_q[k0 + h + t] + 8
   (as llama.cpp's Q4_0 pairs k0 + t with k0 + h + t; here both halves feed
   the same output columns, so the kernel's inner loop runs along N, long and
   contiguous, and every output column keeps its own running sum);
   y = x @ dequantize_int4(packed, scales, group).
"""
import numpy as np

from .quantizer import quantize_tensor


def quantize_per_row(x):
    """x (M, K) float -> (q (M, K) int8, scale (M,) x.dtype): one scale per row."""
    t = quantize_tensor(x, bits=8, symmetric=True, axis=0)
    return t.q, t.scale


def quantize_per_channel(w):
    """w (K, N) float (stored (in, out)) -> (w_q (N, K) int8, scale (N,)): one scale per output channel."""
    return quantize_per_row(np.ascontiguousarray(np.asarray(w).T))  # rows contiguous: kernels read them


def dequantize_int8(q, scale):
    """q (R, K) int8, scale (R,) -> (R, K) float: q * scale per row."""
    return q.astype(scale.dtype) * scale[:, None]


def quantize_int4_groupwise(w, group=32, bits=4):
    """w (K, N) float -> (packed (K/2, N) uint8, scales (K/group, N)).

    Each run of `group` consecutive inputs of an output column shares one
    scale (max|w| / qmax over the run; qmax = 7 for 4 bits, 3 for 3, 1 for 2:
    fewer bits still take a nibble). K must be a multiple of group, group even.
    """
    w = np.asarray(w)
    K, N = w.shape
    if group % 2 or K % group:
        raise ValueError(f"K={K} must be a multiple of an even group size (got group={group})")
    if not 2 <= bits <= 4:
        raise ValueError(f"a nibble holds 2 to 4 bits, got bits={bits}")
    t = quantize_tensor(w, bits=bits, symmetric=True, group=group, group_axis=0)  # q (K, N), scales (K/g, N)
    return pack_int4(t.q, group), t.scale


def pack_int4(q, group):
    """q (K, N) int8 in [-8, 7] -> (K/2, N) uint8, two per byte in the group layout above."""
    K, N = q.shape
    u = (q.astype(np.int16) + 8).astype(np.uint8).reshape(K // group, 2, group // 2, N)  # 0..15
    return np.ascontiguousarray((u[:, 0] | (u[:, 1] << 4)).reshape(K // 2, N))


def unpack_int4(packed, group):
    """(K/2, N) uint8 -> (K, N) int8 in [-8, 7]: the inverse of pack_int4."""
    K, N = 2 * packed.shape[0], packed.shape[1]
    p = packed.reshape(K // group, 1, group // 2, N)
    lo = (p & 0x0F).astype(np.int8) - 8
    hi = (p >> 4).astype(np.int8) - 8
    return np.concatenate([lo, hi], axis=1).reshape(K, N)


def dequantize_int4(packed, scales, group):
    """(K/2, N) uint8, (K/group, N) -> (K, N) float weights."""
    q = unpack_int4(packed, group).astype(scales.dtype)  # (K, N)
    return q * np.repeat(scales, group, axis=0)


def int8_matmul_int32_ref(a_q, w_q):
    """a_q (M, K) int8, w_q (N, K) int8 -> (M, N) int32, exact: sum_k a_q[m, k] w_q[n, k]."""
    return a_q.astype(np.int32) @ w_q.astype(np.int32).T


def int8_matmul_ref(a_q, a_scale, w_q, w_scale):
    """Product 1: int32 accumulation, then y = acc * a_scale[m] * w_scale[n] (float, a_scale's dtype)."""
    acc = int8_matmul_int32_ref(a_q, w_q)  # (M, N)
    return (acc.astype(a_scale.dtype) * a_scale[:, None]) * w_scale[None, :]


def w8a8_matmul_ref(x, w_q, w_scale):
    """Product 1 from float x (M, K): each row quantized on the fly (quantize_per_row,
    one scale per token), then int32 accumulation and rescaling -> (M, N) in x's dtype."""
    a_q, a_scale = quantize_per_row(x)
    return int8_matmul_ref(a_q, a_scale, w_q, w_scale.astype(a_scale.dtype))


def int8_weight_matmul_ref(x, w_q, w_scale):
    """Product 2: x (M, K) float, int8 weights -> x @ dequantize(w)^T (M, N)."""
    return x @ dequantize_int8(w_q, w_scale.astype(x.dtype)).T


def int4_weight_matmul_ref(x, packed, scales, group):
    """Product 3: x (M, K) float, packed int4 weights (K/2, N) -> x @ dequantize_int4(...) (M, N)."""
    return x @ dequantize_int4(packed, scales.astype(x.dtype), group)
