"""Structured pruning: remove whole attention heads and MLP neurons, so the
matrices themselves shrink and the model really computes less.

Importance of head h of block i (Michel, Levy & Neubig 2019, "Are Sixteen
Heads Really Better than One?"): put a gate g_h on the head's output
(minigpt.layers.head_gate; g = 1 changes nothing) and measure how much the
loss leans on it,

    I_h = E_x | dL(x) / dg_h |  at g = 1,
    dL/dg_h = sum over tokens t and dims d of y[t, h, d] . dL/dout[t, h, d]

(y the head's output, out = g_h y); the hand-written backward of the gate
gives it. Here x is one batch of calibration sequences and L its mean
cross-entropy; with batches of one sequence this is the paper's
per-example expectation.

MLP neuron n gets the same score with a gate m_n on its activation. No new
layer is needed for it: gating neuron n is scaling row n of mlp.c_proj's
weight W2 (F, C), so

    dL/dm_n = sum_c W2[n, c] . dL/dW2[n, c],     I_n = E_x |dL/dm_n|

read off the gradient the backward already computes. (The same identity
holds for heads and attn.c_proj's rows; the tests check both against
finite differences.)

Removing head h deletes its q, k, v columns of c_attn (weight and bias)
and its D rows of attn.c_proj; removing neuron n deletes column n of
mlp.c_fc and row n of mlp.c_proj. The result is a smaller model (per-layer
shapes come from the weights, minigpt.model.layer_shapes) whose logits
equal the model's with those gates at 0, up to float rounding.
"""
from __future__ import annotations

import numpy as np

from .masks import PruneError, check_fraction, count


def _check_float(params, name):
    if name not in params:
        raise PruneError(f"structured pruning needs float weights, but {name} is missing (a quantized model?)")


def head_importance(model, batches) -> list[np.ndarray]:
    """[I (H_i,) for each block]: the mean over batches (x, y) of |dL/dg|,
    L each batch's mean cross-entropy, g the head gates (1 where absent).
    The model's parameters are not changed."""
    # BEGIN SOLUTION
    from ..model import add_head_gates

    params, training = model.params, model.training
    model.params = add_head_gates(dict(params), model.config)  # a shallow copy gains the gates
    model.training = False
    total, n = None, 0
    try:
        for x, y in batches:
            model.forward(x, y)
            g = model.backward()
            grads = [np.abs(g[f"h.{i}.attn.head_gate"]).astype(np.float64) for i in range(model.config.n_layer)]
            total = grads if total is None else [a + b for a, b in zip(total, grads)]
            n += 1
    finally:
        model.params, model.training, model._caches = params, training, None
    if n == 0:
        raise PruneError("head importance needs at least one calibration batch")
    return [t / n for t in total]
    # END SOLUTION


def neuron_importance(model, batches) -> list[np.ndarray]:
    """[I (F_i,) for each block]: the mean over batches of
    |sum_c W2[n, c] dL/dW2[n, c]|, the gradient of a gate on neuron n."""
    L = model.config.n_layer
    for i in range(L):
        _check_float(model.params, f"h.{i}.mlp.c_proj.weight")
    training, model.training = model.training, False
    total, n = None, 0
    try:
        for x, y in batches:
            model.forward(x, y)
            g = model.backward()
            gates = []
            for i in range(L):
                w2 = model.params[f"h.{i}.mlp.c_proj.weight"].astype(np.float64)  # (F, C)
                gates.append(np.abs(np.einsum("fc,fc->f", w2, g[f"h.{i}.mlp.c_proj.weight"])))  # (F,)
            total = gates if total is None else [a + b for a, b in zip(total, gates)]
            n += 1
    finally:
        model.training, model._caches = training, None
    if n == 0:
        raise PruneError("neuron importance needs at least one calibration batch")
    return [t / n for t in total]


