"""AWQ, activation-aware weight quantization (Lin et al. 2024).

Not all weights matter equally: the rows of W (K, N) that meet large
activations carry most of the output. AWQ protects them without keeping
anything in float: it multiplies row j of W by

    s_j = mean_t |X[t, j]|^alpha      (mean over the calibration tokens t)

before round-to-nearest, and divides input channel j by s_j (folded into
whatever produces it, minigpt.quant.rescale), so the float model is
unchanged. A row scaled up by s_j > 1 is rounded on a grid that is
relatively finer for it (its error, divided by s_j again on the way out,
shrinks), at the cost of the group's other rows when it sets the group's
maximum. alpha is searched on a grid in [0, 1] (ALPHAS, 21 points, the
paper uses 20) for each layer, minimising the quantized layer's output
error on the calibration inputs,

    E(alpha) = || X W - (X / s) Q(diag(s) W) ||_F^2 / M ,

with Q the very quantizer (format, bits, group) the model is then stored
with. alpha = 0 gives s = 1: plain RTN, a candidate of the search, so the
chosen error is never above RTN's on the calibration inputs. The scales
are normalised by sqrt(max(s) min(s)) as in the reference code: a common
factor of all s changes nothing (symmetric min-max scales are
scale-equivariant) but keeps the numbers near 1.

Which layers: attn.c_attn (1/s folded into ln_1), mlp.c_fc (into ln_2) and
attn.c_proj (into the value columns of c_attn). mlp.c_proj is quantized
with plain RTN: its input comes out of the GELU, which no weight can
absorb 1/s through (AWQ's reference code inserts an extra scaling op for
such layers; minigpt keeps the block as it is). The paper's further step,
a search for a clipped weight range, is not done here.

Every layer's search uses the float model's activations (the reference
code's order too); the folds commute with the quantizer (a value column of
c_attn divided by s_j changes only that column's scales), so the order in
which they are applied does not matter.
"""
from __future__ import annotations

import fnmatch

import numpy as np

from ..errors import ConfigError
from ..layers.quantized_linear import dequantize
from ..model import GPT
from .rescale import scale_input_channels
from .weights import BITS, check_scheme, is_quantized, quantize_params, weight_arrays

ALPHAS = np.linspace(0.0, 1.0, 21)
SCALED = ("attn.c_attn", "attn.c_proj", "mlp.c_fc")  # where 1/s folds exactly (minigpt.quant.rescale)


def awq_scales(x_mean_abs, alpha) -> np.ndarray:
    """s (K,) = mean|X_j|^alpha / sqrt(max * min of those); a channel with mean 0 gets the smallest other."""
    m = np.asarray(x_mean_abs, dtype=np.float64)
    if not np.any(m > 0):
        return np.ones_like(m)
    m = np.where(m > 0, m, m[m > 0].min())  # never a zero scale
    s = m ** float(alpha)
    return s / np.sqrt(s.max() * s.min())


def quantized_weight(w, kind, bits, group) -> np.ndarray:
    """W_hat (K, N) in w's dtype: what the stored format computes with (the one quantizer)."""
    return dequantize({"format": kind, **weight_arrays(w, kind, bits, group)}).astype(w.dtype)


def scaled_error(x, w, s, kind, bits, group) -> float:
    """|| X W - (X / s) Q(diag(s) W) ||_F^2 / M for inputs x (M, K) float64."""
    w_hat = quantized_weight((w * s[:, None]).astype(w.dtype), kind, bits, group).astype(np.float64)  # (K, N)
    d = x @ w.astype(np.float64) - (x / s) @ w_hat  # (M, N)
    return float(np.sum(d * d) / x.shape[0])


