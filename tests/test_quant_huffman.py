"""Huffman coding (minigpt.quant.huffman): exact round trips, a prefix-free canonical
code, Kraft's equality, the entropy bound, and what it saves on k-means indices
and on a sparse matrix's gaps."""
from fractions import Fraction

import numpy as np
import pytest

from minigpt.errors import ConfigError
from minigpt.layers.sparse_linear import csr_from_dense
from minigpt.quant.huffman import (
    canonical_codes,
    code_lengths,
    entropy_bits,
    fixed_width_nbytes,
    huffman_decode,
    huffman_encode,
    huffman_nbytes,
    indices_from_gaps,
    sparse_gaps,
)
from minigpt.quant.kmeans import kmeans_quantize

RNG = np.random.default_rng(0)
DATA = {
    "uniform uint8": RNG.integers(0, 256, 3000).astype(np.uint8),
    "skewed": np.minimum(RNG.geometric(0.3, 5000) - 1, 200).astype(np.int64),
    "two symbols": (RNG.random(1000) < 0.05).astype(np.uint8),
    "2-D int": RNG.integers(0, 7, (30, 40)),
}


@pytest.mark.parametrize("name", DATA)
def test_round_trip_is_exact(name):
    x = DATA[name]
    enc = huffman_encode(x)
    assert enc["bits"].dtype == np.uint8 and enc["lengths"].dtype == np.uint8
    np.testing.assert_array_equal(huffman_decode(enc), x.ravel())


def test_single_symbol_and_empty_input():
    x = np.full(17, 5, dtype=np.uint8)
    enc = huffman_encode(x)
    assert int(enc["n_bits"]) == 17 and enc["lengths"][5] == 1 and enc["lengths"].sum() == 1  # one bit each
    np.testing.assert_array_equal(huffman_decode(enc), x)
    empty = huffman_encode(np.zeros(0, dtype=np.uint8))
    assert int(empty["n_bits"]) == 0 and empty["bits"].size == 0
    assert huffman_decode(empty).size == 0


def words(lengths):
    codes = canonical_codes(lengths)
    return {s: format(int(codes[s]), f"0{int(lengths[s])}b") for s in np.flatnonzero(lengths)}


@pytest.mark.parametrize("name", DATA)
def test_the_code_is_prefix_free_and_a_full_tree(name):
    counts = np.bincount(DATA[name].ravel())
    lengths = code_lengths(counts)
    w = words(lengths)
    assert set(w) == set(np.flatnonzero(counts))  # every used symbol, and only those, has a word
    for a in w.values():
        assert sum(b.startswith(a) for b in w.values()) == 1  # a is a prefix of itself only
    # Kraft's equality, in exact fractions: a full binary tree
    assert sum(Fraction(1, 2 ** int(n)) for n in lengths[lengths > 0]) == 1


@pytest.mark.parametrize("name", DATA)
def test_mean_length_is_within_one_bit_of_the_entropy(name):
    x = DATA[name]
    enc = huffman_encode(x)
    mean = int(enc["n_bits"]) / x.size
    H = entropy_bits(x)
    assert H - 1e-12 <= mean < H + 1


def test_lengths_of_a_textbook_example():
    # counts 45, 13, 12, 16, 9, 5 (a classic example): the optimal lengths are 1, 3, 3, 3, 4, 4
    np.testing.assert_array_equal(code_lengths([45, 13, 12, 16, 9, 5]), [1, 3, 3, 3, 4, 4])
    assert words(code_lengths([45, 13, 12, 16, 9, 5]))[0] == "0"


def test_bad_input_is_named():
    with pytest.raises(ConfigError, match="nonnegative integers"):
        huffman_encode(np.array([0.5, 1.0]))
    with pytest.raises(ConfigError, match="nonnegative integers"):
        huffman_encode(np.array([1, -2]))


def test_sparse_gaps_round_trip():
    w = RNG.standard_normal((300, 20)) * (RNG.random((300, 20)) < 0.1)
    w[:, 3] = 0  # an empty column
    csr = csr_from_dense(w)
    gaps = sparse_gaps(csr)
    assert gaps.min() >= 0
    np.testing.assert_array_equal(indices_from_gaps(gaps, csr["indptr"]), csr["indices"])
    np.testing.assert_array_equal(huffman_decode(huffman_encode(gaps)), gaps)


def test_savings_on_kmeans_indices_and_sparse_gaps():
    """Report (run with -s) the bytes against fixed-width storage."""
    w = RNG.standard_t(4, size=(256, 256)).astype(np.float32) * 0.02  # trained-like: heavy tails
    print()
    for bits in (2, 3, 4, 5):
        idx = kmeans_quantize(w, bits)["kmeans_idx"]
        enc = huffman_encode(idx, 2 ** bits)
        fixed = fixed_width_nbytes(idx, 2 ** bits)
        print(f"k-means {bits}-bit indices: fixed {fixed} B, Huffman {huffman_nbytes(enc)} B "
              f"({int(enc['n_bits']) / idx.size:.3f} bits/index, entropy {entropy_bits(idx):.3f})")
        np.testing.assert_array_equal(huffman_decode(enc), idx.ravel())
        assert int(enc["n_bits"]) <= idx.size * bits  # never longer than fixed width, bit for bit
    for density in (0.1, 0.3):
        sparse = w * (np.abs(w) > np.quantile(np.abs(w), 1 - density))  # magnitude pruned
        csr = csr_from_dense(sparse)
        gaps = sparse_gaps(csr)
        enc = huffman_encode(gaps)
        print(f"{density:.0%} dense, {gaps.size} nonzeros: uint16 indices {csr['indices'].nbytes} B, "
              f"fixed-width gaps {fixed_width_nbytes(gaps)} B, Huffman gaps {huffman_nbytes(enc)} B")
        assert huffman_nbytes(enc) < csr["indices"].nbytes
