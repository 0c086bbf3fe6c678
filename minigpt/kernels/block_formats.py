"""llama.cpp's block formats Q8_0 and Q4_0: pack, unpack, and the product
x @ W_hat of a weight stored in them (the NumPy reference: dequantize, then
multiply).

Both cut a row of n values (n a multiple of 32) into blocks of 32, and each
block keeps one scale d as a float16 followed by its 32 codes:

    Q8_0, 34 bytes a block (8.5 bits a weight):
        d = max|x| / 127,   q = round(x / d) in [-127, 127] (half away from zero),
        bytes: d (2, little-endian float16), then q as 32 int8
        x_hat = q * d
    Q4_0, 18 bytes a block (4.5 bits a weight):
        m = the block's value of largest magnitude (its sign kept; the first one on a tie),
        d = m / -8,   u = min(15, trunc(x / d + 8.5)) in [0, 15],
        bytes: d (2), then 16 bytes, byte j = u[j] | u[j + 16] << 4
        (element j in the low nibble, element j + 16 in the high one)
        x_hat = (u - 8) * d

Q4_0's m maps to u = 0 (x_hat = -8 d = m, exact) and the other side of
zero reaches at most u = 15 (+7 d): the grid is one step lopsided, toward
the sign of the largest value, which is therefore never clipped.

The arithmetic follows llama.cpp's reference quantizer, so the bytes are the
same as its (the crosscheck tests compare them with the gguf package):
float32 throughout; 1/d is computed once and multiplied (0 for an all-zero
block, whose codes are then 0 for Q8_0 and 8 for Q4_0); Q4_0's x (1/d) and
the + 8.5 are two float32 operations, each rounded (not one fused
multiply-add: that would move codes whose x / d sits next to a half); the
stored d is d rounded to float16, while the codes were computed with the
float32 d.

A weight W (K, N) stored (in, out) is kept as llama.cpp keeps a matrix: one
row of blocks per output channel, blocks (N, K / 32 * bytes per block).
"""
from __future__ import annotations

import numpy as np

