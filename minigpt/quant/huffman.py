"""Huffman coding of integer arrays: the last stage of Deep Compression.

    enc = huffman_encode(q["kmeans_idx"])     # {"bits": packed uint8, "n_bits", "lengths", "size"}
    np.array_equal(huffman_decode(enc), q["kmeans_idx"].ravel())   # exact
    huffman_nbytes(enc), fixed_width_nbytes(q["kmeans_idx"])        # what it saves

A weight's k-means indices, or the gaps between a sparse matrix's nonzero
positions, are far from uniform: a few centroids near 0 hold most weights,
and short gaps are common. A Huffman code gives symbol s a code word of l_s
bits with frequent symbols short, and is the prefix code of least total
length sum_s n_s l_s (n_s the counts). Built by repeatedly merging the two
least frequent nodes; its lengths satisfy Kraft's equality sum_s 2^(-l_s) = 1
(a full binary tree), and its mean length L lies in H <= L < H + 1, with H the
entropy of the counts in bits.

Canonical form: only the lengths are stored (one uint8 per symbol of the
alphabet). Code words are handed out in order of (length, symbol), each one
the previous plus 1, shifted left when the length grows; the decoder rebuilds
the same words from the lengths alone. Everything is plain arrays, so an
encoded tensor saves to .npz without pickle.

One used symbol gets a 1-bit code word (a code of 0-bit words could not say
how many symbols there are; "size" does, but a 1-bit word keeps the code a tree).
"""
from __future__ import annotations

import heapq
import math

import numpy as np

from ..errors import ConfigError

MAX_CODE_BITS = 63  # a code word is held in a uint64 while encoding


def code_lengths(counts) -> np.ndarray:
    """Huffman code word lengths (len(counts),) int64 from symbol counts; 0 for unused symbols."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or (counts.size and counts.min() < 0):
        raise ConfigError("Huffman counts must be a 1-D array of nonnegative counts")
    lengths = np.zeros(len(counts), dtype=np.int64)
    used = np.flatnonzero(counts)
    if len(used) == 1:
        lengths[used] = 1
    if len(used) <= 1:
        return lengths
    # heap of (count, tiebreak, symbols under the node): merging two nodes adds 1 to their symbols' depth
    heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(used)]
    heapq.heapify(heap)
    tiebreak = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        lengths[s1] += 1
        lengths[s2] += 1
        heapq.heappush(heap, (c1 + c2, tiebreak, s1 + s2))
        tiebreak += 1
    if lengths.max() > MAX_CODE_BITS:
        raise ConfigError(f"a Huffman code word would take {lengths.max()} bits (at most {MAX_CODE_BITS})")
    return lengths


def canonical_codes(lengths) -> np.ndarray:
    """The canonical code word of each symbol (uint64; its low lengths[s] bits, most significant first)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.uint64)
    order = sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s))
    code, prev = -1, 0
    for s in order:
        code = (code + 1) << int(lengths[s] - prev)
        codes[s] = code
        prev = int(lengths[s])
    return codes


