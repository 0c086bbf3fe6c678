"""Checks of the quantization assignment: scales, zero points, rounding and
the straight-through mask against the quantizer's formulas, on ranges and
layouts drawn from the part's seed (all-zero slices and exact boundaries
included)."""
from __future__ import annotations

import numpy as np

from .common import FORWARD_TOL, CheckFailed, compare, compare_exact


def _range(bits, symmetric):
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def _sz(lo, hi, bits, symmetric):
    qmin, qmax = _range(bits, symmetric)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    s = np.maximum(-lo, hi) / qmax if symmetric else (hi - lo) / (qmax - qmin)
    s = np.where(s > 0, s, 1.0)
    z = np.zeros(s.shape) if symmetric else np.clip(qmin - np.rint(lo / s), qmin, qmax)
    return s, z


def _ranges(rng, n):
    lo = rng.normal(-1, 1, n)
    hi = lo + rng.exponential(2, n)
    lo[0], hi[0] = 0.0, 0.0  # an all-zero slice
    if n > 2:
        lo[1], hi[1] = 0.5, 2.0  # positive only: widened to include 0
    return lo, hi


def check_affine(hw, rng):
    n = int(rng.integers(3, 8))
    lo, hi = _ranges(rng, n)

    def scales():
        for symmetric in (False, True):
            bits = int(rng.integers(2, 9))
            s, z = hw.scale_zero_point(lo.copy(), hi.copy(), bits, symmetric)
            ws, wz = _sz(lo, hi, bits, symmetric)
            kind = "symmetric" if symmetric else "affine"
            hint_s = [("the range looks not widened to include 0 (lo' = min(lo, 0), hi' = max(hi, 0))",
                       np.where((hi - lo) > 0, (hi - lo) / (2**bits - 1), 1.0)),
                      ] if not symmetric else []
            compare(f"{kind} {bits}-bit scale for {n} ranges (one all zeros, one positive only)", s, ws,
                    FORWARD_TOL, hint_s + [("an all-zero range must get s = 1, not 0 or nan",
                                            np.where(ws == 1, 0, ws))])
            compare_exact(f"{kind} {bits}-bit zero point", np.asarray(z), wz,
                          [("the zero point's sign looks flipped: z = q_min - round(lo' / s)",
                            np.clip(_range(bits, symmetric)[0] + np.rint(np.minimum(lo, 0) / ws),
                                    *_range(bits, symmetric)))])
        return "affine and symmetric, zero and one-sided ranges"

    def roundtrip():
        bits, symmetric = int(rng.integers(2, 9)), bool(rng.integers(2))
        qmin, qmax = _range(bits, symmetric)
        s, z = _sz(np.array(-1.5), np.array(2.0), bits, symmetric)
        x = rng.uniform(-2.5, 3, 40)  # some outside the range: clamped
        x[:4] = (np.array([0.5, 1.5, -0.5, 2.5]) - z) * s  # exact halves: round half to even
        q = hw.quantize(x.copy(), s, z, qmin, qmax)
        want = np.clip(np.rint(x / s) + z, qmin, qmax)
        compare_exact(f"quantize of 40 values, {bits} bits {'symmetric' if symmetric else 'affine'} "
                      f"(exact halves and out-of-range values included)", np.asarray(q), want,
                      [("that rounds halves away from zero or up; np.rint rounds half to even",
                        np.clip(np.floor(x / s + 0.5) + z, qmin, qmax)),
                       ("that truncates (floor); round to nearest with np.rint",
                        np.clip(np.floor(x / s) + z, qmin, qmax)),
                       ("the clamp to [q_min, q_max] looks missing", np.rint(x / s) + z)])
        if np.asarray(q).dtype.kind not in "iu":
            raise CheckFailed(f"quantize returned {np.asarray(q).dtype}; integers are expected (int8 / uint8)")
        xh = hw.dequantize(np.asarray(want).astype(np.int8 if qmin < 0 else np.uint8), s, z)
        compare("dequantize: (q - z) s", xh, (want - z) * s, FORWARD_TOL,
                [("that is q s; subtract the zero point first", want * s)])
        return "round half to even, clamp, integer dtype"

    yield "scale and zero point", scales
    yield "quantize and dequantize", roundtrip


