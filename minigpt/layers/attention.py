"""Causal multi-head self-attention.

Core (one head, the NumPy reference that defines the op):
    S = Q K^T / sqrt(d_k) + M,   M[i, j] = -inf where j > i + (T_k - T_q), else 0
    P = softmax(S) (row-wise),   out = P V
Shapes:   q (B, H, T_q, D), k and v (B, H, T_k, D) -> out (B, H, T_q, D).
Usually T_q == T_k; with a KV cache the queries are the last T_q positions
of the T_k keys, which is why the mask is offset by T_k - T_q.

Multi-head wrapper (what a GPT-2 block calls):
    qkv (B, T, 3C) is split into q, k, v (B, T, C) each, every one reshaped to
    H heads of size D = C / H, attended, and the heads concatenated back to
    (B, T, C). The caller applies c_attn before and c_proj after.

The kernel that runs the core is chosen by name (``backend``); "numpy" is
the reference below, others register themselves in ATTENTION_BACKENDS.
"""
import math

import numpy as np


def causal_attention_forward(q, k, v):
    """out = softmax(q k^T / sqrt(D) + causal mask) v, with cache for backward."""
    T_q, D = q.shape[-2], q.shape[-1]
    T_k = k.shape[-2]
    scale = 1.0 / math.sqrt(D)
    s = (q @ k.swapaxes(-1, -2)) * scale  # (B, H, T_q, T_k)
    # query i sits at absolute position i + (T_k - T_q) and sees keys up to it
    future = np.arange(T_k)[None, :] > np.arange(T_q)[:, None] + (T_k - T_q)
    s = np.where(future, -np.inf, s)
    s = s - s.max(axis=-1, keepdims=True)  # every row has >= 1 visible key
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)  # (B, H, T_q, T_k)
    out = p @ v  # (B, H, T_q, D)
    return out, (q, k, v, p, scale)


def causal_attention_backward(dout, cache):
    """Returns (dq, dk, dv).

    out = P V                 ->  dP = dout V^T,  dV = P^T dout
    P = softmax(S) per row    ->  dS = P * (dP - sum_j(dP * P))
      (masked entries have P = 0, so they get no gradient)
    S = Q K^T * scale         ->  dQ = dS K * scale,  dK = dS^T Q * scale
    """
    q, k, v, p, scale = cache
    dv = p.swapaxes(-1, -2) @ dout  # (B, H, T_k, D)
    dp = dout @ v.swapaxes(-1, -2)  # (B, H, T_q, T_k)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dq = (ds @ k) * scale  # (B, H, T_q, D)
    dk = (ds.swapaxes(-1, -2) @ q) * scale  # (B, H, T_k, D)
    return dq, dk, dv


# name -> (forward, backward); kernels from minigpt.kernels add entries.
ATTENTION_BACKENDS = {"numpy": (causal_attention_forward, causal_attention_backward)}


def get_attention_backend(name):
    if name not in ATTENTION_BACKENDS:
        # importing the kernels package registers the compiled backends
        from .. import kernels  # noqa: F401
    if name not in ATTENTION_BACKENDS:
        from ..errors import ConfigError

        raise ConfigError(
            f"unknown backend {name!r}; choose one of {sorted(ATTENTION_BACKENDS)}"
        )
    return ATTENTION_BACKENDS[name]


def split_heads(x, n_head):
    """(B, T, C) -> (B, H, T, C/H)."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, T, D) -> (B, T, H*D): the inverse of split_heads."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def multihead_attention_forward(qkv, n_head, backend="numpy", kv_cache=None):
    """Causal attention over heads; qkv (B, T, 3C) -> out (B, T, C).

    kv_cache, if given, is a (k_past, v_past) pair of (B, H, T_past, D)
    arrays; the new keys and values are appended and the updated pair is
    returned as the cache's second element (inference only: no backward).
    """
    C = qkv.shape[-1] // 3
    q, k, v = (split_heads(a, n_head) for a in np.split(qkv, 3, axis=-1))  # (B, H, T, D)
    if kv_cache is not None:
        k_past, v_past = kv_cache
        k = np.concatenate([k_past, k], axis=2)  # (B, H, T_past + T, D)
        v = np.concatenate([v_past, v], axis=2)
    fwd, _ = get_attention_backend(backend)
    out, core_cache = fwd(np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v))
    out = merge_heads(out)  # (B, T, C)
    if kv_cache is not None:
        return out, (k, v)
    return out, (core_cache, n_head, backend, C)


def multihead_attention_backward(dout, cache):
    """Returns dqkv (B, T, 3C): the core's dq, dk, dv, heads merged and re-concatenated."""
    core_cache, n_head, backend, C = cache
    _, bwd = get_attention_backend(backend)
    dq, dk, dv = bwd(np.ascontiguousarray(split_heads(dout, n_head)), core_cache)
    return np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
