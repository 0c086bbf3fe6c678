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

from .checkpoint import Checkpoint, checkpoint_state, read_checkpoint, save_checkpoint
from .config import GPTConfig
from .errors import CheckpointError, ConfigError
from .kernels.block_formats import BLOCK, BLOCK_BYTES
from .layers.block import block_backward, block_forward
from .layers.cross_entropy import cross_entropy_backward, cross_entropy_forward
from .layers.dropout import dropout_backward, dropout_forward
from .layers.embedding import embedding_backward, embedding_forward
from .layers.lm_head import lm_head_backward, lm_head_forward
from .layers.quantized_embedding import head_arrays, head_format, quantized_embedding_forward
from .layers.quantized_embedding import quantized_head_backward, quantized_head_forward
from .layers.sparse_linear import SPARSE_KEYS, csr_problem
from .ops import check_backend, op_table
from .sampling import check_sampling_args, sample_next_token

DEFAULT_BACKEND = "numba"  # minigpt.kernels; "numpy" is the reference that defines each op


def param_shapes(config: GPTConfig, layers=None) -> dict[str, tuple[int, ...]]:
    """Every parameter's GPT-2 name and shape, in GPT-2's order.

    layers: one (n_head, mlp_width) pair per block; None gives GPT-2's
    uniform shapes (config.n_head heads, an MLP 4C wide). Heads always have
    config.head_size = C / config.n_head dimensions, so a block with H heads
    has c_attn (C, 3 H D) and c_proj (H D, C).
    """
    V, T, C, D = config.vocab_size, config.block_size, config.n_embd, config.head_size
    layers = layers or [(config.n_head, 4 * C)] * config.n_layer
    shapes = {"wte.weight": (V, C), "wpe.weight": (T, C)}
    for i, (H, F) in enumerate(layers):
        h = f"h.{i}."
        shapes.update({
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (C, 3 * H * D), h + "attn.c_attn.bias": (3 * H * D,),
            h + "attn.c_proj.weight": (H * D, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (C, F), h + "mlp.c_fc.bias": (F,),
            h + "mlp.c_proj.weight": (F, C), h + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def layer_shapes(params: dict, config: GPTConfig) -> list[tuple[int, int]]:
    """Each block's (n_head, mlp_width), read off its weights: heads from the
    width of c_attn's bias (3 H D), the MLP width from c_fc's bias."""
    D = config.head_size
    out = []
    for i in range(config.n_layer):
        qkv = params[f"h.{i}.attn.c_attn.bias"].shape[0]
        if qkv % (3 * D):
            raise ConfigError(f"h.{i}.attn.c_attn.bias has {qkv} entries, not a multiple of 3 x head size {D}")
        out.append((qkv // (3 * D), params[f"h.{i}.mlp.c_fc.bias"].shape[0]))
    return out


def is_uniform(params: dict, config: GPTConfig) -> bool:
    """True if every block has config.n_head heads and a 4C-wide MLP (GPT-2's own shapes)."""
    return all(s == (config.n_head, 4 * config.n_embd) for s in layer_shapes(params, config))


def check_params(params: dict, config: GPTConfig, error=ConfigError, where=""):
    """Raise `error` naming the first tensor that is missing, unexpected,
    misshapen or of the wrong dtype. Blocks may differ in heads and MLP
    width, but each block's tensors must agree with each other."""
    prefix = f"{where}: " if where else ""
    names = set(params)
    for i in range(config.n_layer):
        for k in ("attn.c_attn.bias", "mlp.c_fc.bias"):
            if f"h.{i}.{k}" not in names:
                raise error(f"{prefix}missing parameter h.{i}.{k}")
    try:
        layers = layer_shapes(params, config)
    except ConfigError as e:
        raise error(f"{prefix}{e}") from None
    expected = param_shapes(config, layers)
    gates = {f"h.{i}.attn.head_gate": (H,) for i, (H, _) in enumerate(layers)}
    quantized = _quantized_expected(params, expected, error, prefix)
    quantized.update(_sparse_expected(params, expected, error, prefix))
    quantized.update(_head_expected(params, config, error, prefix))
    for name in quantized:
        expected.pop(name[: name.index(".weight") + len(".weight")], None)
    missing = [k for k in expected if k not in names]
    if missing:
        raise error(f"{prefix}missing parameters {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    unknown = [k for k in params if k not in expected and k not in gates and k not in quantized]
    if unknown:
        raise error(f"{prefix}unexpected parameters {unknown[:5]}")
    for name, a in params.items():
        if not isinstance(a, np.ndarray):
            raise error(f"{prefix}parameter {name} is a {type(a).__name__}, not a NumPy array")
        if name in quantized:
            shape, dtype = quantized[name]
            if a.shape != shape or a.dtype != np.dtype(dtype):
                raise error(f"{prefix}quantized parameter {name} is {a.dtype} {a.shape}, but its layer "
                            f"needs {np.dtype(dtype)} {shape}")
            continue
        shape = expected.get(name) or gates[name]
        if a.shape != shape:
            raise error(f"{prefix}parameter {name} has shape {a.shape}, but the config needs {shape} "
                        f"(given n_embd, head size and its layer's c_attn/c_fc widths)")
        if a.dtype != np.dtype(config.dtype):
            raise error(f"{prefix}parameter {name} is {a.dtype}, config says {config.dtype}")


def _quantized_expected(params, expected, error, prefix) -> dict:
    """{name: (shape, dtype)} of every integer-weight array in params, from the
    float weight's shape it stands for (minigpt.layers.quantized_linear)."""
    out = {}
    for wname, shape in expected.items():
        if not wname.endswith(".weight") or wname in params or len(shape) != 2 or not wname.startswith("h."):
            continue
        K, N = shape
        fdtype = params[wname[: -len(".weight")] + ".bias"].dtype
        if wname + ".int8" in params:
            out.update({wname + ".int8": ((N, K), np.int8), wname + ".scale": ((N,), fdtype)})
        elif wname + ".w8a8" in params:
            out.update({wname + ".w8a8": ((N, K), np.int8), wname + ".scale": ((N,), fdtype)})
        elif any(f"{wname}.{fmt}" in params for fmt in BLOCK_BYTES):
            fmt = next(f for f in BLOCK_BYTES if f"{wname}.{f}" in params)
            if K % BLOCK:
                raise error(f"{prefix}{wname}.{fmt} stands for {K} inputs, not a multiple of {BLOCK}")
            out[f"{wname}.{fmt}"] = ((N, K // BLOCK * BLOCK_BYTES[fmt]), np.uint8)
        elif wname + ".kmeans_idx" in params:
            out.update(_kmeans_expected(params, wname, (K, N), fdtype, error, prefix))
        elif wname + ".int4" in params:
            g = params.get(wname + ".group")
            if g is None or g.shape != () or g.dtype.kind != "i" or g <= 0 or g % 2 or K % g:
                raise error(f"{prefix}{wname}.group must be an even positive integer dividing {K}")
            g = int(g)
            out.update({wname + ".int4": ((K // 2, N), np.uint8), wname + ".scales": ((K // g, N), fdtype),
                        wname + ".group": ((), np.int64)})
    return out


def _head_expected(params, config, error, prefix) -> dict:
    """{name: (shape, dtype)} of an integer tied embedding / head (minigpt.layers.quantized_embedding):
    wte.weight.int8 (V, C) int8 and its per-row wte.weight.scale (V,) in the config's dtype."""
    if "wte.weight" in params or "wte.weight.int8" not in params:
        return {}  # a float wte, or none at all (reported missing), or both (reported unexpected)
    if "wte.weight.scale" not in params:
        raise error(f"{prefix}wte.weight.int8 has no wte.weight.scale (the int8 head's one scale per row)")
    V, C = config.vocab_size, config.n_embd
    return {"wte.weight.int8": ((V, C), np.int8), "wte.weight.scale": ((V,), config.dtype)}


def _kmeans_expected(params, wname, shape, fdtype, error, prefix) -> dict:
    """{name: (shape, dtype)} of a k-means weight (minigpt.quant.kmeans), once its
    codebook is checked to hold 2..256 values and every index to point into it."""
    book, idx = params.get(wname + ".codebook"), params[wname + ".kmeans_idx"]
    if not isinstance(book, np.ndarray) or book.ndim != 1 or not 2 <= book.shape[0] <= 256:
        raise error(f"{prefix}{wname}.codebook must be a 1-D array of 2 to 256 values")
    if isinstance(idx, np.ndarray) and idx.dtype == np.uint8 and idx.size and int(idx.max()) >= book.shape[0]:
        raise error(f"{prefix}{wname}.kmeans_idx holds index {int(idx.max())}, but the codebook has "
                    f"{book.shape[0]} values")
    return {wname + ".kmeans_idx": (shape, np.uint8), wname + ".codebook": (book.shape, fdtype)}


def _sparse_expected(params, expected, error, prefix) -> dict:
    """{name: (shape, dtype)} of every CSR array in params (minigpt.layers.sparse_linear),
    once they are checked to describe a valid sparse weight of the expected shape."""
    out = {}
    for wname, shape in expected.items():
        if wname + ".csr_indptr" not in params or wname in params or len(shape) != 2:
            continue  # (a weight stored both dense and sparse: its CSR arrays are reported as unexpected)
        names = [f"{wname}.{key}" for key in SPARSE_KEYS]
        for n in names:
            if not isinstance(params.get(n), np.ndarray):
                raise error(f"{prefix}sparse weight {wname} has no array {n}")
        arrays = {key[len("csr_"):]: params[n] for key, n in zip(SPARSE_KEYS, names)}
        bias = params.get(wname[: -len(".weight")] + ".bias")
        problem = csr_problem(arrays, *shape)
        if problem is None and bias is not None and arrays["values"].dtype != bias.dtype:
            problem = f"csr_values is {arrays['values'].dtype}, but the layer computes in {bias.dtype}"
        if problem:
            raise error(f"{prefix}sparse weight {wname}: {problem}")
        out.update({n: (params[n].shape, params[n].dtype) for n in names})
    return out


def add_head_gates(params: dict, config: GPTConfig) -> dict:
    """Put a gate of ones (H,) on every block's heads, in place; returns params.
    A gate of 1 changes nothing; set an entry to 0 to switch that head off."""
    for i, (H, _) in enumerate(layer_shapes(params, config)):
        params.setdefault(f"h.{i}.attn.head_gate", np.ones(H, dtype=config.dtype))
    return params


def fold_head_gates(params: dict, config: GPTConfig) -> dict:
    """A copy of params without head gates and with the same function: the gate
    g[h] scales head h's rows of attn.c_proj.weight (c_proj(g * y) = (g * y) W
    = y (diag(g) W)); GPT-2's own format has no gates."""
    out = {k: v for k, v in params.items() if not k.endswith("attn.head_gate")}
    D = config.head_size
    for i in range(config.n_layer):
        g = params.get(f"h.{i}.attn.head_gate")
        if g is not None:
            w = out[f"h.{i}.attn.c_proj.weight"]  # (H D, C)
            out[f"h.{i}.attn.c_proj.weight"] = w * np.repeat(g, D)[:, None].astype(w.dtype)
    return out


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
    layer, each (B, H_l, T_past, D), None until the first forward fills it.
    The pairs are KVPast views (minigpt.layers.attention) of growing buffers:
    a new position is written in place, not concatenated to a copy of the
    past, and the decoding kernel reads them where they are.
    Used only for inference."""

    def __init__(self, config: GPTConfig, batch_size: int):
        self.batch_size = batch_size
        self.layers = [None] * config.n_layer
        self.length = 0  # positions cached so far


class GPT:
    """A GPT-2 model.

    model = GPT(config, seed=0)
    logits, loss = model.forward(idx, targets)   # idx, targets: (B, T) ints
    grads = model.backward()                     # same keys/shapes as model.params
    grads = model.backward(dlogits)              # from any upstream gradient (B, T, V)
    acts = model.activations(idx)                # inputs of every linear layer, block outputs
    """

    def __init__(self, config: GPTConfig, seed=0, params=None, backend=None, tokenizer=None):
        self.config = config
        self.params = init_params(config, seed) if params is None else params
        if params is not None:
            check_params(self.params, config)
        self.backend = check_backend(backend or DEFAULT_BACKEND)
        self.tokenizer = tokenizer
        self.training = False  # dropout is active only while True
        self.rng = np.random.default_rng(seed)  # dropout masks
        self._caches = None

    def block_params(self, i: int) -> dict:
        """Block i's parameters under their names inside the block ("ln_1.weight", ...): a fresh dict."""
        return dict(self._block_dicts()[i])

    def _block_dicts(self) -> list[dict]:
        """Every block's parameter dict, rebuilt only when model.params changed.

        Splitting ~150 names by prefix costs about 1 ms a forward, which is
        5% of a decoding step. The dicts hold references, so training's
        in-place updates show through; a new array under a name (pruning,
        quantizing, loading), an added or removed name (head gates, CSR
        weights) or a new params dict changes the key below and rebuilds
        them. Ids stay unique while the dicts keep the old arrays alive.
        """
        P = self.params
        key = (id(P), tuple(P), tuple(map(id, P.values())))
        if getattr(self, "_blocks_key", None) != key:
            blocks = [{} for _ in range(self.config.n_layer)]
            for name, v in P.items():
                if name.startswith("h."):
                    i, rest = name[2:].split(".", 1)
                    if int(i) < len(blocks):
                        blocks[int(i)][rest] = v
            self._blocks, self._blocks_key = blocks, key
        return self._blocks

    def layer_shapes(self) -> list[tuple[int, int]]:
        """Each block's (n_head, mlp_width), read off its weights."""
        return layer_shapes(self.params, self.config)

    # ---------------------------------------------------------------- forward
    def forward(self, idx, targets=None, kv_cache: KVCache | None = None, keep_cache=None, last_only=False):
        """idx (B, T) ints -> (logits (B, T, V), loss or None).

        The caches for backward() (and activations()) are kept when targets
        are given, or when keep_cache=True. With a kv_cache, idx holds only
        the new positions; their keys/values are appended to the cache
        (inference: no backward). last_only: logits of the last position
        only, (B, 1, V), what sampling reads (no targets, no backward).
        """
        if last_only and (targets is not None or keep_cache):
            raise ValueError("last_only=True gives no loss and keeps no caches")
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
        ops = op_table(self.backend)
        caches = {}

        head = head_format(P)  # None: wte in float; "int8": the opt-in integer embedding / tied head
        if head:
            x, caches["emb"] = quantized_embedding_forward(idx, *head_arrays(P), P["wpe.weight"], offset)  # (B, T, C)
        else:
            x, caches["emb"] = embedding_forward(idx, P["wte.weight"], P["wpe.weight"], offset)  # (B, T, C)
        x, caches["emb.drop"] = dropout_forward(x, cfg.dropout, self.rng, train)
        for i, p in enumerate(self._block_dicts()):
            layer_kv = None if kv_cache is None else (kv_cache.layers[i] or (None, None))
            x, cache = block_forward(x, p, cfg.head_size, ops, cfg.dropout,
                                     self.rng, train, layer_kv)  # (B, T, C)
            if kv_cache is None:
                caches[f"h.{i}"] = cache
            else:
                kv_cache.layers[i] = cache["attn"]
        if last_only:  # the head is V x C (38.6M multiply-adds at GPT-2's vocab) for every row it gets
            x = x[:, -1:]  # (B, 1, C)
        x, caches["ln_f"] = ops["layernorm"][0](x, P["ln_f.weight"], P["ln_f.bias"])
        if head:  # the int8 weight product; a decoding row reads V x C bytes, a quarter of float32's
            logits, caches["lm_head"] = quantized_head_forward(x, *head_arrays(P), ops["int8_weight_matmul"][0])
        elif kv_cache is None and not last_only:
            logits, caches["lm_head"] = lm_head_forward(x, P["wte.weight"])  # (B, T, V)
        else:  # inference: the head as the backend's linear, which splits a product over the thread budget
            wte = P["wte.weight"]  # (V, C): 154 MB at GPT-2's shape, read once a token; one thread per
            # core reads it faster (the split cuts V at multiples of 8 rows for GPT-2's vocab: the same sums)
            logits, _ = ops["linear"][0](x, wte.T, np.zeros(wte.shape[0], dtype=wte.dtype))  # (B, T, V)

        loss = None
        if targets is not None:
            loss, caches["loss"] = cross_entropy_forward(logits, np.asarray(targets))
            loss = float(loss)
        if kv_cache is not None:
            kv_cache.length += T
        keep = kv_cache is None and (targets is not None if keep_cache is None else keep_cache)
        self._caches = caches if keep else None
        self._ops = ops
        return logits, loss

    # --------------------------------------------------------------- backward
    def backward(self, dlogits=None) -> dict[str, np.ndarray]:
        """Gradient w.r.t. every parameter, from the last forward.

        dlogits None: of that forward's mean cross-entropy loss. Otherwise
        dlogits (B, T, V) is the upstream gradient dL/dlogits of any loss L
        computed from the logits (a distillation loss, say), and the result
        is dL/dparams. A dict {"logits": (B, T, V), "h.{i}": (B, T, C), ...}
        adds upstream gradients w.r.t. block outputs (activations()'s "h.{i}",
        e.g. hidden-state matching) where the backward passes them.
        """
        if self._caches is None:
            raise RuntimeError("backward() needs a forward(idx, targets) (or keep_cache=True) first")
        c, cfg = self._caches, self.config
        hidden = {}
        if isinstance(dlogits, dict):
            hidden = dict(dlogits)
            dlogits = hidden.pop("logits")
            if set(hidden) - {f"h.{i}" for i in range(cfg.n_layer)}:
                raise ValueError(f"backward() takes gradients of 'logits' and 'h.0'..'h.{cfg.n_layer - 1}', "
                                 f"not {sorted(set(hidden) - {f'h.{i}' for i in range(cfg.n_layer)})}")
        if dlogits is None:
            if "loss" not in c:
                raise RuntimeError("backward() without dlogits needs a forward with targets")
            dlogits = cross_entropy_backward(1.0, c["loss"])  # (B, T, V)
        elif np.shape(dlogits) != c["lm_head"][0].shape[:-1] + (cfg.vocab_size,):
            raise ValueError(f"dlogits has shape {np.shape(dlogits)}, the logits "
                             f"{c['lm_head'][0].shape[:-1] + (cfg.vocab_size,)}")
        g = {}
        if head_format(self.params):  # an integer wte is frozen: dx only
            dx = quantized_head_backward(dlogits, c["lm_head"])
        else:
            dx, g["wte.weight"] = lm_head_backward(dlogits, c["lm_head"])
        dx, g["ln_f.weight"], g["ln_f.bias"] = self._ops["layernorm"][1](dx, c["ln_f"])
        for i in reversed(range(cfg.n_layer)):
            if f"h.{i}" in hidden:  # dx is dL/d(block i's output) here
                dx = dx + hidden[f"h.{i}"]
            dx, block_grads = block_backward(dx, c[f"h.{i}"])  # (B, T, C)
            g.update({f"h.{i}.{k}": v for k, v in block_grads.items()})
        dx = dropout_backward(dx, c["emb.drop"])
        dwte, g["wpe.weight"] = embedding_backward(dx, c["emb"])
        if "wte.weight" in g:
            g["wte.weight"] = g["wte.weight"] + dwte  # tied: head and embedding share wte
        # GPT-2 order; integer (quantized) weights are frozen and get no gradient
        return {name: g[name] for name in self.params if name in g}

    def cache_names(self) -> list[str]:
        """Names of the caches the last forward kept, in the order its ops ran
        ("emb", "emb.drop", "h.0.ln_1", "h.0.attn.c_attn", ..., "lm_head", "loss");
        backward() consumes them in reverse."""
        if self._caches is None:
            raise RuntimeError("no forward has kept its caches")
        names = []
        for key, cache in self._caches.items():
            if key.startswith("h."):
                names += [f"{key}.{n}" for n in cache if n not in ("out", "ops")]
            else:
                names.append(key)
        return names

    # ------------------------------------------------------------ activations
    def activations(self, idx=None, attention_probs=False) -> dict[str, np.ndarray]:
        """What a caller may read of a forward, by name:

            "h.{i}.attn.c_attn", "h.{i}.attn.c_proj",
            "h.{i}.mlp.c_fc", "h.{i}.mlp.c_proj"   the input of that linear layer, (B, T, n_in)
            "h.{i}"                                block i's output, (B, T, C)
            "lm_head"                              the final LayerNorm's output, (B, T, C)
            "h.{i}.attn.probs"                     (attention_probs=True) softmax(QK^T/sqrt(D) + M), (B, H, T, T)

        idx given: runs an inference forward (no dropout) on idx (B, T) and
        keeps nothing. idx None: reads the last forward that kept its caches
        (a training forward with targets), before backward().
        attention_probs needs idx: the probabilities come from the NumPy
        reference (a fused kernel never stores them).
        """
        if idx is not None:
            backend, training = self.backend, self.training
            self.backend = "numpy" if attention_probs else backend
            self.training = False
            try:
                self.forward(np.asarray(idx), keep_cache=True)
                caches = self._caches
            finally:
                self.backend, self.training, self._caches = backend, training, None
        else:
            if attention_probs:
                raise ValueError("attention_probs=True needs idx (a fresh NumPy-reference forward)")
            if self._caches is None:
                raise RuntimeError("activations() without idx needs a forward that kept its caches")
            caches = self._caches
        acts = {}
        for i in range(self.config.n_layer):
            c = caches[f"h.{i}"]
            for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                acts[f"h.{i}.{name}"] = c[name][0]  # a linear cache starts with its input
            acts[f"h.{i}"] = c["out"]
            if attention_probs:
                core = c["attn"][0]
                acts[f"h.{i}.attn.probs"] = core[3] if core is not None else None  # (q, k, v, p, scale)
        acts["lm_head"] = caches["lm_head"][0]
        return acts

    # ---------------------------------------------------------------- helpers
    def num_params(self) -> int:
        """Parameters the model computes with (an integer weight counts as the K x N weights it stands for)."""
        n = 0
        for name, p in self.params.items():
            if name.endswith((".int8", ".int4", ".w8a8")):
                n += p.size * (2 if name.endswith(".int4") else 1)  # int4: two weights a byte
            elif name.endswith(tuple(f".{fmt}" for fmt in BLOCK_BYTES)):  # 32 weights a block
                n += p.size // BLOCK_BYTES[name.rsplit(".", 1)[1]] * BLOCK
            elif name.endswith(".csr_shape"):  # a sparse weight counts as the K x N it stands for
                n += int(np.prod(p))
            elif not name.endswith((".scale", ".scales", ".group", ".csr_values", ".csr_indices", ".csr_indptr",
                                    ".codebook")):  # kmeans_idx counts as the K x N weights
                n += p.size
        return int(n)

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
                 seed=None, rng=None, use_kv_cache=True, progress=False):
        """Extend idx ((T,) or (B, T) ints) by max_new_tokens sampled tokens.

        temperature=0 is greedy decoding. Only the last block_size tokens are
        ever used as context. With the KV cache each new token costs one
        position's worth of compute; once the context window is full it
        slides, positions shift, and the cache is rebuilt from the window.
        progress: a bar on stderr, shown once generation has taken 2 s.
        """
        from .progress import tqdm

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
            for _ in tqdm(range(max_new_tokens), desc="generating", unit="token", delay=2.0, leave=False,
                          disable=not progress):
                if not use_kv_cache:
                    logits, _ = self.forward(idx[:, -T_max:], last_only=True)
                elif cache is None or cache.length >= T_max:
                    cache = KVCache(self.config, idx.shape[0])
                    logits, _ = self.forward(idx[:, -T_max:], kv_cache=cache, last_only=True)
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
        save_checkpoint(path, self, **state)

    @classmethod
    def load(cls, path, backend=None) -> "GPT":
        return load_checkpoint(path, backend=backend).model


def load_checkpoint(path, backend=None) -> Checkpoint:
    """Load a checkpoint written by save_checkpoint: the model (its
    parameters checked against the config and each layer's shapes) and the
    training state needed to resume."""
    f = read_checkpoint(path)
    check_params(f.params, f.config, CheckpointError, where=str(path))
    model = GPT(f.config, params=f.params, backend=backend, tokenizer=f.tokenizer)
    state = checkpoint_state(path, f.meta, f.params, f.optimizer_arrays, f.masks)
    if "dropout" in state["rng_state"]:
        model.rng.bit_generator.state = state["rng_state"].pop("dropout")
    return Checkpoint(model=model, **state)
