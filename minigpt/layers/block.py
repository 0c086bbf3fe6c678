"""The transformer block (GPT-2's, pre-LayerNorm) as one forward/backward pair.

Forward, x (B, T, C) -> out (B, T, C):
    a   = x + drop(attn(ln_1(x)))        attn(u) = c_proj(g * heads(c_attn(u)))
    out = a + drop(mlp(ln_2(a)))         mlp(u)  = c_proj(gelu(c_fc(u)))

heads() is causal multi-head attention, g the optional head gates (one
multiplier per head, 1 when absent), drop() dropout (training only).

p holds the block's parameters under their names inside the block, GPT-2's
names without the "h.{i}." prefix: "ln_1.weight", "ln_1.bias",
"attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", ...,
"mlp.c_proj.bias", and optionally "attn.head_gate" (H,). A linear layer's
weight may be stored as integers instead (minigpt.layers.quantized_linear:
"mlp.c_fc.weight.int8" and its scales in place of "mlp.c_fc.weight"), or
sparse (minigpt.layers.sparse_linear: "mlp.c_fc.weight.csr_values", ...).

Shapes come from the weights, so a pruned block is still a block:
    c_attn (C, 3 H D), c_proj (H D, C)  -> H heads of size D (the model's head size)
    c_fc (C, F), mlp.c_proj (F, C)      -> an MLP F wide (4C in GPT-2)

The cache is a dict named after the parameters ("ln_1", "attn.c_attn",
"attn", "attn.head_gate", "attn.c_proj", "attn.drop", "ln_2", "mlp.c_fc",
"mlp.gelu", "mlp.c_proj", "mlp.drop") plus "out", the block's output; a
linear layer's cache starts with its input, which is what calibration reads
(see GPT.activations).
"""
from __future__ import annotations

import numpy as np

from ..kernels.block_formats import block_weight_matmul_ref
from ..kernels.int_matmul_ref import int4_weight_matmul_ref, int8_weight_matmul_ref, w8a8_matmul_ref
from .attention import causal_attention_backward, causal_attention_forward
from .attention import multihead_attention_backward, multihead_attention_forward
from .dropout import dropout_backward, dropout_forward
from .gelu import gelu_backward, gelu_forward
from .head_gate import head_gate_backward, head_gate_forward
from .layernorm import layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .sparse_linear import is_sparse_cache, sparse_arrays, sparse_format, sparse_linear_backward
from .sparse_linear import sparse_linear_forward, sparse_matmul_ref
from .quantized_linear import (
    quantized_arrays,
    quantized_linear_backward,
    quantized_linear_forward,
)

# The NumPy references, every op the block runs: the "numpy" row of the op
# table (minigpt.ops), where a backend may swap in kernels. The integer
# products are forward-only (a quantized weight is frozen).
REFERENCE_OPS = {
    "attention": (causal_attention_forward, causal_attention_backward),
    "gelu": (gelu_forward, gelu_backward),
    "layernorm": (layernorm_forward, layernorm_backward),
    "linear": (linear_forward, linear_backward),
    "int8_weight_matmul": (int8_weight_matmul_ref, None),
    "int4_weight_matmul": (int4_weight_matmul_ref, None),
    "sparse_matmul": (sparse_matmul_ref, None),  # a sparse weight is frozen too
    "w8a8_matmul": (w8a8_matmul_ref, None),
    "block_weight_matmul": (block_weight_matmul_ref, None),
}

LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def block_heads(p, head_size) -> int:
    """This block's number of heads, read off c_attn's width (3 H D)."""
    return _width(p, "attn.c_attn") // (3 * head_size)


def _width(p, name) -> int:
    """Output width of the linear layer `name` (from its bias: quantized weights have no plain shape)."""
    return p[name + ".bias"].shape[0]


def _linear_forward(x, p, name, ops):
    """The linear layer `name` of p: float weight, or integer weight (minigpt.layers.quantized_linear)."""
    w = p.get(name + ".weight")
    if w is not None:  # a float weight (a layer stores exactly one form, see model.check_params)
        return ops["linear"][0](x, w, p[name + ".bias"])
    if sparse_format(p, name):  # a CSR weight (minigpt.layers.sparse_linear)
        return sparse_linear_forward(x, sparse_arrays(p, name), p[name + ".bias"], ops["sparse_matmul"][0])
    matmuls = {"int8": ops["int8_weight_matmul"][0], "int4": ops["int4_weight_matmul"][0],
               "w8a8": ops["w8a8_matmul"][0], "blocks": ops["block_weight_matmul"][0]}
    return quantized_linear_forward(x, quantized_arrays(p, name), p[name + ".bias"], matmuls)


def _linear_backward(dout, cache, ops):
    if is_sparse_cache(cache):  # (x, CSR arrays): the weight is frozen
        return sparse_linear_backward(dout, cache)
    if isinstance(cache[1], dict):  # (x, quantized arrays): the weight is frozen
        return quantized_linear_backward(dout, cache)
    return ops["linear"][1](dout, cache)


