"""The quantizer: uniform quantization to b bits, affine or symmetric, per
tensor, per channel or group-wise. Every quantizer in minigpt is this one
(the integer-matmul helpers of int_matmul_ref, the model's weights, the
observers, fake quantization); it sits here, at the bottom, so the kernels
can use it without importing anything above them.

Integer range for b bits, 2 <= b <= 8:
    affine:     q in [q_min, q_max] = [0, 2^b - 1]
    symmetric:  q in [-(2^(b-1) - 1), 2^(b-1) - 1], zero point 0
                (-2^(b-1) is left out so that the grid is symmetric about 0)

Scale s and zero point z from a range [lo, hi] (an observed min and max),
first widened to include 0, lo' = min(lo, 0), hi' = max(hi, 0):
    affine:     s = (hi' - lo') / (q_max - q_min),   z = q_min - round(lo' / s)
    symmetric:  s = max(|lo'|, |hi'|) / q_max,        z = 0
Because 0 lies in [lo', hi'], z lies in [q_min, q_max] and 0 quantizes to
q = z exactly, which dequantizes to exactly 0 (zero padding, ReLU zeros and
pruned weights stay exact). A slice whose range is [0, 0] (all zeros) would
give s = 0; it gets s = 1 instead, a valid scale that maps it to q = z, so
nothing divides by zero and no NaN appears. A constant slice c != 0 needs
no special case: widening gives the range [0, c] (or [c, 0]).

Quantize and dequantize (round = half to even, np.rint):
    q = clamp(round(x / s) + z, q_min, q_max),    x_hat = (q - z) s
Inside [lo', hi'] the round trip errs by at most s/2; outside, x_hat is the
nearest end of the grid (the clamp).

Which entries share one (s, z):
    per tensor:  axis=None, group=None          s has shape ()
    per channel: axis=a                         s (x.shape[a],): one per index along a
    group-wise:  group=g (along group_axis=a)   g consecutive entries along a share s,
                 every index of the other axes separately: s has x's shape with
                 n_a replaced by n_a / g. A weight W (K, N) stored (in, out) with
                 group=g, group_axis=0 gets scales (K/g, N): groups of g inputs of
                 each output, the layout of the int4 format.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_BITS, MAX_BITS = 2, 8


def int_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """(q_min, q_max) for b bits: symmetric [-(2^(b-1)-1), 2^(b-1)-1], affine [0, 2^b - 1]."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    bits = int(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def scale_zero_point(lo, hi, bits: int, symmetric: bool, dtype=None):
    """(s, z) for the ranges [lo, hi] (arrays of any one shape): the formulas above.
    s has dtype (default: lo's float dtype), z is int32 (0 when symmetric)."""
    # BEGIN SOLUTION
    q_min, q_max = int_range(bits, symmetric)
    lo, hi = np.asarray(lo), np.asarray(hi)
    dtype = np.dtype(dtype or (lo.dtype if lo.dtype.kind == "f" else np.float64))
    lo = np.minimum(lo, 0).astype(dtype)  # widened to include 0
    hi = np.maximum(hi, 0).astype(dtype)
    if symmetric:
        s = np.maximum(-lo, hi) / dtype.type(q_max)
    else:
        s = (hi - lo) / dtype.type(q_max - q_min)
    s = np.where(s > 0, s, dtype.type(1)).astype(dtype)  # an all-zero slice: s = 1
    if symmetric:
        z = np.zeros(s.shape, dtype=np.int32)
    else:
        z = np.clip(q_min - np.rint(lo / s), q_min, q_max).astype(np.int32)  # in range already: lo <= 0 <= hi
    return s, z
    # END SOLUTION


def _check_layout(shape, axis, group, group_axis):
    if axis is not None and group is not None:
        raise ValueError("give axis (per channel) or group (group-wise), not both")
    if group is not None:
        n = shape[group_axis]
        if isinstance(group, bool) or int(group) != group or group <= 0 or n % group:
            raise ValueError(f"group size {group!r} must be a positive integer dividing {n} "
                             f"(axis {group_axis} of shape {tuple(shape)})")


