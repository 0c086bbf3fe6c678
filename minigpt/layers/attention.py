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

The core is a (forward, backward) pair passed in as ``kernel``: the NumPy
reference below by default, or a compiled kernel from the op table
(minigpt.ops.op_table(backend)["attention"]) that must agree with it.
A layer with no heads left (all pruned) attends to nothing: its output is
(B, T, 0) and c_proj then adds only its bias.
"""
import math

import numpy as np


def causal_attention_forward(q, k, v):
    """out = softmax(q k^T / sqrt(D) + causal mask) v, with cache for backward."""
    # BEGIN SOLUTION
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
    # END SOLUTION


def causal_attention_backward(dout, cache):
    """Returns (dq, dk, dv).

    out = P V                 ->  dP = dout V^T,  dV = P^T dout
    P = softmax(S) per row    ->  dS = P * (dP - sum_j(dP * P))
      (masked entries have P = 0, so they get no gradient)
    S = Q K^T * scale         ->  dQ = dS K * scale,  dK = dS^T Q * scale
    """
    # BEGIN SOLUTION
    q, k, v, p, scale = cache
    dv = p.swapaxes(-1, -2) @ dout  # (B, H, T_k, D)
    dp = dout @ v.swapaxes(-1, -2)  # (B, H, T_q, T_k)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dq = (ds @ k) * scale  # (B, H, T_q, D)
    dk = (ds.swapaxes(-1, -2) @ q) * scale  # (B, H, T_k, D)
    return dq, dk, dv
    # END SOLUTION


def split_heads(x, n_head):
    """(B, T, C) -> (B, H, T, C/H)."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, T, D) -> (B, T, H*D): the inverse of split_heads."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


class _KVStore:
    """Growing buffers of one layer's cached keys and values, stored transposed:
    kT, vT (B, H, D, capacity), of which the first `length` positions are filled."""

    def __init__(self, B, H, D, capacity, dtype):
        self.kT = np.zeros((B, H, D, capacity), dtype=dtype)
        self.vT = np.zeros((B, H, D, capacity), dtype=dtype)
        self.length = 0

    def fits(self, k):
        B, H, D, _ = self.kT.shape
        return k.shape[:2] == (B, H) and k.shape[3] == D and k.dtype == self.kT.dtype

    def append(self, k, v):
        """Write k, v (B, H, T, D) at positions length .. length + T - 1, doubling the capacity if needed."""
        L, T = self.length, k.shape[2]
        if L + T > self.kT.shape[3]:
            B, H, D, _ = self.kT.shape
            grown = _KVStore(B, H, D, max(2 * self.kT.shape[3], L + T), self.kT.dtype)
            grown.kT[..., :L] = self.kT[..., :L]
            grown.vT[..., :L] = self.vT[..., :L]
            self.kT, self.vT = grown.kT, grown.vT
        self.kT[..., L:L + T] = k.swapaxes(2, 3)  # (B, H, D, T)
        self.vT[..., L:L + T] = v.swapaxes(2, 3)
        self.length = L + T


class KVPast(tuple):
    """A layer's KV cache, the pair (k, v) of (B, H, T, D) arrays: views of the
    first T positions of a _KVStore (see multihead_attention_forward).

    Appending a new position to the newest KVPast of a store writes it in place
    (amortised O(1) a position, where concatenating copied the whole past
    every step); an older one (its store has moved on past it: a second
    continuation of the same past) starts a store of its own instead, so no
    KVPast ever sees its positions change. The transposed storage is the
    layout the decoding kernel (minigpt.kernels.attention) reads in place.
    """

    def __new__(cls, store):
        T = store.length
        obj = super().__new__(cls, (store.kT[..., :T].swapaxes(2, 3), store.vT[..., :T].swapaxes(2, 3)))
        obj.store, obj.length = store, T
        return obj


def _extend_kv(kv_cache, k, v):
    """The KVPast of the cached positions followed by k, v (B, H, T, D)."""
    if isinstance(kv_cache, KVPast) and kv_cache.store.length == kv_cache.length and kv_cache.store.fits(k):
        store = kv_cache.store  # the newest state of its store: append in place
    else:  # (None, None), a plain (k, v) pair, or an older KVPast: copy into a new store
        k_past, v_past = kv_cache
        T_past = 0 if k_past is None else k_past.shape[2]
        B, H, T, D = k.shape
        store = _KVStore(B, H, D, max(2 * (T_past + T), 64), k.dtype)
        if T_past:
            store.append(np.asarray(k_past, dtype=k.dtype), np.asarray(v_past, dtype=k.dtype))
    store.append(k, v)
    return KVPast(store)


def multihead_attention_forward(qkv, n_head, kernel=None, kv_cache=None):
    """Causal attention over heads; qkv (B, T, 3 H D) -> out (B, T, H D).

    n_head is this layer's head count H (a pruned layer may have fewer than
    the config's); the head size is D = width / (3 H). kernel is the core's
    (forward, backward) pair, the NumPy reference if None. A kernel pair
    that also has .on_qkv (the numba one, minigpt.kernels.attention.AttentionKernel)
    is run through that: the same op on qkv as it is, writing out (B, T, H D)
    directly, so no copies split the heads or merge them (nor dq, dk, dv in
    the backward); a KV cache still goes through split heads.
    kv_cache, if given, is a (k_past, v_past) pair of (B, H, T_past, D)
    arrays (or (None, None) before the first position); the new keys and values are appended and the updated pair, a
    KVPast, is returned as the cache's second element (inference only: no backward).
    """
    fwd, _ = kernel or (causal_attention_forward, causal_attention_backward)
    B, T, C3 = qkv.shape
    if n_head == 0:  # every head pruned: nothing to attend with
        out = np.zeros((B, T, 0), dtype=qkv.dtype)
        return out, (kv_cache if kv_cache is not None else (None, 0, kernel, False))
    on_qkv = getattr(kernel, "on_qkv", None)  # the same op straight on the packed qkv (kernels.attention)
    if on_qkv is not None and kv_cache is None:
        out, core_cache = on_qkv[0](qkv, n_head)  # (B, T, H D): no heads split out, none merged back
        return out, (core_cache, n_head, on_qkv, True)
    C = C3 // 3  # plain slices: np.split's generality costs ~10 us a call, per layer and token when decoding
    q, k, v = (split_heads(qkv[..., j * C:(j + 1) * C], n_head) for j in range(3))  # (B, H, T, D)
    if kv_cache is not None:  # (None, None): nothing cached yet
        kv_cache = _extend_kv(kv_cache, k, v)
        k, v = kv_cache  # (B, H, T_past + T, D), views of the cache's transposed store
        out, _ = fwd(np.ascontiguousarray(q), k, v)  # the kernel copies the views if its layout needs it
        return merge_heads(out), kv_cache  # (B, T, H D)
    out, core_cache = fwd(np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v))
    out = merge_heads(out)  # (B, T, H D)
    return out, (core_cache, n_head, kernel, False)


def multihead_attention_backward(dout, cache):
    """Returns dqkv (B, T, 3 H D): the core's dq, dk, dv, heads merged and re-concatenated."""
    core_cache, n_head, kernel, packed = cache
    _, bwd = kernel or (causal_attention_forward, causal_attention_backward)
    if n_head == 0:
        B, T, _ = dout.shape
        return np.zeros((B, T, 0), dtype=dout.dtype)
    if packed:  # the kernel's pair on the packed layout: dq, dk, dv written straight into dqkv
        return bwd(dout, core_cache)  # (B, T, 3 H D)
    dq, dk, dv = bwd(np.ascontiguousarray(split_heads(dout, n_head)), core_cache)
    return np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