def _residual(x, branch):
    """x + branch, written over branch when the sum has its dtype and shape.

    branch is always an array the block just made (a layer's output or input
    gradient, which no cache keeps), so it is still in cache; a new array
    for the sum would be memory that is not (measured on the Xeon: the
    layers' writes into fresh memory were most of LayerNorm's time inside a step).
    """
    if branch.shape == np.broadcast_shapes(x.shape, branch.shape) and branch.dtype == np.result_type(x, branch):
        return np.add(x, branch, out=branch)
    return x + branch


def block_forward(x, p, head_size, ops=None, dropout=0.0, rng=None, training=False, kv_cache=None):
    """out, cache = block_forward(x, p, head_size): see the module docstring.

    ops: {op: (forward, backward)} from the op table (None: the references).
    dropout, rng, training: dropout after each branch while training.
    kv_cache: this block's (k, v) from earlier positions, for generation; the
    returned cache["attn"] is then the updated (k, v) pair (no backward).
    """
    ops = {**REFERENCE_OPS, **(ops or {})}
    ln_fwd, gelu_fwd = ops["layernorm"][0], ops["gelu"][0]

    def linear(u, name):
        return _linear_forward(u, p, name, ops)

    train = training and dropout > 0.0 and kv_cache is None
    c = {}
    # attention branch
    u, c["ln_1"] = ln_fwd(x, p["ln_1.weight"], p["ln_1.bias"])  # (B, T, C)
    u, c["attn.c_attn"] = linear(u, "attn.c_attn")  # (B, T, 3HD)
    u, c["attn"] = multihead_attention_forward(u, block_heads(p, head_size), ops["attention"], kv_cache)  # (B, T, HD)
    if "attn.head_gate" in p:
        u, c["attn.head_gate"] = head_gate_forward(u, p["attn.head_gate"])  # (B, T, HD)
    u, c["attn.c_proj"] = linear(u, "attn.c_proj")  # (B, T, C)
    u, c["attn.drop"] = dropout_forward(u, dropout, rng, train)
    a = _residual(x, u)  # (B, T, C)
    # MLP branch
    m, c["ln_2"] = ln_fwd(a, p["ln_2.weight"], p["ln_2.bias"])
    m, c["mlp.c_fc"] = linear(m, "mlp.c_fc")  # (B, T, F)
    m, c["mlp.gelu"] = gelu_fwd(m)
    m, c["mlp.c_proj"] = linear(m, "mlp.c_proj")  # (B, T, C)
    m, c["mlp.drop"] = dropout_forward(m, dropout, rng, train)
    out = _residual(a, m)  # (B, T, C)
    c["out"] = out
    c["ops"] = ops
    return out, c


def block_backward(dout, cache):
    """Returns (dx, grads): dx (B, T, C) and {parameter name in the block: gradient}.

    Walks the forward in reverse. Each residual `y = x + f(x)` hands its
    upstream gradient both to the identity path and to the branch, and the
    two are added: dx = dy + (branch's gradient w.r.t. x).
    """
    c = cache
    ops = c["ops"]
    ln_bwd, gelu_bwd = ops["layernorm"][1], ops["gelu"][1]

    def linear_bwd(d, cache):
        return _linear_backward(d, cache, ops)

    g = {}
    # out = a + m: da gets dout directly and through the MLP branch
    dm = dropout_backward(dout, c["mlp.drop"])
    dm, g["mlp.c_proj.weight"], g["mlp.c_proj.bias"] = linear_bwd(dm, c["mlp.c_proj"])  # (B, T, F)
    dm = gelu_bwd(dm, c["mlp.gelu"])
    dm, g["mlp.c_fc.weight"], g["mlp.c_fc.bias"] = linear_bwd(dm, c["mlp.c_fc"])  # (B, T, C)
    dm, g["ln_2.weight"], g["ln_2.bias"] = ln_bwd(dm, c["ln_2"])
    da = _residual(dout, dm)
    # a = x + u: the same for the attention branch
    du = dropout_backward(da, c["attn.drop"])
    du, g["attn.c_proj.weight"], g["attn.c_proj.bias"] = linear_bwd(du, c["attn.c_proj"])  # (B, T, HD)
    if "attn.head_gate" in c:
        du, g["attn.head_gate"] = head_gate_backward(du, c["attn.head_gate"])
    du = multihead_attention_backward(du, c["attn"])  # (B, T, 3HD)
    du, g["attn.c_attn.weight"], g["attn.c_attn.bias"] = linear_bwd(du, c["attn.c_attn"])  # (B, T, C)
    du, g["ln_1.weight"], g["ln_1.bias"] = ln_bwd(du, c["ln_1"])
    dx = _residual(da, du)
    return dx, {k: v for k, v in g.items() if v is not None}  # an integer weight gets no gradient