def search_alpha(x, w, kind="int4", bits=4, group=32, alphas=ALPHAS) -> tuple[float, np.ndarray, np.ndarray]:
    """(alpha, s, errors): the alpha of the grid with the least scaled_error on
    the calibration inputs x (..., K), its scales, and every alpha's error."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])  # (M, K)
    mean_abs = np.abs(x).mean(axis=0)  # (K,)
    errors = np.array([scaled_error(x, w, awq_scales(mean_abs, a), kind, bits, group) for a in alphas])
    best = int(np.argmin(errors))  # the first minimum: alpha = 0 (RTN) wins ties
    return float(alphas[best]), awq_scales(mean_abs, alphas[best]), errors


def awq_params(model: GPT, batches, kind="int4", bits=None, group=32, alphas=ALPHAS,
               layers=None) -> tuple[dict, dict]:
    """(float params, report): model's parameters with AWQ's scales folded in (the
    same function; quantize them with quantize_params(params, kind, group, bits)),
    and {layer: {"alpha", "errors" (one per alpha), "rtn", "awq"}} per scaled layer.

    batches: calibration token ids (B, T). layers: which "h.{i}.attn.c_attn" /
    "h.{i}.attn.c_proj" / "h.{i}.mlp.c_fc" to scale (default: all of them).
    """
    bits = bits or max(BITS.get(kind, (8,)))
    check_scheme(kind, bits, group)
    if kind not in ("int8", "int4"):
        raise ConfigError(f"AWQ scales weight-only int8 / int2-4 quantization, not {kind!r}")
    if is_quantized(model.params):
        raise ConfigError("these weights are quantized already; quantize the float checkpoint instead")
    names = [f"h.{i}.{n}" for i in range(model.config.n_layer) for n in SCALED] if layers is None else list(layers)
    for name in names:
        if not name.endswith(SCALED) or name + ".weight" not in model.params:
            raise ConfigError(f"AWQ scales the float weights of *.{' / *.'.join(SCALED)}, not {name}")
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or not alphas.size or np.any((alphas < 0) | (alphas > 1)):
        raise ConfigError("the alpha grid must hold numbers from 0 to 1")
    inputs = _inputs(model, batches, names)
    g = group if kind == "int4" else None
    params, report = model.params, {}
    for name in names:
        w = model.params[name + ".weight"]
        alpha, s, errors = search_alpha(inputs[name], w, kind, bits, g, alphas)
        report[name] = {"alpha": alpha, "errors": errors, "awq": float(errors.min()),
                        "rtn": scaled_error(inputs[name], w, np.ones(w.shape[0]), kind, bits, g)}
        params = scale_input_channels(params, name, s)
    return params, report


def _inputs(model, batches, names) -> dict:
    """{layer: X (M, K) float64}: the layer's inputs over every calibration token."""
    batches = list(batches)
    if not batches:
        raise ConfigError("AWQ needs at least one calibration batch")
    seen = {name: [] for name in names}
    for idx in batches:
        acts = model.activations(np.asarray(idx))
        for name in names:
            seen[name].append(acts[name].reshape(-1, acts[name].shape[-1]).astype(np.float64))
    return {name: np.concatenate(xs) for name, xs in seen.items()}


def awq_model(model: GPT, batches, kind="int4", bits=None, group=32, alphas=ALPHAS, layers=None,
              keep_float=()) -> tuple[GPT, dict]:
    """(quantized GPT, report): awq_params, then round to nearest (quantize_params) of every
    block linear (mlp.c_proj and any unscaled layer plain RTN) but those in keep_float."""
    if layers is None:  # a layer kept in float needs no protection from rounding
        layers = [f"h.{i}.{n}" for i in range(model.config.n_layer) for n in SCALED
                  if not any(fnmatch.fnmatchcase(f"h.{i}.{n}", p) for p in keep_float)]
    params, report = awq_params(model, batches, kind, bits, group, alphas, layers)
    qparams = quantize_params(params, kind, group=group, bits=bits, keep_float=keep_float)
    return GPT(model.config, params=qparams, backend=model.backend, tokenizer=model.tokenizer), report
