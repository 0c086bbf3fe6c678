"""A model with O(1) random weights, for the quantization tests.

GPT-2's initialisation (std 0.02) is too small for a rounding error to show
against float noise; weights of std 1/sqrt(fan_in) look like a trained
layer's scale. Every 2-D parameter (linears, embeddings) is redrawn; LayerNorm
parameters and biases keep their initial values.
"""
import numpy as np

from minigpt import GPT


def trained_like(cfg, seed=0):
    """GPT(cfg, seed) with each 2-D parameter p replaced by N(0, 1/p.shape[0]) in p's dtype."""
    model = GPT(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        if p.ndim == 2:
            model.params[name] = rng.normal(0, 1 / np.sqrt(p.shape[0]), p.shape).astype(p.dtype)
    return model
