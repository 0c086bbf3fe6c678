"""Looking inside a model: the attention probabilities of every layer and head.

    P[l][b, h, i, j] = softmax(q_i . k_j / sqrt(D) + M[i, j])    (layer l, head h)

how much query position i draws on key position j. Each row sums to 1 and
is zero right of the diagonal (the causal mask M).
Shapes: idx (B, T) or (T,) ints -> a list of n_layer arrays (B, H, T, T),
or (H, T, T) each for a 1-D idx.
"""
from __future__ import annotations

import numpy as np


def attention_maps(model, idx) -> list[np.ndarray]:
    """Attention probabilities of every layer for the tokens idx.

    Runs the model's own forward once with the NumPy reference attention,
    whose cache keeps P (a compiled backend need not store it), then restores
    the model's backend. Dropout is off, so the maps are the inference maps.
    """
    idx = np.asarray(idx)
    squeeze = idx.ndim == 1
    idx2 = idx[None, :] if squeeze else idx  # (B, T)
    backend, training = model.backend, model.training
    model.backend, model.training = "numpy", False
    try:
        # targets make forward keep its caches; their values do not matter
        model.forward(idx2, targets=np.zeros_like(idx2))
        caches = model._caches
    finally:
        model.backend, model.training = backend, training
        model._caches = None
    maps = []
    for i in range(model.config.n_layer):
        core_cache = caches[f"h.{i}.attn"][0]  # (q, k, v, p, scale) of the reference
        p = core_cache[3]  # (B, H, T, T)
        maps.append(p[0] if squeeze else p)
    return maps