def _grouped(x, group, group_axis):
    """x with group_axis split into (n / g, g): the g axis is group_axis + 1."""
    a = group_axis % x.ndim
    return x.reshape(x.shape[:a] + (x.shape[a] // group, group) + x.shape[a + 1:]), a


def slice_min_max(x, axis=None, group=None, group_axis=0):
    """(lo, hi): min and max of each slice that shares a scale, in the parameter
    shape of the module docstring (() per tensor, (n_a,) per channel, ...)."""
    # BEGIN SOLUTION
    x = np.asarray(x)
    _check_layout(x.shape, axis, group, group_axis)
    if group is not None:
        xg, a = _grouped(x, group, group_axis)
        return xg.min(axis=a + 1), xg.max(axis=a + 1)
    if axis is None:
        return x.min(), x.max()
    others = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    return x.min(axis=others), x.max(axis=others)
    # END SOLUTION


def expand(p, shape, axis=None, group=None, group_axis=0):
    """A per-slice parameter p (scale, zero point, clip range) broadcast to `shape`."""
    # BEGIN SOLUTION
    p = np.asarray(p)
    if group is not None:
        return np.repeat(p, group, axis=group_axis)
    if axis is None:
        return p
    a = axis % len(shape)
    return p.reshape((1,) * a + (-1,) + (1,) * (len(shape) - a - 1))
    # END SOLUTION


def _int_dtype(q_min):
    return np.int8 if q_min < 0 else np.uint8


def quantize(x, s, z, q_min, q_max):
    """q = clamp(round(x / s) + z, q_min, q_max); s, z broadcast against x.
    int8 for a signed range, uint8 for an unsigned one."""
    # BEGIN SOLUTION
    q = np.clip(np.rint(x / s) + z, q_min, q_max)
    return q.astype(_int_dtype(q_min))
    # END SOLUTION


def dequantize(q, s, z):
    """x_hat = (q - z) s, in s's dtype."""
    # BEGIN SOLUTION
    s = np.asarray(s)
    return (q.astype(np.int32) - z).astype(s.dtype) * s
    # END SOLUTION


def fake_quantize(x, s, z, q_min, q_max):
    """(x_hat, inside): x_hat = (clamp(round(x/s) + z, q_min, q_max) - z) s in x's
    dtype, without leaving floats, and inside = the unclamped integer round(x/s) + z
    lies in [q_min, q_max] (boundaries included): where the straight-through
    estimator passes the gradient."""
    # BEGIN SOLUTION
    x = np.asarray(x)
    v = np.rint(x / s) + z  # the integer before the clamp, held in a float
    inside = (v >= q_min) & (v <= q_max)
    x_hat = ((np.clip(v, q_min, q_max) - z) * s).astype(x.dtype)
    return x_hat, inside
    # END SOLUTION


@dataclass(frozen=True)
class QTensor:
    """A quantized tensor: q (x's shape) and one (scale, zero_point) per slice.

    x_hat = (q - zero_point) * scale, both broadcast by the layout (axis /
    group along group_axis), as in the module docstring.
    """

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    symmetric: bool
    axis: int | None = None
    group: int | None = None
    group_axis: int = 0

    def _expand(self, p):
        return expand(p, self.q.shape, self.axis, self.group, self.group_axis)

    def dequantize(self) -> np.ndarray:
        return dequantize(self.q, self._expand(self.scale), self._expand(self.zero_point))

    @property
    def int_range(self) -> tuple[int, int]:
        return int_range(self.bits, self.symmetric)


def quantize_tensor(x, bits=8, symmetric=True, axis=None, group=None, group_axis=0, lo=None, hi=None) -> QTensor:
    """Quantize x: scales and zero points from each slice's min and max (or
    from the given ranges lo, hi in the parameter shape: a calibrated or
    clipped range), then q = clamp(round(x / s) + z, q_min, q_max)."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    q_min, q_max = int_range(bits, symmetric)
    if lo is None or hi is None:
        lo_seen, hi_seen = slice_min_max(x, axis, group, group_axis)
        lo = lo_seen if lo is None else lo
        hi = hi_seen if hi is None else hi
    else:
        _check_layout(x.shape, axis, group, group_axis)
    s, z = scale_zero_point(lo, hi, bits, symmetric, x.dtype)
    q = quantize(x, expand(s, x.shape, axis, group, group_axis), expand(z, x.shape, axis, group, group_axis),
                 q_min, q_max)
    return QTensor(q, s, z, int(bits), bool(symmetric), axis, None if group is None else int(group), group_axis)
