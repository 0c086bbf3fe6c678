"""SmoothQuant (Xiao et al. 2023): move the activations' outliers into the weights.

A few input channels of a trained transformer's linear layers carry values
far larger than the rest, in every token. A per-token int8 scale is then set
by those channels, and every other channel of the token is left with a
handful of levels. Weights have no such outliers. SmoothQuant divides input
channel j by

    s_j = max_t |X[t, j]|^alpha / max_n |W[j, n]|^(1 - alpha)

(max over the calibration tokens t and over the layer's outputs n; W is
(K, N), row j = input channel j) and multiplies row j of W by s_j: the
layer computes the same, (X / s) @ (diag(s) W) = X W, and alpha moves the
difficulty: alpha = 1 divides every input channel by its own maximum (all
channel maxima become 1) and puts the whole spread into the weight rows;
alpha = 0 does the opposite (every weight row's maximum becomes 1, the
channels take the weights' spread); the paper uses 0.5 for most models. A channel that never moves
(max|X_j| = 0) or has an all-zero weight row gets s_j = 1.

1/s folds into the LayerNorm in front (minigpt.quant.rescale), so only the
inputs of attn.c_attn (after ln_1) and mlp.c_fc (after ln_2) are smoothed,
as in the paper; the smoothed float model computes exactly what the
original does, and W8A8 (minigpt.quant.quantize_model(..., "w8a8")) then
quantizes smoother activations.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..kernels.int_matmul_ref import w8a8_matmul_ref
from ..model import GPT
from .rescale import activation_maxima, scale_input_channels
from .weights import weight_arrays

SMOOTHED = ("attn.c_attn", "mlp.c_fc")  # the layers a LayerNorm feeds


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be a number from 0 to 1, got {alpha!r}")
    return float(alpha)


def smoothing_scales(x_max, w, alpha=0.5) -> np.ndarray:
    """s (K,) float64: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) for the
    activation maxima x_max (K,) and the weight W (K, N); 1 where either max is 0."""
    alpha = check_alpha(alpha)
    x_max = np.asarray(x_max, dtype=np.float64)
    w_max = np.abs(np.asarray(w, dtype=np.float64)).max(axis=1)  # (K,) over the outputs
    ok = (x_max > 0) & (w_max > 0)
    s = np.ones_like(x_max)
    s[ok] = x_max[ok] ** alpha / w_max[ok] ** (1.0 - alpha)
    return s


def smooth_params(params: dict, x_maxima: dict, alpha=0.5, layers=None) -> tuple[dict, dict]:
    """(params', scales): every smoothed layer's input divided by its s (folded into
    the LayerNorm before it) and its weight rows multiplied by s; the function
    is unchanged. x_maxima: {layer: max |X_j| (K,)} from activation_maxima.
    layers: which of the model's c_attn / c_fc (default: all of them)."""
    n_layer = len({k.split(".")[1] for k in params if k.startswith("h.")})
    layers = [f"h.{i}.{n}" for i in range(n_layer) for n in SMOOTHED] if layers is None else list(layers)
    scales = {}
    for layer in layers:
        if not layer.endswith(SMOOTHED):
            raise ConfigError(f"SmoothQuant smooths the LayerNorm-fed layers (*.{' / *.'.join(SMOOTHED)}), "
                              f"not {layer}")
        scales[layer] = smoothing_scales(x_maxima[layer], params[layer + ".weight"], alpha)
        params = scale_input_channels(params, layer, scales[layer])
    return params, scales


def smooth_model(model: GPT, batches, alpha=0.5, layers=None) -> tuple[GPT, dict]:
    """(smoothed float GPT, {layer: s}): activation maxima from the calibration
    batches (token ids (B, T)), then smooth_params. Quantize the result with
    quantize_model(smoothed, "w8a8")."""
    names = None if layers is None else list(layers)
    maxima = activation_maxima(model, batches, names or
                               [f"h.{i}.{n}" for i in range(model.config.n_layer) for n in SMOOTHED])
    params, scales = smooth_params(model.params, maxima, alpha, names)
    return GPT(model.config, params=params, backend=model.backend, tokenizer=model.tokenizer), scales


def w8a8_output_error(x, w, alpha=None) -> float:
    """||Y_hat - X W||_F / ||X W||_F for inputs x (M, K) and a weight w (K, N): Y_hat is
    the W8A8 product the model's "w8a8" format computes (int8 weights per output
    channel, each row of x quantized to int8 on the fly), after SmoothQuant with
    this alpha (scales from x's own channel maxima), or without it (alpha None)."""
    x, w = np.asarray(x), np.asarray(w)
    exact = x.astype(np.float64) @ w.astype(np.float64)  # (M, N)
    if alpha is not None:
        s = smoothing_scales(np.abs(x).max(axis=0), w, alpha)
        x, w = (x / s).astype(x.dtype), (w * s[:, None]).astype(w.dtype)
    arrays = weight_arrays(w, "w8a8")
    y = w8a8_matmul_ref(x, arrays["w8a8"], arrays["scale"])  # (M, N)
    return float(np.linalg.norm(y - exact) / np.linalg.norm(exact))
