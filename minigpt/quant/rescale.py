"""Input-channel rescaling, the exact transform SmoothQuant and AWQ share,
and the calibration statistics they choose their scales from.

A linear layer y = x @ W (W (K, N), stored (in, out)) computes the same
function after dividing input channel j by s_j > 0 and multiplying row j
of W by it:

    y = (x / s) @ (diag(s) W)        s (K,), x / s divides every column j by s_j

The division is folded into whatever produces x, so the float model does
not change at all; only what a quantizer sees does (flatter activations,
or salient weight rows made larger). Where it folds exactly:

    attn.c_attn  <- ln_1:  x = gamma * n + beta, so x / s = (gamma / s) * n + beta / s
    mlp.c_fc     <- ln_2:  the same
    attn.c_proj  <- the value columns of c_attn: attention output channel j is
                    sum_t p[t] v[t, j] (times the head's gate), linear in v's
                    column j, so dividing c_attn's value column j (weight and
                    bias) by s_j divides that channel by s_j
    mlp.c_proj   <- nothing: its input is gelu(c_fc(u)), and gelu(z / s) != gelu(z) / s,
                    so no weight can absorb 1/s; rescaling it would need an
                    extra op in the block (AWQ adds one); minigpt leaves it alone

Each block's ln_1 feeds only c_attn and its ln_2 only c_fc (pre-LayerNorm
GPT-2), so folding into them changes nothing else.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..layers.block import LINEARS
from .weights import is_quantized

# layer (inside a block) -> what produces its input, where 1/s folds exactly
FOLDS_INTO = {"attn.c_attn": "ln_1", "mlp.c_fc": "ln_2", "attn.c_proj": "attn.c_attn (value columns)"}


def calibration_batches(dataset, n_batches: int, batch_size: int = 16, seed: int = 0) -> list[np.ndarray]:
    """n_batches windows (batch_size, block_size) of token ids drawn at random from
    the training split (never the validation split the results are measured on)."""
    if n_batches < 1:
        raise ConfigError(f"calibration needs at least one batch, got {n_batches}")
    rng = np.random.default_rng(seed)
    return [dataset.get_batch("train", batch_size, rng)[0] for _ in range(n_batches)]


def channel_stats(model, batches, layers=None) -> dict[str, dict[str, np.ndarray]]:
    """{layer: {"max": (K,), "mean": (K,)}}: max |X_j| and mean |X_j| of each
    input channel j of each linear layer over every token of the batches
    (inputs read through GPT.activations, in float64)."""
    layers = [f"h.{i}.{n}" for i in range(model.config.n_layer) for n in LINEARS] if layers is None else layers
    mx, total, count = {}, {}, 0
    for idx in batches:
        acts = model.activations(np.asarray(idx))
        for name in layers:
            a = np.abs(acts[name].reshape(-1, acts[name].shape[-1])).astype(np.float64)  # (B T, K)
            mx[name] = np.maximum(mx[name], a.max(axis=0)) if name in mx else a.max(axis=0)
            total[name] = total.get(name, 0.0) + a.sum(axis=0)
        count += acts[layers[0]].reshape(-1, acts[layers[0]].shape[-1]).shape[0]
    return {name: {"max": mx[name], "mean": total[name] / count} for name in layers}


def activation_maxima(model, batches, layers=None) -> dict[str, np.ndarray]:
    """{layer: max_t |X[t, j]| for each input channel j (K,)}: the per-channel
    activation ranges, where outlier channels show."""
    return {name: st["max"] for name, st in channel_stats(model, batches, layers).items()}


def _split(name):
    """"h.3.mlp.c_fc" -> ("h.3.", "mlp.c_fc")."""
    i = name.index(".", 2) + 1
    return name[:i], name[i:]


def scale_input_channels(params: dict, layer: str, s) -> dict:
    """A new parameter dict computing the same function, with input channel j of
    `layer` ("h.{i}.attn.c_attn", "h.{i}.mlp.c_fc" or "h.{i}.attn.c_proj")
    divided by s_j and row j of its weight multiplied by s_j (module docstring).
    Only the arrays that change are copied."""
    if is_quantized(params):
        raise ConfigError("rescaling folds into float weights; these are quantized already")
    prefix, inner = _split(layer)
    if inner not in FOLDS_INTO:
        raise ConfigError(f"{layer}: no weight before it absorbs 1/s exactly (the GELU is in between); "
                          f"rescale one of {sorted(FOLDS_INTO)}")
    w = params[layer + ".weight"]  # (K, N)
    s = np.asarray(s, dtype=np.float64)
    if s.shape != (w.shape[0],) or not np.all(s > 0) or not np.all(np.isfinite(s)):
        raise ConfigError(f"{layer}: need {w.shape[0]} positive finite scales, got shape {s.shape}")
    out = dict(params)
    out[layer + ".weight"] = (w * s[:, None]).astype(w.dtype)  # diag(s) W
    if inner == "attn.c_proj":
        qkv_w, qkv_b = params[prefix + "attn.c_attn.weight"], params[prefix + "attn.c_attn.bias"]
        v0 = 2 * (qkv_w.shape[1] // 3)  # c_attn's columns are [q | k | v]
        w2, b2 = qkv_w.copy(), qkv_b.copy()
        w2[:, v0:] = qkv_w[:, v0:] / s  # (C, HD): value column j divided by s_j
        b2[v0:] = qkv_b[v0:] / s
        out[prefix + "attn.c_attn.weight"], out[prefix + "attn.c_attn.bias"] = w2, b2
    else:
        ln = prefix + FOLDS_INTO[inner]
        for part in ("weight", "bias"):  # gamma / s, beta / s
            p = params[f"{ln}.{part}"]
            out[f"{ln}.{part}"] = (p / s).astype(p.dtype)
    return out
