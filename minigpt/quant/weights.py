"""Post-training quantization of a model's linear layers (round to nearest).

Each kind stores a block linear's weight W (K, N) as the arrays of
minigpt.layers.quantized_linear, through the one quantizer
(minigpt.kernels.quantizer):

    int8   per output channel, symmetric, b = 8 (or 5..7) bits:
           s_j = max_k |W[k, j]| / (2^(b-1) - 1),  q = clamp(round(W / s), -qmax, qmax)
    int4   per group of g consecutive inputs of each output, symmetric,
           b = 4, 3 or 2 bits (qmax 7, 3, 1), two values a byte;
           group=None: one group of all K inputs (per output channel)
    w8a8   int8 weights as above, and every activation row quantized to int8
           on the fly in the forward (dynamic, one scale per token)
    q8_0, q4_0   llama.cpp's blocks of 32 (minigpt.kernels.block_formats)

The embeddings, which are also the tied output head, the LayerNorms and the
biases stay in float; so does any block linear named in keep_float. Opt-in,
head="int8" stores the token embedding / tied head wte (V, C) as int8 with
one symmetric scale per vocabulary row (per output channel of the head:
minigpt.layers.quantized_embedding), the arrays wte.weight.int8 and
wte.weight.scale. At GPT-2's vocabulary the head is the largest matrix
(38.6M weights); a decoding step reads all of it.
"""
from __future__ import annotations

import fnmatch

import numpy as np

from ..errors import ConfigError
from ..kernels.block_formats import BLOCK, BLOCK_BYTES, quantize_weight_blocks
from ..kernels.int_matmul_ref import pack_int4
from ..kernels.quantizer import quantize_tensor
from ..layers.quantized_embedding import HEAD_FORMATS, head_arrays, head_format
from ..layers.quantized_linear import FORMAT_KEYS, dequantize, quantized_arrays, quantized_in_out
from ..model import GPT

# The linear layers quantized: every block's four matrices applied as x @ W.
QUANTIZED_SUFFIXES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
KINDS = ("int8", "int4", "w8a8", "q8_0", "q4_0")
BITS = {"int8": (5, 6, 7, 8), "int4": (2, 3, 4), "w8a8": (8,), "q8_0": (8,), "q4_0": (4,)}


def kind_for_bits(bits: int) -> str:
    """The container a bit width is stored in: int4 (a nibble) for 2..4 bits, int8 for 5..8."""
    if bits not in range(2, 9):
        raise ConfigError(f"bits must be 2 to 8, got {bits}")
    return "int4" if bits <= 4 else "int8"


def check_scheme(kind, bits, group):
    """ConfigError unless kind, bits and group make a scheme quantize_params can store."""
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if bits not in BITS[kind]:
        raise ConfigError(f"{kind} holds {' / '.join(map(str, BITS[kind]))} bits, not {bits}")
    if kind == "int4" and group is not None and (isinstance(group, bool) or not isinstance(group, (int, np.integer))
                                                 or group <= 0 or group % 2):
        raise ConfigError(f"the group size must be a positive even integer, got {group!r}")


def weight_arrays(w, kind: str, bits: int | None = None, group=32) -> dict:
    """The arrays {key: array} that store W (K, N) in format `kind` (keys as in
    minigpt.layers.quantized_linear: NAME.weight.<key>)."""
    bits = bits or max(BITS.get(kind, (8,)))
    check_scheme(kind, bits, group)
    K, N = w.shape
    if kind in ("int8", "w8a8"):
        t = quantize_tensor(w, bits, symmetric=True, axis=1)  # one scale per output channel
        return {kind: np.ascontiguousarray(t.q.T), "scale": t.scale}  # (N, K) int8: rows are channels
    if kind in BLOCK_BYTES:
        if K % BLOCK:
            raise ConfigError(f"{kind} needs the inputs in blocks of {BLOCK}; this weight has {K}")
        return {kind: quantize_weight_blocks(w, kind)}
    g = K if group is None else int(group)
    if K % g:
        raise ConfigError(f"group size {g} does not divide the {K} inputs of this weight")
    t = quantize_tensor(w, bits, symmetric=True, group=g, group_axis=0)  # q (K, N), scales (K/g, N)
    return {"int4": pack_int4(t.q, g), "scales": t.scale, "group": np.array(g, dtype=np.int64)}


def is_quantizable(name: str) -> bool:
    """True for a block linear's float weight "h.{i}.attn.c_attn.weight" etc."""
    return name.endswith(".weight") and name.startswith("h.") and name[: -len(".weight")].endswith(QUANTIZED_SUFFIXES)


def check_head(head):
    """ConfigError unless head is None (a float wte) or a format quantize_head can store."""
    if head is not None and head not in HEAD_FORMATS:
        raise ConfigError(f"head must be None (float) or one of {list(HEAD_FORMATS)}, got {head!r}")


