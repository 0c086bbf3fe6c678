"""The tied token embedding and output head with wte stored as int8 (opt-in:
minigpt.quant.quantize_params(..., head="int8")).

The head computes logits = x @ wte^T: a linear layer whose weight W = wte^T
(C, V) has one output channel per vocabulary row. So wte is stored in the
int8 format of minigpt.layers.quantized_linear, one symmetric scale per
output channel, which is one scale per row of wte:

    wte.weight.int8    (V, C) int8    row v = token v's embedding
    wte.weight.scale   (V,)   float   wte_hat[v, c] = int8[v, c] * scale[v]
                                      scale[v] = max_c |wte[v, c]| / 127

Embedding forward:  out[b, t] = wte_hat[idx[b, t]] + wpe[t0 + t]
    (only the looked-up rows are dequantized: B T C conversions, not V C)
Head forward:       logits = x @ wte_hat^T, through the int8 weight product
    (minigpt.kernels.int_matmul.int8_weight_matmul: a decoding row reads the
    V C bytes once, a quarter of float32's)
Shapes:             idx (B, T) int, x (B, T, C) -> out (B, T, C), logits (B, T, V)
Backward (the integer weight is frozen, as every quantized weight):
    head: dx = dlogits @ wte_hat; the embedding gives no gradient to wte
    (minigpt.layers.embedding's backward still gives wpe's).
"""
from __future__ import annotations

import numpy as np

HEAD_KEYS = ("int8", "scale")  # the arrays wte.weight.<key>, as the int8 linear format's
HEAD_FORMATS = ("int8",)


def head_format(p: dict) -> str | None:
    """"int8" if p stores the tied embedding / head as integers, None if wte is float."""
    return "int8" if "wte.weight.int8" in p else None


def head_arrays(p: dict) -> tuple[np.ndarray, np.ndarray]:
    """(wte_q (V, C) int8, scale (V,) float)."""
    return p["wte.weight.int8"], p["wte.weight.scale"]


def dequantize_rows(wte_q, scale, rows):
    """wte_hat[rows] (rows' shape + (C,)), in scale's dtype: only those rows converted."""
    return wte_q[rows].astype(scale.dtype) * scale[rows][..., None]


def quantized_embedding_forward(idx, wte_q, scale, wpe, pos_offset=0):
    """out = wte_hat[idx] + wpe[pos_offset : pos_offset + T]; the cache is minigpt.layers.embedding's."""
    B, T = idx.shape
    pos = np.arange(pos_offset, pos_offset + T)
    out = dequantize_rows(wte_q, scale, idx) + wpe[pos][None, :, :]  # (B, T, C)
    return out, (idx, pos, wte_q.shape, wpe.shape)


def quantized_head_forward(x, wte_q, scale, int8_weight_matmul):
    """logits = x @ wte_hat^T through int8_weight_matmul(x (M, C), w_q (V, C), scale (V,)) -> (M, V)."""
    C = wte_q.shape[1]
    x2 = np.ascontiguousarray(x.reshape(-1, C))  # (M, C)
    logits = int8_weight_matmul(x2, wte_q, scale.astype(x.dtype, copy=False))  # (M, V)
    return logits.reshape(*x.shape[:-1], wte_q.shape[0]), (x, wte_q, scale)


def quantized_head_backward(dlogits, cache):
    """dx = dlogits @ wte_hat (B, T, C); wte is frozen (no gradient)."""
    x, wte_q, scale = cache
    return dlogits @ (wte_q.astype(x.dtype) * scale.astype(x.dtype)[:, None])  # (B, T, C)
