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

The product itself is an op of the op table ("int8_weight_matmul",
"int4_weight_matmul"): the NumPy reference dequantizes and multiplies, the
numba kernel never builds W_hat.

Backward (the weight is frozen: it gets no gradient):
    dx = dout @ W_hat^T,   db = sum of dout over every axis but the last
"""
from __future__ import annotations

import numpy as np

INT8_KEYS = ("int8", "scale")
INT4_KEYS = ("int4", "scales", "group")


def quantized_format(p: dict, name: str) -> str | None:
    """"int8", "int4" or None (a float weight) for the linear layer `name` in p."""
    if name + ".weight.int8" in p:
        return "int8"
    if name + ".weight.int4" in p:
        return "int4"
    return None


def quantized_arrays(p: dict, name: str) -> dict:
    """{"int8": ..., "scale": ...} or {"int4": ..., "scales": ..., "group": ...} of layer `name`."""
    fmt = quantized_format(p, name)
    keys = INT8_KEYS if fmt == "int8" else INT4_KEYS
    return {"format": fmt, **{k: p[f"{name}.weight.{k}"] for k in keys}}


def quantized_in_out(q: dict) -> tuple[int, int]:
    """(K, N) of the float weight a quantized one stands for."""
    if q["format"] == "int8":
        N, K = q["int8"].shape
        return K, N
    return 2 * q["int4"].shape[0], q["int4"].shape[1]


def dequantize(q: dict) -> np.ndarray:
    """W_hat (K, N), the float weight the integers stand for."""
    if q["format"] == "int8":
        return (q["int8"].astype(q["scale"].dtype) * q["scale"][:, None]).T  # (K, N)
    K, N = quantized_in_out(q)
    g = int(q["group"])
    packed = q["int4"].reshape(K // g, 1, g // 2, N)
    lo = (packed & 0x0F).astype(np.int8) - 8  # the layout of minigpt.kernels.int_matmul_ref.pack_int4
    hi = (packed >> 4).astype(np.int8) - 8
    w = np.concatenate([lo, hi], axis=1).reshape(K, N).astype(q["scales"].dtype)
    return w * np.repeat(q["scales"], g, axis=0)


def quantized_linear_forward(x, q: dict, b, matmuls: dict):
    """out = x @ W_hat + b through the integer product matmuls[q["format"]]."""
    K, N = quantized_in_out(q)
    x2 = np.ascontiguousarray(x.reshape(-1, K))  # (M, K)
    if q["format"] == "int8":
        y = matmuls["int8"](x2, q["int8"], q["scale"].astype(x.dtype))  # (M, N)
    else:
        y = matmuls["int4"](x2, q["int4"], q["scales"].astype(x.dtype), int(q["group"]))
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