def quantize_head(params: dict, head="int8") -> dict:
    """A new parameter dict with wte.weight (V, C) replaced by wte.weight.int8 (V, C) and
    wte.weight.scale (V,): the head x @ wte^T is a linear with weight wte^T (C, V), quantized
    as weight_arrays' int8 does it, one scale per output channel = per row of wte."""
    check_head(head)
    if head is None:
        return dict(params)
    if "wte.weight" not in params:
        raise ConfigError("the tied embedding / head is quantized already (or missing); start from a float wte")
    arrays = weight_arrays(params["wte.weight"].T, head)  # int8 (V, C): rows are wte's rows
    out = {}
    for name, p in params.items():  # in place of wte.weight, so the order stays GPT-2's
        if name == "wte.weight":
            out.update({f"wte.weight.{k}": a for k, a in arrays.items()})
        else:
            out[name] = p
    return out


def quantize_params(params: dict, kind: str, group=32, bits: int | None = None, keep_float=(), head=None) -> dict:
    """A new parameter dict: each block linear's NAME.weight replaced by the
    arrays of format `kind`; the rest shared (not copied).

    group: int4's group size (None: all K inputs, one scale per output channel).
    bits: int8 5..8 (default 8), int4 2..4 (default 4).
    keep_float: layer names or shell patterns ("h.0.*", "*.mlp.c_proj") left in float.
    head: None keeps the token embedding / tied head in float; "int8" stores it as
    int8 with one scale per vocabulary row (quantize_head).
    """
    bits = bits or max(BITS.get(kind, (8,)))
    check_scheme(kind, bits, group)
    check_head(head)
    if is_quantized(params):
        raise ConfigError("these weights are quantized already; quantize the float checkpoint instead")
    out = {}
    for name, p in params.items():
        layer = name[: -len(".weight")]
        if not is_quantizable(name) or any(fnmatch.fnmatchcase(layer, pat) for pat in keep_float):
            out[name] = p
            continue
        try:
            arrays = weight_arrays(p, kind, bits, group)
        except ConfigError as e:
            raise ConfigError(f"{name}: {e}") from None
        out.update({f"{name}.{k}": a for k, a in arrays.items()})
    return quantize_head(out, head) if head else out


def quantize_model(model: GPT, kind: str, group=32, bits: int | None = None, keep_float=(), head=None) -> GPT:
    """A new GPT with model's config, tokenizer and backend, its block linears (and with head="int8",
    its tied embedding / head) quantized (see quantize_params)."""
    params = quantize_params(model.params, kind, group, bits, keep_float, head)
    return GPT(model.config, params=params, backend=model.backend, tokenizer=model.tokenizer)


def quantized_layers(params: dict) -> dict[str, str]:
    """{layer name: format} of every quantized linear in params (the block linears: an
    integer tied embedding / head is head_format's, not a layer here)."""
    out = {}
    for name in params:
        if name.startswith("wte."):  # wte.weight.int8 has the int8 linear's keys, but no bias, no layer
            continue
        for fmt, keys in FORMAT_KEYS.items():  # the first key names the array that marks the format
            if name.endswith(f".weight.{keys[0]}"):
                out[name[: -len(f".weight.{keys[0]}")]] = fmt
    return out


def is_quantized(params: dict) -> bool:
    """True if any block linear, or the tied embedding / head, is stored as integers."""
    return bool(quantized_layers(params)) or head_format(params) is not None


def dequantize_params(params: dict) -> dict:
    """A float parameter dict with each quantized weight replaced by W_hat
    (K, N) in its layer's float dtype: the same function, computed in float."""
    layers = quantized_layers(params)
    out = {k: v for k, v in params.items() if not any(k.startswith(f"{layer}.weight.") for layer in layers)}
    for layer in layers:
        dtype = params[layer + ".bias"].dtype
        out[layer + ".weight"] = np.ascontiguousarray(dequantize(quantized_arrays(params, layer)).astype(dtype))
    if head_format(params):  # wte_hat (V, C), where wte.weight stood
        wte_q, scale = head_arrays(params)
        wte = wte_q.astype(scale.dtype) * scale[:, None]
        out = {("wte.weight" if k == "wte.weight.int8" else k): (wte if k == "wte.weight.int8" else v)
               for k, v in out.items() if k != "wte.weight.scale"}
    return out


def weight_bytes(params: dict) -> int:
    """Bytes the parameter dict's arrays take (integer weights at their packed size)."""
    return int(sum(p.nbytes for p in params.values()))


def bits_per_weight(params: dict) -> float:
    """8 x bytes / weights over the quantized linears (their scales included) and an
    integer tied head (head="int8", its scales included), or over the block linears'
    float weights if nothing is quantized."""
    layers = quantized_layers(params)
    if not layers and not head_format(params):
        ws = [p for n, p in params.items() if is_quantizable(n)]
        return 8.0 * sum(p.nbytes for p in ws) / sum(p.size for p in ws)
    nbytes = weights = 0
    if head_format(params):
        nbytes += sum(a.nbytes for a in head_arrays(params))
        weights += head_arrays(params)[0].size
    for layer in layers:
        q = quantized_arrays(params, layer)
        K, N = quantized_in_out(q)
        nbytes += sum(a.nbytes for k, a in q.items() if k != "format")
        weights += K * N
    return 8.0 * nbytes / weights