def check_groupwise(hw, rng):
    g = int(rng.choice([2, 4, 8]))
    K, N = g * int(rng.integers(2, 5)), int(rng.integers(1, 6))  # at least two groups
    w = rng.standard_normal((K, N))

    def minmax():
        lo, hi = hw.slice_min_max(w.copy(), group=g, group_axis=0)
        want_lo = w.reshape(K // g, g, N).min(1)
        strided = w.reshape(g, K // g, N).min(0)
        compare(f"group min of W {w.shape}, groups of {g} consecutive inputs (axis 0)", lo, want_lo, FORWARD_TOL,
                [("the groups look strided (every K/g-th input); a group is g consecutive inputs", strided)],
                shape_hint=f"one (min, max) per group and output: ({K // g}, {N})")
        compare("group max", hi, w.reshape(K // g, g, N).max(1), FORWARD_TOL)
        w3 = rng.standard_normal((int(rng.integers(1, 4)), K, 2))  # the group axis in the middle
        lo3, _ = hw.slice_min_max(w3.copy(), group=g, group_axis=1)
        compare(f"group min of {w3.shape} along axis 1", lo3, w3.reshape(w3.shape[0], K // g, g, 2).min(2),
                FORWARD_TOL)
        plo, phi = hw.slice_min_max(w.copy())
        compare("per-tensor min and max (no group)", [plo, phi], [w.min(), w.max()], FORWARD_TOL)
        clo, _ = hw.slice_min_max(w.copy(), axis=1)
        compare("per-channel min (axis=1)", clo, w.min(0), FORWARD_TOL)
        return f"groups of {g} on {w.shape}"

    def expand():
        p = rng.standard_normal((K // g, N))
        got = hw.expand(p, w.shape, group=g, group_axis=0)
        compare(f"expand of ({K // g}, {N}) group scales to {w.shape}", np.broadcast_to(got, w.shape),
                np.repeat(p, g, axis=0), FORWARD_TOL,
                [("that tiles the groups (np.tile); each group's scale repeats g times in a row (np.repeat)",
                  np.tile(p, (g, 1)))])
        c = rng.standard_normal(N)
        compare(f"expand of ({N},) per-channel scales along axis 1", np.broadcast_to(hw.expand(c, w.shape, axis=1),
                                                                                   w.shape),
                np.broadcast_to(c[None, :], w.shape), FORWARD_TOL)
        return "group-wise and per-channel"

    def int4():
        lo, hi = hw.slice_min_max(w.copy(), group=g, group_axis=0)
        s, z = _sz(np.asarray(lo), np.asarray(hi), 4, True)
        se = np.broadcast_to(hw.expand(s, w.shape, group=g, group_axis=0), w.shape)
        q = np.clip(np.rint(w / se), -7, 7)
        err = np.abs(q * se - w)
        worst = float((err / (se / 2)).max())
        if worst > 1 + 1e-9:
            raise CheckFailed(f"int4 round trip with your group scales: error up to {worst:.3g} half-steps; "
                              f"within each group's range it must be at most s/2")
        return f"max error {worst:.3f} of s/2"

    yield "group min and max", minmax
    yield "expand", expand
    yield "int4 round trip", int4


def check_ste(hw, rng):
    bits = int(rng.integers(2, 9))
    qmin, qmax = _range(bits, True)
    s, z = float(rng.uniform(0.05, 0.5)), 0
    x = rng.uniform((qmin - 3) * s, (qmax + 3) * s, 30)
    x[:4] = np.array([qmin, qmax, qmin - 1, qmax + 1]) * s  # exactly on the boundaries, and one step outside

    def fq():
        x_hat, inside = hw.fake_quantize(x.copy(), s, z, qmin, qmax)
        v = np.rint(x / s) + z
        compare(f"fake-quantized x ({bits}-bit symmetric, s {s:.3g})", x_hat, (np.clip(v, qmin, qmax) - z) * s,
                FORWARD_TOL, [("the clamp looks missing", (v - z) * s)])
        want = (v >= qmin) & (v <= qmax)
        compare_exact("inside: where the unclamped integer lies in [q_min, q_max] (ends included)",
                      np.asarray(inside), want,
                      [("the boundaries look excluded; q = q_min and q = q_max are inside", (v > qmin) & (v < qmax)),
                       ("inside looks inverted", ~want)])
        return "x_hat and the inside mask, boundaries included"

    def backward():
        v = np.rint(x / s) + z
        inside = (v >= qmin) & (v <= qmax)
        dout = rng.standard_normal(x.shape)
        got = hw.fake_quant_backward(dout.copy(), inside)
        compare("dL/dw = dL/dw_hat where inside, 0 where clamped", got, dout * inside, FORWARD_TOL,
                [("the gradient passes everywhere; it is 0 where the clamp bit", dout),
                 ("the gradient passes where clamped instead of inside", dout * ~inside)])
        return f"{int((~inside).sum())} of {x.size} clamped"

    yield "fake_quantize", fq
    yield "straight-through backward", backward


CHECKS = {"affine": check_affine, "groupwise": check_groupwise, "ste": check_ste}
