"""Calibration observers: watch tensors, then choose the range [lo, hi] that
the quantizer's scale and zero point come from (minigpt.kernels.quantizer).

    obs = MinMaxObserver(bits=8, symmetric=False)
    for x in batches: obs.update(x)
    s, z = obs.scale_zero_point();  t = obs.quantize(x_new)

    MinMaxObserver               lo, hi = the smallest and largest value seen
    MovingAverageMinMaxObserver  lo, hi = exponential moving averages of each batch's
                                 min and max: lo <- lo + c (min(x) - lo) (the first batch sets them)
    PercentileObserver           lo, hi = the (100 - p)-th and p-th percentiles of all values seen:
                                 a few extreme values no longer stretch the grid
    MSEObserver                  lo, hi = a (min, max) for the a in (0, 1] that minimises
                                 the mean squared quantization error of the values seen:
                                 clipping trades a few large errors for a finer step
                                 (mse_range: the same search for any tensor and layout,
                                 group-wise weights included)

axis=None watches the whole tensor (one range); axis=a keeps one range per
index along a (per channel: axis=-1 for activations (B, T, C)).

calibrate(model, batches, make_observer) feeds every linear layer's input,
read through the model's activation accessor (GPT.activations), to one
observer per layer.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..kernels.quantizer import quantize_tensor, scale_zero_point, slice_min_max
from ..layers.block import LINEARS


class Observer(ABC):
    """Base: update(x) watches a tensor; range() -> (lo, hi) as arrays (per channel) or scalars."""

    def __init__(self, bits=8, symmetric=False, axis=None):
        self.bits, self.symmetric, self.axis = bits, symmetric, axis
        self.dtype = None
        self.count = 0  # tensors seen

    def _rows(self, x):
        """x as (n, channels) (per channel) or (n,) (per tensor)."""
        x = np.asarray(x)
        self.dtype = self.dtype or (x.dtype if x.dtype.kind == "f" else np.dtype(np.float64))
        if self.axis is None:
            return x.reshape(-1)
        return np.moveaxis(x, self.axis, -1).reshape(-1, x.shape[self.axis])

    def update(self, x) -> "Observer":
        self._observe(self._rows(x))
        self.count += 1
        return self

    @abstractmethod
    def _observe(self, rows):
        """Take in one tensor's values, (n,) or (n, channels)."""

    @abstractmethod
    def range(self):
        """(lo, hi) from what was observed."""

    def scale_zero_point(self):
        """(s, z) of the observed range (per channel: arrays along the channel axis)."""
        if self.count == 0:
            raise ValueError(f"{type(self).__name__} has seen no data yet")
        lo, hi = self.range()
        return scale_zero_point(lo, hi, self.bits, self.symmetric, self.dtype)

    def quantize(self, x):
        """x quantized with the observed range (values outside it are clamped): a QTensor."""
        lo, hi = self.range()
        return quantize_tensor(np.asarray(x, dtype=self.dtype), self.bits, self.symmetric, axis=self.axis,
                               lo=lo, hi=hi)


class MinMaxObserver(Observer):
    def __init__(self, bits=8, symmetric=False, axis=None):
        super().__init__(bits, symmetric, axis)
        self.lo = self.hi = None

    def _observe(self, rows):
        lo, hi = rows.min(axis=0), rows.max(axis=0)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)

    def range(self):
        return self.lo, self.hi


class MovingAverageMinMaxObserver(MinMaxObserver):
    """lo <- lo + c (min(x) - lo), hi likewise, c = averaging_constant; the first batch sets lo, hi.
    For activations during training, where one batch's extremes should not set the range alone."""

    def __init__(self, bits=8, symmetric=False, axis=None, averaging_constant=0.01):
        super().__init__(bits, symmetric, axis)
        self.c = averaging_constant

    def _observe(self, rows):
        lo, hi = rows.min(axis=0), rows.max(axis=0)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.c * (lo - self.lo)
            self.hi = self.hi + self.c * (hi - self.hi)