def _check_symbols(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iu" or (x.size and x.min() < 0):
        raise ConfigError(f"Huffman coding takes nonnegative integers, got {x.dtype} values")
    return x.ravel().astype(np.int64)


def huffman_encode(x, n_symbols: int | None = None) -> dict:
    """{"bits": packed uint8, "n_bits": (), "lengths": (n_symbols,) uint8, "size": ()} of the
    nonnegative integers x (flattened): the canonical Huffman code of their counts."""
    s = _check_symbols(x)
    n_symbols = int(s.max()) + 1 if n_symbols is None and s.size else (n_symbols or 0)
    lengths = code_lengths(np.bincount(s, minlength=n_symbols))
    codes = canonical_codes(lengths)
    L, C = lengths[s], codes[s]  # (n,) each element's length and code word
    ends = np.cumsum(L)  # (n,) bit offset just past each code word
    bits = np.zeros(int(ends[-1]) if s.size else 0, dtype=np.uint8)
    starts = ends - L
    for b in range(int(L.max()) if s.size else 0):  # the b-th bit of every code word at least b+1 long
        m = L > b
        shift = (L[m] - 1 - b).astype(np.uint64)
        bits[starts[m] + b] = ((C[m] >> shift) & np.uint64(1)).astype(np.uint8)
    return {"bits": np.packbits(bits), "n_bits": np.array(len(bits), dtype=np.int64),
            "lengths": lengths.astype(np.uint8), "size": np.array(s.size, dtype=np.int64)}


def huffman_decode(enc: dict) -> np.ndarray:
    """The integers (flat, int64) that huffman_encode coded: read bit by bit, a code word ends where
    the bits read so far fall in the range of canonical words of that length."""
    lengths = enc["lengths"].astype(np.int64)
    n = int(enc["size"])
    out = np.zeros(n, dtype=np.int64)
    if n == 0:
        return out
    bits = np.unpackbits(enc["bits"])[: int(enc["n_bits"])].tolist()
    codes = canonical_codes(lengths)
    # words of length l are first[l] .. first[l] + count[l] - 1, for symbols_by_len[l] in symbol order
    by_len = {}
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        by_len.setdefault(int(lengths[s]), []).append(int(s))
    first = {ln: int(codes[syms[0]]) for ln, syms in by_len.items()}
    pos = 0
    for i in range(n):
        code = ln = 0
        while True:
            code = (code << 1) | bits[pos]
            pos += 1
            ln += 1
            syms = by_len.get(ln)
            if syms is not None and 0 <= code - first[ln] < len(syms):
                out[i] = syms[code - first[ln]]
                break
            if ln > MAX_CODE_BITS:
                raise ConfigError("corrupt Huffman stream: no code word matches")
    return out


def huffman_nbytes(enc: dict) -> int:
    """Bytes of an encoded array: the packed bits plus its code (one length byte per symbol)."""
    return int(enc["bits"].nbytes + enc["lengths"].nbytes)


def fixed_width_nbytes(x, n_symbols: int | None = None) -> int:
    """Bytes of x at the fewest whole bits a symbol that fit its alphabet, packed."""
    s = _check_symbols(x)
    n_symbols = n_symbols or (int(s.max()) + 1 if s.size else 1)
    return math.ceil(s.size * max(1, math.ceil(math.log2(n_symbols))) / 8)


def entropy_bits(x) -> float:
    """H = -sum_s p_s log2 p_s of the symbols' frequencies (bits a symbol)."""
    s = _check_symbols(x)
    if s.size == 0:
        return 0.0
    p = np.bincount(s)
    p = p[p > 0] / s.size
    return float(-(p * np.log2(p)).sum())


def sparse_gaps(csr: dict) -> np.ndarray:
    """Gaps (nnz,) int64 between the nonzero positions of each output column of CSR
    arrays (minigpt.prune.sparse, indices sorted within a column): index - previous index - 1,
    the first of a column counted from -1, so every gap is >= 0."""
    idx = csr["indices"].astype(np.int64)
    prev = np.concatenate([[-1], idx[:-1]])  # (nnz,) the previous index ...
    starts = csr["indptr"][:-1][np.diff(csr["indptr"]) > 0]
    prev[starts] = -1  # ... except at the start of a column
    return idx - prev - 1


def indices_from_gaps(gaps, indptr) -> np.ndarray:
    """The column-sorted row indices whose sparse_gaps are `gaps` (the inverse)."""
    gaps = np.asarray(gaps, dtype=np.int64)
    steps = gaps + 1
    total = np.cumsum(steps)  # running sum over all columns ...
    col_of = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))  # (nnz,)
    before = np.concatenate([[0], total])[np.asarray(indptr[:-1])]  # ... restarted at each column
    return total - before[col_of] - 1
