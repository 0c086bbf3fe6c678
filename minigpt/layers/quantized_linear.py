"""A linear layer whose weight is stored as integers: the quantized model's linear.

Forward:  out = x @ W_hat + b,  W_hat = the dequantized weight (K, N)
Shapes:   x (..., K), b (N,) -> out (..., N)

The weight lives in the parameter dict as plain arrays beside the bias, so a
quantized model saves and loads like any other (no objects, no pickle):

    int8, one scale per output channel (symmetric):
        NAME.weight.int8    (N, K) int8      row j = output channel j
        NAME.weight.scale   (N,)   float     W_hat[k, j] = int8[j, k] * scale[j]
    int4, one scale per group of g consecutive inputs of each output:
        NAME.weight.int4    (K/2, N) uint8   two 4-bit values a byte (minigpt.kernels.int_matmul_ref)
        NAME.weight.scales  (K/g, N) float   W_hat[k, j] = q[k, j] * scales[k // g, j]
        NAME.weight.group   ()       int64   g
        (3- and 2-bit weights are stored the same way, q in [-3, 3] or [-1, 1].)
    w8a8, int8 weights as for int8, and the activations quantized too:
        NAME.weight.w8a8    (N, K) int8      W_hat as for int8
        NAME.weight.scale   (N,)   float
        each row of x (each token) is quantized on the fly, symmetric int8
        with its own scale (dynamic, per token): x_hat[m] = a_q[m] * a_scale[m],
        and out = x_hat @ W_hat + b from the int32 sums of a_q w_q
        (minigpt.kernels.int_matmul_ref, product 1)
    q8_0, q4_0: llama.cpp's blocks of 32 (minigpt.kernels.block_formats),
    one row of blocks per output channel:
        NAME.weight.q8_0    (N, K/32 * 34) uint8
        NAME.weight.q4_0    (N, K/32 * 18) uint8
    kmeans, a per-tensor codebook of 2^b shared values (minigpt.quant.kmeans):
        NAME.weight.kmeans_idx (K, N) uint8   W_hat[k, j] = codebook[kmeans_idx[k, j]]
        NAME.weight.codebook   (2^b,) float

The product itself is an op of the op table ("int8_weight_matmul",
"int4_weight_matmul", "w8a8_matmul", "block_weight_matmul"): the NumPy
reference dequantizes and multiplies; the numba kernels multiply the integers
directly for a few rows (decoding) and, for a batch of weight-only products,
dequantize into a reused buffer and call BLAS (minigpt.kernels.int_matmul).

Backward (the weight is frozen: it gets no gradient):
    dx = dout @ W_hat^T,   db = sum of dout over every axis but the last
(for w8a8 the rounding of x is passed straight through: dx as if x were not rounded)
"""
from __future__ import annotations

import numpy as np

from ..kernels.block_formats import BLOCK, BLOCK_BYTES, dequantize_blocks

INT8_KEYS = ("int8", "scale")
INT4_KEYS = ("int4", "scales", "group")
# every format: the arrays NAME.weight.<key> it stores (the first key names the format)
FORMAT_KEYS = {"int8": INT8_KEYS, "int4": INT4_KEYS, "w8a8": ("w8a8", "scale"), "q8_0": ("q8_0",),
               "q4_0": ("q4_0",), "kmeans": ("kmeans_idx", "codebook")}


def quantized_format(p: dict, name: str) -> str | None:
    """"int8", "int4", "w8a8", "q8_0", "q4_0", "kmeans" or None (a float weight) for the linear layer `name` in p."""
    for fmt, keys in FORMAT_KEYS.items():
        if f"{name}.weight.{keys[0]}" in p:
            return fmt
    return None


def quantized_arrays(p: dict, name: str) -> dict:
    """{"format": fmt, key: array, ...} of layer `name`, the keys of FORMAT_KEYS[fmt]."""
    fmt = quantized_format(p, name)
    return {"format": fmt, **{k: p[f"{name}.weight.{k}"] for k in FORMAT_KEYS[fmt]}}


def quantized_in_out(q: dict) -> tuple[int, int]:
    """(K, N) of the float weight a quantized one stands for."""
    fmt = q["format"]
    if fmt in ("int8", "w8a8"):
        N, K = q[fmt].shape
        return K, N
    if fmt in BLOCK_BYTES:
        N, nbytes = q[fmt].shape
        return nbytes // BLOCK_BYTES[fmt] * BLOCK, N
    if fmt == "kmeans":
        return q["kmeans_idx"].shape
    return 2 * q["int4"].shape[0], q["int4"].shape[1]


def dequantize(q: dict) -> np.ndarray:
    """W_hat (K, N), the float weight the integers stand for."""
    fmt = q["format"]
    if fmt in ("int8", "w8a8"):
        return (q[fmt].astype(q["scale"].dtype) * q["scale"][:, None]).T  # (K, N)
    if fmt in BLOCK_BYTES:
        return dequantize_blocks(q[fmt], fmt).T  # (K, N) float32
    if fmt == "kmeans":
        return q["codebook"][q["kmeans_idx"]]  # (K, N): a table lookup
    K, N = quantized_in_out(q)
    g = int(q["group"])
    packed = q["int4"].reshape(K // g, 1, g // 2, N)
    lo = (packed & 0x0F).astype(np.int8) - 8  # the layout of minigpt.kernels.int_matmul_ref.pack_int4
    hi = (packed >> 4).astype(np.int8) - 8
    w = np.concatenate([lo, hi], axis=1).reshape(K, N).astype(q["scales"].dtype)
    return w * np.repeat(q["scales"], g, axis=0)


def quantized_linear_forward(x, q: dict, b, matmuls: dict):
    """out = x @ W_hat + b through the integer product matmuls[q["format"]] ("blocks" for q8_0, q4_0)."""
    K, N = quantized_in_out(q)
    x2 = np.ascontiguousarray(x.reshape(-1, K))  # (M, K)
    fmt = q["format"]
    if fmt in ("int8", "w8a8"):
        y = matmuls[fmt](x2, q[fmt], q["scale"].astype(x.dtype, copy=False))  # (M, N)
    elif fmt in BLOCK_BYTES:
        y = matmuls["blocks"](x2, q[fmt], fmt)
    elif fmt == "kmeans":  # no integer product: the lookup table's values are arbitrary floats
        y = x2 @ dequantize(q).astype(x.dtype)  # (M, N)
    else:
        y = matmuls["int4"](x2, q["int4"], q["scales"].astype(x.dtype, copy=False), int(q["group"]))
    out = y.reshape(*x.shape[:-1], N) + b  # (..., N)
    return out, (x, q)


def quantized_linear_backward(dout, cache):
    """Returns (dx, None, db): out = x @ W_hat + b, so dx = dout @ W_hat^T, db = sum(dout);
    the integer weight is frozen (None in the weight's place)."""
    x, q = cache
    K, N = quantized_in_out(q)
    dx = dout @ dequantize(q).astype(dout.dtype).T  # (..., K)
    db = dout.reshape(-1, N).sum(axis=0)
    return dx, None, db