def lowest(scores: list[np.ndarray], fraction, scope="global") -> dict[int, list[int]]:
    """{layer: [indices]} of the units to remove: the round(a N) lowest
    scores of all N units together (scope="global"), or round(a N_i) of
    each layer ("layer"). Ties: the earlier layer, then the lower index."""
    a = check_fraction(fraction, "fraction of units to remove")
    out: dict[int, list[int]] = {}
    if scope == "layer":
        for i, s in enumerate(scores):
            order = np.argsort(s, kind="stable")[: count(a, s.size)]
            out[i] = sorted(int(j) for j in order)
        return out
    if scope != "global":
        raise PruneError(f"scope must be 'global' or 'layer', got {scope!r}")
    flat = np.concatenate(scores)
    owner = np.concatenate([np.full(s.size, i) for i, s in enumerate(scores)])
    local = np.concatenate([np.arange(s.size) for s in scores])
    for k in np.argsort(flat, kind="stable")[: count(a, flat.size)]:
        out.setdefault(int(owner[k]), []).append(int(local[k]))
    return {i: sorted(v) for i, v in sorted(out.items())}


def _kept(units, total, removed, layer, allow_empty) -> np.ndarray:
    """Indices kept of range(total) once `removed` are gone (PruneError for
    an index out of range, or for none left unless allow_empty)."""
    removed = sorted({int(j) for j in removed})
    bad = [j for j in removed if not 0 <= j < total]
    if bad:
        raise PruneError(f"layer {layer} has {total} {units}; cannot remove {units[:-1]} {bad[0]}")
    keep = np.array([j for j in range(total) if j not in set(removed)], dtype=np.int64)
    if keep.size == 0 and not allow_empty:
        raise PruneError(f"that would remove all {total} {units} of layer {layer}; keep at least one "
                         f"(a lower sparsity)")
    return keep


def remove_heads(arrays: dict, config, heads: dict, allow_empty=False) -> dict:
    """A copy of arrays (parameters, or masks of the same weights) without
    the heads {layer: [head indices]}: their q, k, v columns of c_attn,
    their rows of attn.c_proj and their gates. Each layer's head count is
    read off c_attn (3 H D wide, D = config.head_size)."""
    out, D = dict(arrays), config.head_size
    for i, removed in heads.items():
        p = f"h.{i}.attn."
        _check_float(arrays, p + "c_attn.weight")
        H = arrays[p + "c_attn.weight"].shape[1] // (3 * D)
        keep = _kept("heads", H, removed, i, allow_empty)
        dims = (keep[:, None] * D + np.arange(D)).reshape(-1)  # (len(keep) D,): the kept heads' dims
        cols = np.concatenate([part * H * D + dims for part in range(3)])  # q, k and v blocks
        for name, index, axis in (("c_attn.weight", cols, 1), ("c_attn.bias", cols, 0),
                                  ("c_proj.weight", dims, 0), ("head_gate", keep, 0)):
            if p + name in arrays:
                out[p + name] = np.take(arrays[p + name], index, axis=axis)
    return out


def remove_neurons(arrays: dict, config, neurons: dict, allow_empty=False) -> dict:
    """A copy of arrays without the MLP neurons {layer: [indices]}: their
    columns of mlp.c_fc (weight and bias) and rows of mlp.c_proj."""
    out = dict(arrays)
    for i, removed in neurons.items():
        p = f"h.{i}.mlp."
        _check_float(arrays, p + "c_fc.weight")
        F = arrays[p + "c_fc.weight"].shape[1]
        keep = _kept("neurons", F, removed, i, allow_empty)
        for name, axis in (("c_fc.weight", 1), ("c_fc.bias", 0), ("c_proj.weight", 0)):
            if p + name in arrays:
                out[p + name] = np.take(arrays[p + name], keep, axis=axis)
    return out


def gate_heads(params: dict, config, heads: dict) -> dict:
    """A copy of params with head gates, those of the given heads at 0
    (the same function as remove_heads, without changing any shape)."""
    from ..model import add_head_gates

    out = add_head_gates(dict(params), config)
    for i, removed in heads.items():
        g = out[f"h.{i}.attn.head_gate"].copy()
        g[list(removed)] = 0
        out[f"h.{i}.attn.head_gate"] = g
    return out


def gate_neurons(params: dict, neurons: dict) -> dict:
    """A copy of params whose given neurons' rows of mlp.c_proj are 0 (a
    gate of 0 on each: the same function as remove_neurons)."""
    out = dict(params)
    for i, removed in neurons.items():
        w = out[f"h.{i}.mlp.c_proj.weight"].copy()
        w[list(removed)] = 0
        out[f"h.{i}.mlp.c_proj.weight"] = w
    return out
