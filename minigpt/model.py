"""GPT-2 in NumPy: parameters in one dict, a forward that keeps caches, a
backward that walks them in reverse, and sampling with a KV cache.

    x = wte[idx] + wpe[pos]                        (B, T, C)
    for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    logits = ln_f(x) @ wte^T                       (B, T, V)
    loss = mean cross-entropy(logits, targets)

Dropout (training only, probability config.dropout) follows the embedding
and each residual branch. GPT-2 also drops attention probabilities; we leave
that out so the attention kernels stay a pure softmax(QK^T/sqrt(d)) V.
"""
from __future__ import annotations

import math

import numpy as np

from .config import GPTConfig
from .errors import ConfigError
from .layers import (
    cross_entropy_backward,
    cross_entropy_forward,
    dropout_backward,
    dropout_forward,
    embedding_backward,
    embedding_forward,
    linear_backward,
    linear_forward,
    lm_head_backward,
    lm_head_forward,
    multihead_attention_backward,
    multihead_attention_forward,
)
from .layers.attention import get_attention_backend
from .layers.backends import get_ops
from .sampling import check_sampling_args, sample_next_token

DEFAULT_BACKEND = "numba"  # minigpt.kernels; "numpy" is the reference that defines each op


def param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's GPT-2 name and shape, in GPT-2's order."""
    V, T, C = config.vocab_size, config.block_size, config.n_embd
    shapes = {"wte.weight": (V, C), "wpe.weight": (T, C)}
    for i in range(config.n_layer):
        h = f"h.{i}."
        shapes.update({
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (C, 4 * C), h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def init_params(config: GPTConfig, seed=0) -> dict[str, np.ndarray]:
    """GPT-2 initialisation: weights ~ N(0, 0.02^2), the two residual
    projections (attn.c_proj, mlp.c_proj) ~ N(0, (0.02 / sqrt(2 n_layer))^2)
    so the residual stream's variance does not grow with depth; biases 0,
    LayerNorm gains 1."""
    rng = np.random.default_rng(seed)
    resid_std = 0.02 / math.sqrt(2 * config.n_layer)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".bias"):
            p = np.zeros(shape)
        elif ".ln_" in name or name.startswith("ln_"):
            p = np.ones(shape)
        elif name.endswith("c_proj.weight"):
            p = rng.normal(0.0, resid_std, shape)
        else:
            p = rng.normal(0.0, 0.02, shape)
        params[name] = p.astype(config.dtype)
    return params


class KVCache:
    """Keys and values of the positions seen so far: one (k, v) pair per
    layer, each (B, H, T_past, D). Used only for inference."""

    def __init__(self, config: GPTConfig, batch_size: int):
        D, H = config.head_size, config.n_head
        empty = np.zeros((batch_size, H, 0, D), dtype=config.dtype)
        self.layers = [(empty, empty) for _ in range(config.n_layer)]

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[2]


class GPT:
    """A GPT-2 model.

    model = GPT(config, seed=0)
    logits, loss = model.forward(idx, targets)   # idx, targets: (B, T) ints
    grads = model.backward()                     # same keys/shapes as model.params
    """

    def __init__(self, config: GPTConfig, seed=0, params=None, backend=None, tokenizer=None):
        self.config = config
        self.params = init_params(config, seed) if params is None else params
        self.backend = backend or DEFAULT_BACKEND
        get_attention_backend(self.backend)  # fail early on an unknown name
        self.tokenizer = tokenizer
        self.training = False  # dropout is active only while True
        self.rng = np.random.default_rng(seed)  # dropout masks
        self._caches = None
        self._ops = None  # the (forward, backward) table the last forward used

    # ---------------------------------------------------------------- forward
    def forward(self, idx, targets=None, kv_cache: KVCache | None = None):
        """idx (B, T) ints -> (logits (B, T, V), loss or None).

        With targets, the caches for backward() are kept. With a kv_cache,
        idx holds only the new positions; their keys/values are appended to
        the cache (inference: no backward).
        """
        cfg, P = self.config, self.params
        idx = np.asarray(idx)
        if idx.ndim != 2:
            raise ConfigError(f"idx must be a (B, T) array, got shape {idx.shape}")
        B, T = idx.shape
        offset = 0 if kv_cache is None else kv_cache.length
        if offset + T > cfg.block_size:
            raise ConfigError(
                f"sequence length {offset + T} exceeds block_size={cfg.block_size}"
            )
        if idx.size and (idx.min() < 0 or idx.max() >= cfg.vocab_size):
            raise ConfigError(f"token ids must lie in [0, {cfg.vocab_size})")
        train = self.training and kv_cache is None
        p_drop = cfg.dropout
        ops = get_ops(self.backend)  # kernels for this backend; backward uses the same ones
        layernorm_forward, gelu_forward = ops["layernorm"][0], ops["gelu"][0]
        caches = {}

        x, caches["emb"] = embedding_forward(idx, P["wte.weight"], P["wpe.weight"], offset)
        x, caches["emb_drop"] = dropout_forward(x, p_drop, self.rng, train)  # (B, T, C)
        for i in range(cfg.n_layer):
            h = f"h.{i}."
            # attention branch
            a, caches[h + "ln_1"] = layernorm_forward(x, P[h + "ln_1.weight"], P[h + "ln_1.bias"])
            a, caches[h + "c_attn"] = linear_forward(a, P[h + "attn.c_attn.weight"], P[h + "attn.c_attn.bias"])  # (B, T, 3C)
            layer_kv = None if kv_cache is None else kv_cache.layers[i]
            a, attn_cache = multihead_attention_forward(a, cfg.n_head, self.backend, layer_kv)  # (B, T, C)
            if kv_cache is None:
                caches[h + "attn"] = attn_cache
            else:
                kv_cache.layers[i] = attn_cache
            a, caches[h + "attn.c_proj"] = linear_forward(a, P[h + "attn.c_proj.weight"], P[h + "attn.c_proj.bias"])
            a, caches[h + "attn_drop"] = dropout_forward(a, p_drop, self.rng, train)
            x = x + a  # (B, T, C) residual
            # MLP branch
            m, caches[h + "ln_2"] = layernorm_forward(x, P[h + "ln_2.weight"], P[h + "ln_2.bias"])
            m, caches[h + "c_fc"] = linear_forward(m, P[h + "mlp.c_fc.weight"], P[h + "mlp.c_fc.bias"])  # (B, T, 4C)
            m, caches[h + "gelu"] = gelu_forward(m)
            m, caches[h + "mlp.c_proj"] = linear_forward(m, P[h + "mlp.c_proj.weight"], P[h + "mlp.c_proj.bias"])  # (B, T, C)
            m, caches[h + "mlp_drop"] = dropout_forward(m, p_drop, self.rng, train)
            x = x + m  # (B, T, C) residual
        x, caches["ln_f"] = layernorm_forward(x, P["ln_f.weight"], P["ln_f.bias"])
        logits, caches["lm_head"] = lm_head_forward(x, P["wte.weight"])  # (B, T, V)

        loss = None
        if targets is not None:
            loss, caches["loss"] = cross_entropy_forward(logits, np.asarray(targets))
            loss = float(loss)
        self._caches = caches if (targets is not None and kv_cache is None) else None
        self._ops = ops
        return logits, loss

    # --------------------------------------------------------------- backward
    def backward(self) -> dict[str, np.ndarray]:
        """Gradient of the last forward's mean loss w.r.t. every parameter."""
        if self._caches is None:
            raise RuntimeError("backward() needs a forward(idx, targets) first")
        c, cfg = self._caches, self.config
        layernorm_backward, gelu_backward = self._ops["layernorm"][1], self._ops["gelu"][1]
        g = {}
        dlogits = cross_entropy_backward(1.0, c["loss"])  # (B, T, V)
        dx, g["wte.weight"] = lm_head_backward(dlogits, c["lm_head"])
        dx, g["ln_f.weight"], g["ln_f.bias"] = layernorm_backward(dx, c["ln_f"])
        for i in reversed(range(cfg.n_layer)):
            h = f"h.{i}."
            # x = x + m: the residual passes dx through and also feeds the MLP branch
            dm = dropout_backward(dx, c[h + "mlp_drop"])
            dm, g[h + "mlp.c_proj.weight"], g[h + "mlp.c_proj.bias"] = linear_backward(dm, c[h + "mlp.c_proj"])
            dm = gelu_backward(dm, c[h + "gelu"])
            dm, g[h + "mlp.c_fc.weight"], g[h + "mlp.c_fc.bias"] = linear_backward(dm, c[h + "c_fc"])
            dm, g[h + "ln_2.weight"], g[h + "ln_2.bias"] = layernorm_backward(dm, c[h + "ln_2"])
            dx = dx + dm
            # x = x + a: same for the attention branch
            da = dropout_backward(dx, c[h + "attn_drop"])
            da, g[h + "attn.c_proj.weight"], g[h + "attn.c_proj.bias"] = linear_backward(da, c[h + "attn.c_proj"])
            da = multihead_attention_backward(da, c[h + "attn"])  # (B, T, 3C)
            da, g[h + "attn.c_attn.weight"], g[h + "attn.c_attn.bias"] = linear_backward(da, c[h + "c_attn"])
            da, g[h + "ln_1.weight"], g[h + "ln_1.bias"] = layernorm_backward(da, c[h + "ln_1"])
            dx = dx + da
        dx = dropout_backward(dx, c["emb_drop"])
        dwte, g["wpe.weight"] = embedding_backward(dx, c["emb"])
        g["wte.weight"] = g["wte.weight"] + dwte  # tied: head and embedding share wte
        return {name: g[name] for name in self.params}  # GPT-2 order

    # ---------------------------------------------------------------- helpers
    def num_params(self) -> int:
        return sum(p.size for p in self.params.values())

    def loss(self, idx, targets) -> float:
        """Mean loss without keeping caches (evaluation)."""
        training, self.training = self.training, False
        try:
            _, loss = self.forward(idx, targets)
        finally:
            self.training = training
            self._caches = None
        return loss

    # --------------------------------------------------------------- sampling
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 seed=None, rng=None, use_kv_cache=True):
        """Extend idx ((T,) or (B, T) ints) by max_new_tokens sampled tokens.

        temperature=0 is greedy decoding. Only the last block_size tokens are
        ever used as context. With the KV cache each new token costs one
        position's worth of compute; once the context window is full it
        slides, positions shift, and the cache is rebuilt from the window.
        """
        check_sampling_args(temperature, top_k, top_p)
        rng = rng if rng is not None else np.random.default_rng(seed)
        idx = np.asarray(idx, dtype=np.int64)
        squeeze = idx.ndim == 1
        idx = idx[None, :] if squeeze else idx
        if idx.shape[1] == 0:
            raise ConfigError("the prompt must hold at least one token")
        T_max = self.config.block_size
        training, self.training = self.training, False
        cache = None
        try:
            for _ in range(max_new_tokens):
                if not use_kv_cache:
                    logits, _ = self.forward(idx[:, -T_max:])
                elif cache is None or cache.length >= T_max:
                    cache = KVCache(self.config, idx.shape[0])
                    logits, _ = self.forward(idx[:, -T_max:], kv_cache=cache)
                else:
                    logits, _ = self.forward(idx[:, -1:], kv_cache=cache)
                nxt = sample_next_token(logits[:, -1, :], rng, temperature, top_k, top_p)
                idx = np.concatenate([idx, nxt[:, None].astype(np.int64)], axis=1)
        finally:
            self.training = training
        return idx[0] if squeeze else idx

    def generate_text(self, prompt: str, max_new_tokens: int, **kwargs) -> str:
        """Encode prompt with model.tokenizer, generate, decode (prompt included)."""
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer; use generate() with token ids")
        ids = self.generate(self.tokenizer.encode(prompt), max_new_tokens, **kwargs)
        return self.tokenizer.decode(ids)

    # ------------------------------------------------------------ checkpoints
    def save(self, path, **state):
        """Write the model (and its tokenizer) to one .npz, atomically."""
        from .checkpoint import save_checkpoint

        save_checkpoint(path, self, **state)

    @classmethod
    def load(cls, path, backend=None) -> "GPT":
        from .checkpoint import load_checkpoint

        return load_checkpoint(path, backend=backend).model
