"""The one quantizer (minigpt.kernels.quantizer) against its formulas."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minigpt.kernels import int_matmul_ref as R
from minigpt.kernels.quantizer import (
    dequantize,
    expand,
    fake_quantize,
    int_range,
    quantize,
    quantize_tensor,
    scale_zero_point,
    slice_min_max,
)

BITS = range(2, 9)


@pytest.mark.parametrize("bits", BITS)
def test_integer_ranges(bits):
    assert int_range(bits, symmetric=False) == (0, 2**bits - 1)
    assert int_range(bits, symmetric=True) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)


@pytest.mark.parametrize("bits", [1, 9, 0, 4.0, True, "8"])
def test_bits_outside_2_to_8_are_refused(bits):
    with pytest.raises(ValueError, match="bits must be an integer from 2 to 8"):
        int_range(bits, True)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("lo, hi", [(-1.3, 2.7), (0.5, 3.0), (-4.0, -0.25), (-2.0, 2.0)])
def test_scale_and_zero_point_follow_the_formulas(bits, lo, hi):
    # written out by hand, in float64
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)  # widened to include 0
    s, z = scale_zero_point(np.float64(lo), np.float64(hi), bits, symmetric=False)
    assert s == (hi0 - lo0) / (2**bits - 1)
    assert z == 0 - round(lo0 / ((hi0 - lo0) / (2**bits - 1)))
    s, z = scale_zero_point(np.float64(lo), np.float64(hi), bits, symmetric=True)
    assert s == max(-lo0, hi0) / (2 ** (bits - 1) - 1) and z == 0


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", BITS)
def test_zero_is_exactly_representable(bits, symmetric):
    rng = np.random.default_rng(bits)
    for _ in range(50):
        lo, hi = np.sort(rng.normal(0, 10 ** rng.uniform(-4, 4), 2))
        s, z = scale_zero_point(lo, hi, bits, symmetric)
        q_min, q_max = int_range(bits, symmetric)
        assert q_min <= z <= q_max
        q = quantize(np.zeros(3), s, z, q_min, q_max)
        assert np.all(q == z) and np.all(dequantize(q, s, z) == 0.0)


@settings(max_examples=200, deadline=None)
@given(x=arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e6, 1e6, width=64)),
       bits=st.integers(2, 8), symmetric=st.booleans())
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(x, bits, symmetric):
    t = quantize_tensor(x, bits, symmetric)
    err = np.abs(t.dequantize() - x)
    # s/2 plus the float rounding of x / s and (q - z) s
    assert np.all(err <= t.scale / 2 * (1 + 1e-9) + 1e-12 * np.abs(x)), (err.max(), t.scale)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_values_outside_the_range_are_clamped_exactly(bits, symmetric):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, 1000)
    lo, hi = -1.0, 1.5  # a clipped range: many values lie outside it
    t = quantize_tensor(x, bits, symmetric, lo=lo, hi=hi)
    q_min, q_max = int_range(bits, symmetric)
    x_hat = t.dequantize()
    top, bottom = (q_max - t.zero_point) * t.scale, (q_min - t.zero_point) * t.scale  # the grid's ends
    assert np.all(x_hat[x > top + t.scale / 2] == top)
    assert np.all(x_hat[x < bottom - t.scale / 2] == bottom)
    inside = (x >= max(lo, bottom)) & (x <= min(hi, top))
    assert inside.sum() > 200 and np.all(np.abs(x_hat - x)[inside] <= t.scale / 2 * (1 + 1e-12))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("value", [0.0, 3.25, -7.0, 1e-30])
def test_constant_and_all_zero_tensors(value, symmetric):
    x = np.full((4, 6), value, dtype=np.float32)
    for layout in (dict(), dict(axis=1), dict(group=2, group_axis=1)):
        t = quantize_tensor(x, 4, symmetric, **layout)
        assert np.all(np.isfinite(t.scale)) and np.all(t.scale > 0)
        x_hat = t.dequantize()
        assert np.all(np.isfinite(x_hat))
        assert np.allclose(x_hat, value, rtol=1e-6, atol=0), (layout, x_hat)
        if value == 0.0:
            assert np.all(x_hat == 0) and np.all(t.scale == 1)  # the all-zero slice's scale


def test_layouts_per_tensor_per_channel_group_wise():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((12, 5))  # (K, N), stored (in, out)
    assert quantize_tensor(w, 8).scale.shape == ()
    t = quantize_tensor(w, 8, axis=1)  # one scale per output channel
    assert t.scale.shape == (5,)
    np.testing.assert_array_equal(t.scale, np.abs(w).max(axis=0) / 127)
    g = quantize_tensor(w, 4, group=4, group_axis=0)  # groups of 4 inputs of each output
    assert g.scale.shape == (3, 5)
    np.testing.assert_array_equal(g.scale, np.abs(w.reshape(3, 4, 5)).max(axis=1) / 7)
    np.testing.assert_array_equal(expand(g.scale, w.shape, group=4, group_axis=0), np.repeat(g.scale, 4, axis=0))
    lo, hi = slice_min_max(w, axis=0)  # one range per row
    assert lo.shape == (12,) and np.array_equal(hi, w.max(axis=1))
    with pytest.raises(ValueError, match="group size 5 must be a positive integer dividing 12"):
        quantize_tensor(w, 4, group=5)
    with pytest.raises(ValueError, match="not both"):
        quantize_tensor(w, 4, axis=0, group=4)


@pytest.mark.parametrize("symmetric", [False, True])
def test_per_channel_error_bound_never_above_per_tensor(symmetric):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 16)) * np.exp(rng.normal(0, 1, 16))  # channels of different sizes
    tensor = quantize_tensor(w, 4, symmetric)
    channel = quantize_tensor(w, 4, symmetric, axis=1)
    # Each channel's range lies inside the tensor's, so its step is never larger:
    assert np.all(channel.scale <= tensor.scale * (1 + 1e-12))
    # so its worst error (at most half its step) never exceeds per-tensor's bound,
    err_c = np.abs(channel.dequantize() - w).max(axis=0)
    assert np.all(err_c <= tensor.scale / 2)
    # and on such a tensor the mean squared error is far lower.
    assert ((channel.dequantize() - w) ** 2).mean() < 0.5 * ((tensor.dequantize() - w) ** 2).mean()
    # Not every tensor, though: values that sit exactly on the coarse grid lose to a finer one.
    x = np.array([[127.0, 0.0], [2.0, 1.0]]).T  # channel 1 = (0, 1) sits on per-tensor's grid (s = 1)
    assert np.abs(quantize_tensor(x, 8, True).dequantize() - x).max() == 0.0
    assert np.abs(quantize_tensor(x, 8, True, axis=1).dequantize() - x)[:, 1].max() > 0.0


def test_fake_quantize_equals_quantize_then_dequantize():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (30, 8)).astype(np.float32)
    for bits, symmetric in [(8, False), (4, True), (2, False)]:
        lo, hi = np.float32(-1.5), np.float32(2.0)
        s, z = scale_zero_point(lo, hi, bits, symmetric)
        q_min, q_max = int_range(bits, symmetric)
        x_hat, inside = fake_quantize(x, s, z, q_min, q_max)
        assert x_hat.dtype == np.float32
        np.testing.assert_array_equal(x_hat, dequantize(quantize(x, s, z, q_min, q_max), s, z))
        v = np.rint(x / s) + z
        np.testing.assert_array_equal(inside, (v >= q_min) & (v <= q_max))


def test_the_kernels_helpers_are_this_quantizer():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 64)).astype(np.float32)
    q, s = R.quantize_per_row(x)
    t = quantize_tensor(x, 8, True, axis=0)
    np.testing.assert_array_equal(q, t.q)
    np.testing.assert_array_equal(s, t.scale)
    for bits in (2, 3, 4):
        packed, scales = R.quantize_int4_groupwise(x.T.copy(), 16, bits=bits)
        g = quantize_tensor(x.T, bits, True, group=16)
        np.testing.assert_array_equal(R.unpack_int4(packed, 16), g.q)
        np.testing.assert_array_equal(scales, g.scale)
