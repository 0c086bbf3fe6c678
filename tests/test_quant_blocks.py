"""llama.cpp's Q8_0 and Q4_0 blocks against the format description."""
import numpy as np
import pytest

from minigpt.kernels import block_formats as B


def test_sizes_and_bits_per_weight():
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    assert B.quantize_blocks(x, "q8_0").shape == (3, 2 * 34)
    assert B.quantize_blocks(x, "q4_0").shape == (3, 2 * 18)
    assert B.bits_per_weight("q8_0") == 8.5 and B.bits_per_weight("q4_0") == 4.5


def test_q8_0_block_layout():
    x = np.linspace(-3.0, 2.0, 32, dtype=np.float32)
    b = B.quantize_blocks(x, "q8_0")
    d = b[:2].view("<f2")[0]
    assert d == np.float16(np.float32(3.0) / np.float32(127))  # max |x| / 127, stored as float16
    q = b[2:].view(np.int8)
    assert q[0] == -127 and np.abs(q).max() == 127
    np.testing.assert_array_equal(q, np.round(x / (np.float32(3.0) / 127)).astype(np.int8))
    np.testing.assert_array_equal(B.dequantize_blocks(b, "q8_0"), q.astype(np.float32) * np.float32(d))


def test_q8_0_rounds_halves_away_from_zero():
    x = np.zeros(32, dtype=np.float32)
    x[0], x[1], x[2] = 127.0, 2.5, -0.5  # d = 1 exactly: x / d are the halves themselves
    q = B.quantize_blocks(x, "q8_0")[2:].view(np.int8)
    assert (q[1], q[2]) == (3, -1)  # C's roundf; NumPy's rint would give 2 and 0


def test_q4_0_nibble_order_and_offset():
    # d = -8 / -8 = 1: the codes are x + 8 exactly; element j low nibble, j + 16 high nibble
    x = np.zeros(32, dtype=np.float32)
    x[0] = -8.0
    x[1:16] = np.arange(-7, 8)  # -7..7
    x[16:32] = np.arange(7, -9, -1)  # 7..-8
    b = B.quantize_blocks(x, "q4_0")
    assert b[:2].view("<f2")[0] == 1.0
    u = (x + 8).astype(np.uint8)
    np.testing.assert_array_equal(b[2:] & 0x0F, u[:16])
    np.testing.assert_array_equal(b[2:] >> 4, u[16:])
    np.testing.assert_array_equal(B.dequantize_blocks(b, "q4_0"), x)


def test_q4_0_largest_magnitude_maps_to_minus_8_whatever_its_sign():
    rng = np.random.default_rng(1)
    for sign in (1.0, -1.0):
        x = rng.uniform(-1, 1, 32).astype(np.float32)
        x[5] = sign * 3.0
        b = B.quantize_blocks(x, "q4_0")
        d, u = B.unpack_q4_0(b)
        assert u[0, 5] == 0 and d[0, 0] == np.float32(np.float16(sign * 3.0 / -8))
        x_hat = B.dequantize_blocks(b, "q4_0")
        assert x_hat[5] == np.float32(-8) * d[0, 0]  # m itself, up to d's float16 rounding
        # every other value within half a step (the codes were chosen with the float32 d)
        d32 = abs(np.float32(sign * 3.0) / np.float32(-8))
        assert np.all(np.abs(x_hat - x) <= d32 / 2 + 8 * abs(d32 - abs(d[0, 0])) + 1e-6)


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_all_zero_blocks(fmt):
    b = B.quantize_blocks(np.zeros((2, 32), dtype=np.float32), fmt)
    assert np.all(b[:, :2].copy().view("<f2") == 0)  # d = 0 (Q4_0: 0 / -8 = -0.0, bytes 00 80)
    assert np.all(B.dequantize_blocks(b, fmt) == 0)
    if fmt == "q4_0":
        assert np.all(b[:, 2:] == 0x88)  # code 8 = zero, both nibbles


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_error_shrinks_with_bits_and_an_outlier_costs_its_block(fmt):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    b = B.quantize_blocks(x, fmt)
    err = np.abs(B.dequantize_blocks(b, fmt) - x)
    qmax = 127 if fmt == "q8_0" else 8
    d32 = np.abs(x.reshape(64, 8, 32)).max(axis=-1) / np.float32(qmax)  # the step the codes were chosen with
    d16 = np.abs(b.reshape(64, 8, -1)[..., :2].copy().view("<f2")[..., 0].astype(np.float32))  # the step stored
    # half a step, plus the float16 rounding of d times the largest code
    bound = (d32 / 2 + qmax * np.abs(d32 - d16) + 1e-7)[..., None]
    eb = err.reshape(64, 8, 32)
    if fmt == "q8_0":
        assert np.all(eb <= bound)
    else:  # Q4_0's grid stops at +7 d on the side away from m: values beyond 7.5 d are clipped there
        xb = x.reshape(64, 8, 32)
        m = np.take_along_axis(xb, np.abs(xb).argmax(axis=-1)[..., None], axis=-1)
        clipped = xb * (-8 / m) > 7.5
        assert clipped.any() and np.all(eb[~clipped] <= np.broadcast_to(bound, eb.shape)[~clipped])
        assert np.all(eb[clipped] <= np.broadcast_to(bound + d32[..., None] / 2, eb.shape)[clipped])
    y = x.copy()
    y[0, 3] = 50.0  # one outlier: only its own block of 32 gets a coarse step
    err_y = np.abs(B.dequantize_blocks(B.quantize_blocks(y, fmt), fmt) - y)
    assert err_y[0, :32].mean() > 5 * err[0, :32].mean()
    np.testing.assert_array_equal(err_y[0, 32:], err[0, 32:])


def test_shape_errors():
    with pytest.raises(ValueError, match="multiple of 32"):
        B.quantize_blocks(np.zeros(40), "q8_0")
    with pytest.raises(ValueError, match="multiple of 18 bytes"):
        B.dequantize_blocks(np.zeros(20, np.uint8), "q4_0")
    with pytest.raises(ValueError, match="unknown block format"):
        B.quantize_blocks(np.zeros(32), "q5_0")


def test_weight_rows_are_output_channels():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 5)).astype(np.float32)  # (K, N)
    blocks = B.quantize_weight_blocks(w, "q4_0")
    assert blocks.shape == (5, 2 * 18)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    w_hat = B.dequantize_blocks(blocks, "q4_0").T  # (K, N)
    np.testing.assert_allclose(B.block_weight_matmul_ref(x, blocks, "q4_0"), x @ w_hat, rtol=1e-6)
