"""Choosing the next token from the last position's logits.

With temperature tau, p = softmax(z / tau); tau = 0 means greedy (argmax).
top-k keeps the k largest logits; top-p (nucleus) keeps the smallest set of
most likely tokens whose probabilities sum to at least p. The rest get
probability 0 and the kept ones are renormalised.
"""
from __future__ import annotations

import time

import numpy as np

from .errors import ConfigError


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def check_sampling_args(temperature, top_k, top_p):
    if not _is_number(temperature) or not np.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature must be a number >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1):
        raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and (not _is_number(top_p) or not 0.0 < top_p <= 1.0):
        raise ConfigError(f"top_p must be in (0, 1], got {top_p!r}")


def next_token_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """(B, V) logits -> (B, V) float64 probabilities after temperature, top-k and top-p."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]  # k-th largest
        z = np.where(z < kth, -np.inf, z)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass ranked above each token
        keep_sorted = before < top_p  # the first token is always kept
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def sample_next_token(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """(B, V) logits -> (B,) int token ids."""
    if temperature == 0:
        return np.argmax(logits, axis=-1)
    p = next_token_probs(logits, temperature, top_k, top_p)
    cdf = np.cumsum(p, axis=-1)
    u = rng.random((p.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=-1), p.shape[-1] - 1)


def generation_speeds(models, tokens, rounds=5) -> list[float]:
    """Tokens per second of greedy generation with the KV cache for each
    model: the median of `rounds` rounds that time every model once in turn,
    so a burst of load from other programs falls on all of them alike."""
    prompt = np.zeros(1, dtype=np.int64)
    for m in models:
        m.generate(prompt, 2, temperature=0.0)  # compiles or loads the kernels outside the clock
    times = [[] for _ in models]
    for _ in range(rounds):
        for m, t in zip(models, times):
            t0 = time.perf_counter()
            m.generate(prompt, tokens, temperature=0.0)
            t.append(time.perf_counter() - t0)
    return [tokens / float(np.median(t)) for t in times]
