"""Quantization-aware training: the forward sees fake-quantized weights, the
backward passes the gradient straight through the rounding.

Fake quantization, a forward/backward pair (s, z from the quantizer, taken as
constants: they are not trained):

    forward:   w_hat = (clamp(round(w / s) + z, q_min, q_max) - z) s
    backward:  dL/dw = dL/dw_hat * 1[q_min <= round(w / s) + z <= q_max]

The straight-through estimator (Bengio et al. 2013) treats round() as the
identity, whose derivative is 1: the gradient passes unchanged wherever the
unclamped integer round(w / s) + z lies in [q_min, q_max], the boundaries
included (a weight that lands exactly on q_max still learns), and is 0
where the clamp bit (the clamp is flat there). With min-max scales nothing
is ever clamped; a clipped range (MSE, percentile) clamps its outliers.

qat_transform(...) is a weight_transform for minigpt.train.train: every step
it fake-quantizes the block linears' weights exactly as quantize_params
would store them (same quantizer, same layout, scales from the current
weights), so after training, quantize_params gives a model whose weights
are the ones the last forward saw. qat_finetune does both.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..kernels.quantizer import expand, fake_quantize, int_range, scale_zero_point, slice_min_max
from ..model import GPT
from ..train import train
from .weights import check_scheme, is_quantizable, quantize_model

QAT_KINDS = ("int8", "int4")  # weight-only formats whose quantizer the transform reproduces


def fake_quant_forward(w, bits, symmetric=True, axis=None, group=None, group_axis=0, lo=None, hi=None):
    """(w_hat, cache): w fake-quantized with (s, z) from each slice's min and max
    (or the given ranges lo, hi: a clipped range), layout as in minigpt.kernels.quantizer."""
    w = np.asarray(w)
    if lo is None or hi is None:
        lo, hi = slice_min_max(w, axis, group, group_axis)
    s, z = scale_zero_point(lo, hi, bits, symmetric, w.dtype)
    q_min, q_max = int_range(bits, symmetric)
    w_hat, inside = fake_quantize(w, expand(s, w.shape, axis, group, group_axis),
                                  expand(z, w.shape, axis, group, group_axis), q_min, q_max)
    return w_hat, inside


def fake_quant_backward(dout, cache):
    """dL/dw = dL/dw_hat where the integer was inside [q_min, q_max] (boundaries included), else 0."""
    # BEGIN SOLUTION
    inside = cache
    return dout * inside
    # END SOLUTION


def _layout(kind, bits, group, w):
    """The quantize_params layout of weight w (K, N): (bits, axis, group)."""
    if kind == "int8":
        return dict(bits=bits, axis=1)  # one scale per output channel
    g = w.shape[0] if group is None else int(group)
    if w.shape[0] % g:
        raise ConfigError(f"group size {g} does not divide the {w.shape[0]} inputs of this weight")
    return dict(bits=bits, group=g, group_axis=0)


def qat_transform(kind="int4", bits=None, group=32, layers=None):
    """A weight_transform for minigpt.train.train (params -> (seen, grad_fn)):
    seen has every block linear's weight (or only those named in layers)
    fake-quantized as quantize_params(params, kind, group, bits) stores it;
    grad_fn applies the straight-through backward."""
    if kind not in QAT_KINDS:
        raise ConfigError(f"quantization-aware training supports {list(QAT_KINDS)} weights, not {kind!r}")
    bits = bits or (8 if kind == "int8" else 4)
    check_scheme(kind, bits, group)
    chosen = None if layers is None else {f"{layer}.weight" for layer in layers}

    def transform(params):
        seen, masks = dict(params), {}
        for name, w in params.items():
            if is_quantizable(name) and (chosen is None or name in chosen):
                seen[name], masks[name] = fake_quant_forward(w, symmetric=True, **_layout(kind, bits, group, w))

        def grad_fn(grads):
            return {k: fake_quant_backward(g, masks[k]) if k in masks else g for k, g in grads.items()}

        return seen, grad_fn

    return transform


def qat_finetune(model: GPT, dataset, tcfg, kind="int4", bits=None, group=32, layers=None, **train_kwargs):
    """Train model (float weights, in place) with fake quantization for tcfg.steps
    steps, then quantize it the same way: (quantized model, TrainResult).
    layers: the block linears to quantize (default all); the rest stay float."""
    result = train(model, dataset, tcfg, weight_transform=qat_transform(kind, bits, group, layers), **train_kwargs)
    linears = [name[: -len(".weight")] for name in model.params if is_quantizable(name)]
    keep = () if layers is None else tuple(layer for layer in linears if layer not in set(layers))
    return quantize_model(model, kind, group=group, bits=bits, keep_float=keep), result
