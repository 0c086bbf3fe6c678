"""A linear layer whose weight is stored sparse: the pruned model's linear.

Forward:  out = x @ W + b,  W (K, N) given by its nonzeros only
Shapes:   x (..., K), b (N,) -> out (..., N)

The format is CSR of the transposed weight W^T (N, K), i.e. W compressed
by output column (CSC of W): output j's nonzeros are the positions
p in [indptr[j], indptr[j+1]), holding W[indices[p], j] = values[p], with
indices increasing within each column. Like the integer weights
(minigpt.layers.quantized_linear) it lives in the parameter dict as plain
arrays beside the bias, so a sparse model saves and loads like any other:

    NAME.weight.csr_values   (nnz,)  float    the nonzero weights, output by output
    NAME.weight.csr_indices  (nnz,)  uint16   their input index k (int32 if K > 65536)
    NAME.weight.csr_indptr   (N+1,)  int64    output j's entries are [indptr[j], indptr[j+1])
    NAME.weight.csr_shape    (2,)    int64    (K, N), the dense weight's shape

Why CSR by output and not a bitmask + values:
- bytes: float32 CSR costs 6 bytes a nonzero (4 value + 2 index; K <= 65536
  in every GPT-2), plus 8 bytes an output; bitmask + values costs 4 bytes
  a nonzero plus 1/8 byte for every weight, zero or not. Per weight at
  sparsity s: CSR 6 (1 - s), bitmask 4 (1 - s) + 0.125, dense 4. CSR is
  smaller than dense above 33% sparsity, the bitmask above 3%; the bitmask
  is the smaller of the two below 94% (at 80%: 0.93 vs 1.20 bytes a
  weight, against 4): it saves about a quarter of CSR's bytes there.
- decode cost: a product over CSR does work in proportion to the nonzeros
  (load an index and a value, multiply). A product over a bitmask visits
  every weight's bit, so its work stays in proportion to K N: it only
  pays off with an expand-load instruction (AVX-512 vpexpandd) that numba
  does not emit and that other CPUs lack, and splitting it over threads
  needs each output's offset into the values, which is an indptr anyway.
- what the matrix-vector product of decoding needs: y[j] = sum_p
  values[p] x[indices[p]] reads each output's entries contiguously and
  gathers from x (K floats, a few KB, always in L1 cache); outputs are
  independent, so threads split them with no write conflicts. The batch
  product uses the same order with x transposed, so that every nonzero
  multiplies a contiguous row of x^T (see minigpt.kernels.sparse).
So CSR trades up to a quarter more bytes at moderate sparsity for work in
proportion to the nonzeros on every CPU; a product is what the format is for.

Zeros of either sign are not stored: a -0.0 (what w * 0 gives for a
negative w) comes back as 0.0, every other value exactly.

The product is an op of the op table ("sparse_matmul"): sparse_matmul_ref
below is its definition, minigpt.kernels.sparse the numba kernel.

Backward (the weight is frozen, like an integer weight: it gets no gradient;
to fine-tune, train the dense weights with masks, minigpt.optim.apply_masks):
    dx = dout @ W^T,   db = sum of dout over every axis but the last
"""
from __future__ import annotations

import numpy as np

SPARSE_KEYS = ("csr_values", "csr_indices", "csr_indptr", "csr_shape")
MAX_UINT16_K = 1 << 16  # inputs a uint16 index can address


def index_dtype(K: int):
    """The dtype of the input indices for a weight with K inputs: uint16 while it fits."""
    return np.dtype(np.uint16) if K <= MAX_UINT16_K else np.dtype(np.int32)


def sparse_format(p: dict, name: str) -> str | None:
    """"csr" if the linear layer `name` of p has a sparse weight, else None."""
    return "csr" if name + ".weight.csr_indptr" in p else None


def sparse_arrays(p: dict, name: str) -> dict:
    """{"format": "csr", "values": ..., "indices": ..., "indptr": ..., "shape": ...} of layer `name`."""
    return {"format": "csr", **{k[len("csr_"):]: p[f"{name}.weight.{k}"] for k in SPARSE_KEYS}}


def is_sparse_cache(cache) -> bool:
    """True for the cache of sparse_linear_forward (what the block's backward dispatches on)."""
    return isinstance(cache[1], dict) and cache[1].get("format") == "csr"


