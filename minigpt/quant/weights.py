"""Post-training weight quantization of a model's linear layers (round to nearest).

int8:  per output channel, symmetric:  s_j = max_k |W[k, j]| / 127,
       q[j, k] = clip(round(W[k, j] / s_j), -127, 127)
int4:  per group of g consecutive inputs of each output, symmetric:
       s = max |W[group, j]| / 7,  q = clip(round(W / s), -7, 7), two a byte
(the quantizers of minigpt.kernels.int_matmul_ref). The embeddings, which
are also the tied output head, LayerNorms and biases stay in float.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..kernels.int_matmul_ref import quantize_int4_groupwise, quantize_per_channel
from ..model import GPT

# The linear layers quantized: every block's four matrices applied as x @ W.
QUANTIZED_SUFFIXES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def quantize_params(params: dict, kind: str, group=32) -> dict:
    """A new parameter dict: each block linear's NAME.weight replaced by the
    integer arrays of minigpt.layers.quantized_linear; the rest shared."""
    if kind not in ("int8", "int4"):
        raise ConfigError(f"kind must be 'int8' or 'int4', got {kind!r}")
    out = {}
    for name, p in params.items():
        layer = name[: -len(".weight")]
        if not (name.endswith(".weight") and layer.endswith(QUANTIZED_SUFFIXES)):
            out[name] = p
        elif kind == "int8":
            q, scale = quantize_per_channel(p)  # (N, K) int8, (N,)
            out[name + ".int8"], out[name + ".scale"] = q, scale
        else:
            if p.shape[0] % group:
                raise ConfigError(f"{name} has {p.shape[0]} inputs, not a multiple of the group size {group}")
            packed, scales = quantize_int4_groupwise(p, group)  # (K/2, N) uint8, (K/g, N)
            out[name + ".int4"], out[name + ".scales"] = packed, scales
            out[name + ".group"] = np.array(group, dtype=np.int64)
    return out


def quantize_model(model: GPT, kind: str, group=32) -> GPT:
    """A new GPT with model's config, tokenizer and backend, its block linears quantized ("int8" | "int4")."""
    params = quantize_params(model.params, kind, group)
    return GPT(model.config, params=params, backend=model.backend, tokenizer=model.tokenizer)


def weight_bytes(params: dict) -> int:
    """Bytes the parameter dict's arrays take (integer weights at their packed size)."""
    return int(sum(p.nbytes for p in params.values()))
