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

    Reads them through model.activations(idx, attention_probs=True): one
    inference forward (no dropout) with the NumPy reference attention, whose
    cache keeps P (a compiled kernel need not store it).
    """
    idx = np.asarray(idx)
    squeeze = idx.ndim == 1
    acts = model.activations(idx[None, :] if squeeze else idx, attention_probs=True)
    maps = [acts[f"h.{i}.attn.probs"] for i in range(model.config.n_layer)]  # (B, H, T, T) each
    return [p[0] for p in maps] if squeeze else maps