def csr_from_dense(w) -> dict:
    """The CSR arrays (see the module docstring) of a dense weight w (K, N)."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"a sparse weight must be 2-D, got shape {w.shape}")
    K, N = w.shape
    wt = w.T  # (N, K): row j lists output j's weights; nonzero() walks it row by row
    cols, rows = np.nonzero(wt)
    counts = np.bincount(cols, minlength=N)  # nonzeros per output
    indptr = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return {"format": "csr", "values": np.ascontiguousarray(wt[cols, rows]),
            "indices": rows.astype(index_dtype(K)), "indptr": indptr,
            "shape": np.array([K, N], dtype=np.int64)}


def csr_to_dense(s: dict) -> np.ndarray:
    """W (K, N), the dense weight the CSR arrays stand for (zeros where nothing is stored)."""
    K, N = (int(d) for d in s["shape"])
    w = np.zeros((K, N), dtype=s["values"].dtype)
    cols = np.repeat(np.arange(N), np.diff(s["indptr"]))  # output j of each stored entry
    w[s["indices"], cols] = s["values"]
    return w


def csr_problem(s: dict, K: int, N: int) -> str | None:
    """What is wrong with CSR arrays meant for a (K, N) weight, or None.

    Dtypes and shapes of indices/indptr/shape are checked here; the caller
    checks values' float dtype. The content matters as much as the shapes:
    the kernels do not bound-check, so an index out of [0, K) or an indptr
    that does not partition the values would read outside the arrays.
    """
    values, indices, indptr, shape = s["values"], s["indices"], s["indptr"], s["shape"]
    if values.ndim != 1:
        return f"csr_values must be 1-D, got shape {values.shape}"
    nnz = values.shape[0]
    want = {"csr_indices": (indices, (nnz,), index_dtype(K)), "csr_indptr": (indptr, (N + 1,), np.dtype(np.int64)),
            "csr_shape": (shape, (2,), np.dtype(np.int64))}
    for key, (a, a_shape, dtype) in want.items():
        if a.shape != a_shape or a.dtype != dtype:
            return f"{key} is {a.dtype} {a.shape}, but the layer needs {dtype} {a_shape}"
    if tuple(shape) != (K, N):
        return f"csr_shape says {tuple(int(d) for d in shape)}, but the layer's weight is {(K, N)}"
    if indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
        return f"csr_indptr must rise from 0 to the {nnz} stored values"
    if nnz and (int(indices.min()) < 0 or int(indices.max()) >= K):
        return f"csr_indices must lie in [0, {K})"
    step = np.diff(indices.astype(np.int64))  # within an output the inputs must strictly increase
    starts = indptr[1:-1]
    step[starts[(starts > 0) & (starts < nnz)] - 1] = 1  # a new output may start anywhere
    if np.any(step <= 0):
        return "csr_indices must strictly increase within each output (no repeats)"
    return None


def sparse_matmul_ref(x, values, indices, indptr):
    """out = x @ W for x (M, K) and W (K, N) given as CSR arrays -> (M, N).

    The definition: build the dense W the arrays stand for, and multiply.
    (The kernels never build W; they follow out[m, j] = sum over output
    j's entries p of values[p] * x[m, indices[p]].)
    """
    K, N = x.shape[1], indptr.shape[0] - 1
    s = {"values": values.astype(x.dtype, copy=False), "indices": indices, "indptr": indptr,
         "shape": np.array([K, N])}
    return x @ csr_to_dense(s)  # (M, N)


def sparse_linear_forward(x, s: dict, b, matmul):
    """out = x @ W + b through the sparse product matmul (the op table's "sparse_matmul")."""
    K, N = (int(d) for d in s["shape"])
    x2 = np.ascontiguousarray(x.reshape(-1, K))  # (M, K)
    y = matmul(x2, s["values"].astype(x.dtype, copy=False), s["indices"], s["indptr"])  # (M, N)
    out = y.reshape(*x.shape[:-1], N) + b  # (..., N)
    return out, (x, s)


def sparse_linear_backward(dout, cache):
    """Returns (dx, None, db): out = x @ W + b, so dx = dout @ W^T, db = sum(dout);
    the sparse weight is frozen (None in the weight's place)."""
    x, s = cache
    K, N = (int(d) for d in s["shape"])
    dx = dout @ csr_to_dense(s).astype(dout.dtype, copy=False).T  # (..., K)
    db = dout.reshape(-1, N).sum(axis=0)  # (N,)
    return dx, None, db