BLOCK = 32  # values a block
BLOCK_BYTES = {"q8_0": 2 + BLOCK, "q4_0": 2 + BLOCK // 2}
FORMATS = tuple(BLOCK_BYTES)


def bits_per_weight(fmt: str) -> float:
    """8 * bytes a block / 32: 8.5 for Q8_0, 4.5 for Q4_0 (the float16 scale included)."""
    return 8 * BLOCK_BYTES[_check_format(fmt)] / BLOCK


def _check_format(fmt):
    if fmt not in BLOCK_BYTES:
        raise ValueError(f"unknown block format {fmt!r}; choose one of {list(FORMATS)}")
    return fmt


def _blocks(x):
    """x (..., n) -> float32 (..., n / 32, 32)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[-1] % BLOCK:
        raise ValueError(f"the last axis must be a multiple of {BLOCK} values, got shape {x.shape}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // BLOCK, BLOCK)


def _inverse(d):
    """1 / d in float32, 0 where d is 0."""
    safe = np.where(d == 0, np.float32(1), d)
    return np.where(d == 0, np.float32(0), np.float32(1) / safe).astype(np.float32)


def _round_half_away(v):
    """C's roundf: halves go away from zero (np.rint would send 2.5 to 2).
    Done in float64, where v + 0.5 is exact for float32 v."""
    v = v.astype(np.float64)
    return np.copysign(np.floor(np.abs(v) + 0.5), v)


def _with_scale(d, codes):
    """(..., nb, 2 + c) uint8: the float16 scale's two bytes, then the codes."""
    d16 = d.astype("<f2").view(np.uint8)  # (..., nb, 2)
    return np.concatenate([d16, codes], axis=-1)


def _flat(b, x_shape):
    return np.ascontiguousarray(b.reshape(*x_shape[:-1], -1))


def quantize_q8_0(x):
    """x (..., n) float -> (..., n / 32 * 34) uint8."""
    xb = _blocks(x)  # (..., nb, 32)
    d = (np.abs(xb).max(axis=-1, keepdims=True) / np.float32(127)).astype(np.float32)  # (..., nb, 1)
    q = _round_half_away((xb * _inverse(d)).astype(np.float32)).astype(np.int8)
    return _flat(_with_scale(d, q.view(np.uint8)), np.shape(x))


def quantize_q4_0(x):
    """x (..., n) float -> (..., n / 32 * 18) uint8."""
    xb = _blocks(x)  # (..., nb, 32)
    at = np.abs(xb).argmax(axis=-1)[..., None]  # first index of the largest magnitude
    m = np.take_along_axis(xb, at, axis=-1)  # (..., nb, 1), sign kept
    d = (m / np.float32(-8)).astype(np.float32)
    v = (xb * _inverse(d)).astype(np.float32) + np.float32(8.5)  # two float32 roundings, as the reference
    u = np.minimum(15, np.trunc(v)).astype(np.uint8)  # (..., nb, 32), in [0, 15]
    packed = u[..., : BLOCK // 2] | (u[..., BLOCK // 2:] << 4)  # (..., nb, 16)
    return _flat(_with_scale(d, packed), np.shape(x))


def _split(b, fmt):
    """bytes (..., nb * bytes) -> (d float32 (..., nb, 1), codes uint8 (..., nb, bytes - 2))."""
    b = np.asarray(b, dtype=np.uint8)
    size = BLOCK_BYTES[fmt]
    if b.ndim == 0 or b.shape[-1] % size:
        raise ValueError(f"{fmt} rows must be a multiple of {size} bytes, got shape {b.shape}")
    b = np.ascontiguousarray(b.reshape(*b.shape[:-1], b.shape[-1] // size, size))
    d = b[..., :2].copy().view("<f2").astype(np.float32)  # (..., nb, 1)
    return d, b[..., 2:]


def dequantize_q8_0(b):
    """(..., nb * 34) uint8 -> x_hat (..., nb * 32) float32 = q * d."""
    d, codes = _split(b, "q8_0")
    x = codes.view(np.int8).astype(np.float32) * d  # (..., nb, 32)
    return x.reshape(*x.shape[:-2], -1)


def unpack_q4_0(b):
    """(..., nb * 18) uint8 -> (d (..., nb, 1) float32, u (..., nb, 32) uint8 in [0, 15])."""
    d, codes = _split(b, "q4_0")
    return d, np.concatenate([codes & 0x0F, codes >> 4], axis=-1)


def dequantize_q4_0(b):
    """(..., nb * 18) uint8 -> x_hat (..., nb * 32) float32 = (u - 8) * d."""
    d, u = unpack_q4_0(b)
    x = (u.astype(np.float32) - np.float32(8)) * d
    return x.reshape(*x.shape[:-2], -1)


QUANTIZE = {"q8_0": quantize_q8_0, "q4_0": quantize_q4_0}
DEQUANTIZE = {"q8_0": dequantize_q8_0, "q4_0": dequantize_q4_0}


def quantize_blocks(x, fmt):
    """x (..., n) -> (..., n / 32 * bytes a block) uint8 in format fmt."""
    return QUANTIZE[_check_format(fmt)](x)


def dequantize_blocks(b, fmt):
    """The float32 values the blocks stand for."""
    return DEQUANTIZE[_check_format(fmt)](b)


def quantize_weight_blocks(w, fmt):
    """W (K, N) stored (in, out) -> blocks (N, K / 32 * bytes): a row per output channel."""
    return quantize_blocks(np.asarray(w).T, fmt)


def block_weight_matmul_ref(x, blocks, fmt):
    """x (M, K) float, blocks (N, K / 32 * bytes) -> x @ W_hat (M, N), W_hat = dequantized blocks^T."""
    w = dequantize_blocks(blocks, fmt).astype(x.dtype)  # (N, K)
    return x @ w.T
