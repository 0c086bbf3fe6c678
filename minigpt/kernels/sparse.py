"""Sparse x dense products in numba; minigpt.layers.sparse_linear defines them.

    sparse_matmul(x, values, indices, indptr)    (M, K) float x CSR weight (K, N) -> (M, N)

The weight is CSR by output column (the format and why it is CSR are in
minigpt.layers.sparse_linear): output j's nonzeros are values[p], at inputs
indices[p], for p in [indptr[j], indptr[j+1]).

How each case runs:
- one row (decoding, M = 1): y[j] = sum_p values[p] * x[indices[p]]. An
  output's entries are read contiguously; x (K floats) is gathered, and
  stays in L1 cache. Outputs are independent, so threads split them with
  no write conflicts; work (and memory traffic) is in proportion to the
  nonzeros, where dense BLAS reads all K N weights.
- a batch: x is transposed once to xt (K, M), so that a nonzero
  W[k, j] = v updates a whole tile of output j's column with
  acc[:] += v * xt[k, m0:m0 + TILE_M], a contiguous multiply-add that
  vectorises. A task is one tile of rows times a run of outputs; its xt
  tile (K x TILE_M floats) is reused by every output of the run. The result
  is written transposed, (N, M), and turned back at the end.
Both loops are compiled with fastmath's reassociation, so they sum in
another order than the reference: they agree to float rounding, not bits.
"""
import numpy as np
from numba import njit, prange

from .threads import threads_for

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
TILE_M = 64  # rows of x per batch task: the xt tile (K x 64 floats) stays in L2 across a run of outputs
RUN = 16  # outputs per task (both paths); small enough to balance threads when nonzeros are uneven
GATHER_ROWS = 32  # fewer rows than this go through the row-by-row gather loop instead of a padded tile
GATHER_COST = 4  # a gathered multiply-add counts as about 4 dense ones (for threads_for)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _csr_rows(x, values, indices, indptr, zero, out):
    """out[i, j] = sum_{p in [indptr[j], indptr[j+1])} values[p] * x[i, indices[p]], row by row."""
    M = x.shape[0]
    N = out.shape[1]
    n_runs = (N + RUN - 1) // RUN
    for task in prange(M * n_runs):
        i = task // n_runs
        j0 = (task % n_runs) * RUN
        xi = x[i]
        for j in range(j0, min(N, j0 + RUN)):
            # slices, so that the loop index starts at 0: numba's negative-index
            # wraparound on values[p] otherwise turns the contiguous load into a gather
            v = values[indptr[j]:indptr[j + 1]]
            k = indices[indptr[j]:indptr[j + 1]]
            s = zero
            for q in range(v.size):
                s += v[q] * xi[k[q]]
            out[i, j] = s


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _csr_tiles(xtiles, values, indices, indptr, zero, otiles):
    """otiles[t, j, m] = sum_{p of output j} values[p] * xtiles[t, indices[p], m].

    xtiles (T, K, TILE_M) is x^T cut into tiles of TILE_M rows (the last one
    zero-padded), so the m loop always runs TILE_M times from 0 and compiles
    to full vector multiply-adds. Every array is indexed in full, never
    sliced: with no views in the loop numba tells LLVM that the arrays do
    not overlap, and LLVM then keeps output j's TILE_M sums in vector
    registers across all of its nonzeros (with a view they went through
    memory on every nonzero: 2.4x slower, measured).
    """
    n_t = xtiles.shape[0]
    N = otiles.shape[1]
    n_runs = (N + RUN - 1) // RUN
    for task in prange(n_t * n_runs):
        t = task % n_t  # neighbouring tasks share a run of outputs: its nonzeros stay in cache
        j0 = (task // n_t) * RUN
        for j in range(j0, min(N, j0 + RUN)):
            for m in range(TILE_M):
                otiles[t, j, m] = zero
            for p in range(indptr[j], indptr[j + 1]):
                v = values[p]
                k = indices[p]
                for m in range(TILE_M):
                    otiles[t, j, m] += v * xtiles[t, k, m]


def sparse_matmul(x, values, indices, indptr):
    """x (M, K) float times the CSR weight (K, N) -> (M, N) in x's dtype; see the module docstring."""
    x = np.ascontiguousarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {x.shape}")
    values = np.ascontiguousarray(values, dtype=x.dtype)
    indices, indptr = np.ascontiguousarray(indices), np.ascontiguousarray(indptr)
    M, N = x.shape[0], indptr.shape[0] - 1
    out = np.empty((M, N), dtype=x.dtype)
    n_t = M // TILE_M + (M % TILE_M >= GATHER_ROWS)  # a short last tile is padded only if it is long enough
    tiled = min(M, n_t * TILE_M)
    if n_t:
        out[:tiled] = _tiled_product(x[:tiled], values, indices, indptr, n_t)
    if tiled < M:
        with threads_for(GATHER_COST * (M - tiled) * values.shape[0]):
            _csr_rows(x[tiled:], values, indices, indptr, x.dtype.type(0), out[tiled:])
    return out


def _tiled_product(x, values, indices, indptr, n_t):
    """x (M <= n_t TILE_M, K) times the CSR weight through _csr_tiles -> (M, N)."""
    M, K = x.shape
    N = indptr.shape[0] - 1
    xtiles = np.zeros((n_t * TILE_M, K), dtype=x.dtype)
    xtiles[:M] = x
    xtiles = np.ascontiguousarray(xtiles.reshape(n_t, TILE_M, K).transpose(0, 2, 1))  # (T, K, TILE_M)
    otiles = np.empty((n_t, N, TILE_M), dtype=x.dtype)
    with threads_for(n_t * TILE_M * values.shape[0]):
        _csr_tiles(xtiles, values, indices, indptr, x.dtype.type(0), otiles)
    return otiles.transpose(0, 2, 1).reshape(n_t * TILE_M, N)[:M]  # (M, N)