class _Keeper(Observer):
    """Keeps every value seen (calibration sets are small): what percentiles and MSE need."""

    def __init__(self, bits=8, symmetric=False, axis=None):
        super().__init__(bits, symmetric, axis)
        self._seen = []

    def _observe(self, rows):
        self._seen.append(rows)

    def values(self):
        """(n,) or (n, channels): every value seen."""
        return np.concatenate(self._seen, axis=0)


class PercentileObserver(_Keeper):
    """lo, hi = np.percentile(values, (100 - p, p)): p = 100 is min-max."""

    def __init__(self, bits=8, symmetric=False, axis=None, percentile=99.99):
        super().__init__(bits, symmetric, axis)
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must lie in (50, 100], got {percentile}")
        self.percentile = percentile

    def range(self):
        lo, hi = np.percentile(self.values(), [100 - self.percentile, self.percentile], axis=0)
        return lo.astype(self.dtype), hi.astype(self.dtype)


def slice_mean(e, axis=None, group=None, group_axis=0):
    """The mean of e over each slice that shares a scale (the parameter shape of
    minigpt.kernels.quantizer: () per tensor, (n_a,) per channel, ...)."""
    if group is not None:
        a = group_axis % e.ndim
        return e.reshape(e.shape[:a] + (e.shape[a] // group, group) + e.shape[a + 1:]).mean(axis=a + 1)
    if axis is None:
        return e.mean()
    return e.mean(axis=tuple(i for i in range(e.ndim) if i != axis % e.ndim))


def mse_range(x, bits, symmetric=False, axis=None, group=None, group_axis=0, grid=100):
    """(lo, hi, errors): for each slice, the clipped range (a min, a max), a in
    1/grid, 2/grid, ..., 1, whose quantization of x has the least mean squared
    error; errors (grid, *slices) holds every candidate's. a = 1 (min-max) is a
    candidate, so the result is never worse than min-max on x."""
    x = np.asarray(x)
    lo0, hi0 = slice_min_max(x, axis, group, group_axis)
    alphas = np.arange(1, grid + 1) / grid
    errors = []
    for a in alphas:
        t = quantize_tensor(x, bits, symmetric, axis, group, group_axis, lo=a * lo0, hi=a * hi0)
        errors.append(slice_mean((t.dequantize() - x) ** 2, axis, group, group_axis))
    errors = np.stack(errors)  # (grid, *slices)
    best = alphas[errors.argmin(axis=0)]
    return (best * lo0).astype(x.dtype), (best * hi0).astype(x.dtype), errors


class MSEObserver(_Keeper):
    """The range mse_range chooses for all values seen (per channel when axis is given)."""

    def __init__(self, bits=8, symmetric=False, axis=None, grid=100):
        super().__init__(bits, symmetric, axis)
        self.grid = grid
        self.errors = None  # (grid, ...) the error of each candidate, for plots

    def range(self):
        axis = None if self.axis is None else 1  # the values are (n, C): the channels are axis 1
        lo, hi, self.errors = mse_range(self.values(), self.bits, self.symmetric, axis, grid=self.grid)
        return lo, hi


OBSERVERS = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver,
             "percentile": PercentileObserver, "mse": MSEObserver}


def linear_inputs(model) -> list[str]:
    """Names of every linear layer's input that GPT.activations gives: "h.0.attn.c_attn", ..."""
    return [f"h.{i}.{name}" for i in range(model.config.n_layer) for name in LINEARS]


def calibrate(model, batches, make_observer=MinMaxObserver, layers=None) -> dict[str, Observer]:
    """{layer: observer} after feeding each batch's linear-layer inputs
    (model.activations(idx)[layer], (B, T, K)) to that layer's observer.

    batches: iterable of token ids (B, T); make_observer(): a fresh observer
    (a class or e.g. lambda: PercentileObserver(percentile=99.9));
    layers: which linear inputs (default: all of them).
    """
    layers = linear_inputs(model) if layers is None else list(layers)
    observers = {name: make_observer() for name in layers}
    for idx in batches:
        acts = model.activations(np.asarray(idx))
        for name in layers:
            observers[name].update(acts[name])
    return observers
