"""Quantized weight matrices that drop into the model's parameter dict.

The model's linear layers compute ``x @ W + b``. An Int8Weight or Int4Weight
stands in for W: NumPy sees ``__array_ufunc__ = None`` and hands ``x @ W``
to ``W.__rmatmul__(x)``, which runs the integer kernel. So the unchanged
GPT.forward (and generate, with its KV cache) runs on integer weights;
there is no backward (inference only).

    qmodel = quantize_weights(model, "int8")          # or "int4"
    qmodel.generate(...)                              # reads 4x / 8x fewer weight bytes
"""
from __future__ import annotations

import numpy as np

from . import int_matmul as kernels
from . import int_matmul_ref as ref

# The matrices applied as x @ W; wte (embedding and tied head) stays float.
QUANTIZED_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class Int8Weight:
    """W (K, N) as int8 per output channel: x @ W = (x @ w_q^T) * scale."""

    __array_ufunc__ = None  # make ndarray @ Int8Weight call __rmatmul__

    def __init__(self, w):
        self.shape = w.shape
        self.dtype = w.dtype
        self.w_q, self.scale = ref.quantize_per_channel(w)  # (N, K) int8, (N,)

    @property
    def nbytes(self):
        return self.w_q.nbytes + self.scale.nbytes

    def dequantize(self):
        return ref.dequantize_int8(self.w_q, self.scale).T  # (K, N)

    def __rmatmul__(self, x):
        x2 = np.asarray(x).reshape(-1, self.shape[0])  # (M, K)
        y = kernels.int8_weight_matmul(x2, self.w_q, self.scale)  # (M, N)
        return y.reshape(*np.shape(x)[:-1], self.shape[1])


class Int4Weight:
    """W (K, N) as packed int4 with one scale per `group` inputs of each column."""

    __array_ufunc__ = None

    def __init__(self, w, group=32):
        self.shape = w.shape
        self.dtype = w.dtype
        self.group = group
        self.packed, self.scales = ref.quantize_int4_groupwise(w, group)  # (K/2, N), (K/group, N)

    @property
    def nbytes(self):
        return self.packed.nbytes + self.scales.nbytes

    def dequantize(self):
        return ref.dequantize_int4(self.packed, self.scales, self.group)

    def __rmatmul__(self, x):
        x2 = np.asarray(x).reshape(-1, self.shape[0])
        y = kernels.int4_weight_matmul(x2, self.packed, self.scales, self.group)
        return y.reshape(*np.shape(x)[:-1], self.shape[1])


def quantize_weights(model, kind: str, group=32):
    """A new GPT sharing model's config and tokenizer, its linear weights quantized ("int8" | "int4")."""
    from ..model import GPT

    make = {"int8": Int8Weight, "int4": lambda w: Int4Weight(w, group)}
    if kind not in make:
        raise ValueError(f"kind must be 'int8' or 'int4', got {kind!r}")
    params = {name: (make[kind](p) if name.endswith(QUANTIZED_SUFFIXES) else p) for name, p in model.params.items()}
    return GPT(model.config, params=params, backend=model.backend, tokenizer=model.tokenizer)


def weight_bytes(params) -> int:
    """Bytes held by a parameter dict, quantized entries counted at their packed size."""
    return int(sum(p.nbytes for p in params.values()))
