"""Sparse x dense products in numba; minigpt.layers.sparse_linear defines them.

    sparse_matmul(x, values, indices, indptr)    (M, K) float x CSR weight (K, N) -> (M, N)

The weight is CSR by output column (the format and why it is CSR are in
minigpt.layers.sparse_linear): output j's nonzeros are values[p], at inputs
indices[p], for p in [indptr[j], indptr[j+1]).

How each case runs:
- one row (decoding, M = 1), or fewer than GATHER_ROWS rows:
  y[j] = sum_p values[p] * x[indices[p]]. An output's entries are read
  contiguously; x (K floats) is gathered (vector gathers), and stays in L1
  cache. Outputs are independent, so threads split them with no write
  conflicts; work and memory traffic are in proportion to the nonzeros,
  where dense BLAS reads all K N weights: this is where sparsity pays.
- a batch: x is cut into tiles of TILE_M rows and each tile transposed,
  xtiles (T, K, TILE_M), so that a nonzero W[k, j] = v updates output j's
  TILE_M sums with one contiguous multiply-add, acc[:] += v * xt[k, :].
  The sums stay in vector registers across all of output j's nonzeros
  (see _csr_tiles), and each xt tile (K x TILE_M floats, in L2) is reused by
  a run of outputs. A dense BLAS product reuses every loaded weight across
  many rows and columns from registers; here every nonzero reloads a row of
  xt from L2, so a batch needs far more zeros than one row to win (see
  `minigpt bench`).
Both loops are compiled with fastmath's reassociation, so they sum in
another order than the reference: they agree to float rounding, not bits.
"""
import numba
import numpy as np
from numba import njit, prange

from . import threads
from .threads import threads_for

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
# Rows of x per batch task: 64 float32 sums are 8 AVX2 / 4 AVX-512 registers. Measured on the 2-core
# Xeon (one thread, 768 x 3072, 512 rows, 50-95% zeros): 32 rows is 4-5x slower (LLVM no longer keeps the
# sums in registers), 128 rows and runs of 8 or 64 outputs are within the noise of 64 and 16.
TILE_M = 64
RUN = 16  # outputs per task (both paths); small enough to balance threads when nonzeros are uneven
# Fewer rows than this go through the row-by-row gather loop instead of a zero-padded tile: one tile of
# 64 rows cost about as much as 8 rows gathered one by one (measured, one thread, 768 x 3072, 50-95% zeros).
GATHER_ROWS = 8
# threads_for weighs work in the multiply-adds of vectorised kernels (an int8-weight decoding row of
# 768 x 3072: 0.05 ms). A gathered multiply-add takes ~16 times as long: one row of 768 x 3072 at 80%
# zeros (472K nonzeros) took 0.16 ms of CPU on one core of the 2-core Xeon, worth splitting over threads.
GATHER_COST = 16


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
def _csr_tiles(xtiles, values, indices, indptr, zero, acc, out):
    """out[t TILE_M + m, j] = sum_{p of output j} values[p] * xtiles[t, indices[p], m].

    xtiles (T, K, TILE_M) is x^T cut into tiles of TILE_M rows (the last one
    zero-padded), so the m loop always runs TILE_M times from 0 and compiles
    to full vector multiply-adds. acc (T, N, TILE_M) is where output j's
    sums live. Every array is indexed in full, never sliced: with no views
    in the loop numba tells LLVM that the arrays do not overlap, and LLVM
    then keeps the TILE_M sums in vector registers across all of output j's
    nonzeros (with a view they went through memory on every nonzero: 2.4x
    slower, measured). A task's block of out is written row by row at its
    end, whole cache lines at a time (writing each output's column as soon
    as it was done, 64 rows 12 KB apart, cost more than the products at
    high sparsity; so did transposing acc with NumPy afterwards).
    """
    n_t = xtiles.shape[0]
    M, N = out.shape
    n_runs = (N + RUN - 1) // RUN
    for task in prange(n_t * n_runs):
        t = task % n_t  # neighbouring tasks share a run of outputs: its nonzeros stay in cache
        j0 = (task // n_t) * RUN
        j1 = min(N, j0 + RUN)
        for j in range(j0, j1):
            for m in range(TILE_M):
                acc[t, j, m] = zero
            for p in range(indptr[j], indptr[j + 1]):
                v = values[p]
                k = indices[p]
                for m in range(TILE_M):
                    acc[t, j, m] += v * xtiles[t, k, m]
        for m in range(min(TILE_M, M - t * TILE_M)):
            for j in range(j0, j1):
                out[t * TILE_M + m, j] = acc[t, j, m]


def _split(M):
    """(tiles, rows gathered) for a product of M rows."""
    n_t = M // TILE_M + (M % TILE_M >= GATHER_ROWS)  # a short last tile is padded only if it is long enough
    return n_t, M - min(M, n_t * TILE_M)


def _gather_work(rows, nnz):
    return GATHER_COST * rows * nnz


def _tile_work(n_t, nnz):
    return n_t * TILE_M * nnz


def threads_used(M, nnz) -> int:
    """How many threads sparse_matmul runs on for M rows and nnz nonzeros (for reports)."""
    n_t, gathered = _split(M)
    work = max(_tile_work(n_t, nnz) if n_t else 0, _gather_work(gathered, nnz))
    return 1 if work < threads.SMALL_WORK else numba.get_num_threads()


def sparse_matmul(x, values, indices, indptr):
    """x (M, K) float times the CSR weight (K, N) -> (M, N) in x's dtype; see the module docstring.

    The arrays must be valid CSR (minigpt.layers.sparse_linear.csr_problem, which the model
    runs on every sparse weight it is given): the loops do not bound-check their indices.
    """
    x = np.ascontiguousarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {x.shape}")
    values = np.ascontiguousarray(values, dtype=x.dtype)
    indices, indptr = np.ascontiguousarray(indices), np.ascontiguousarray(indptr)
    M, N = x.shape[0], indptr.shape[0] - 1
    out = np.empty((M, N), dtype=x.dtype)
    n_t, gathered = _split(M)
    tiled = M - gathered
    if n_t:
        _tiled_product(x[:tiled], values, indices, indptr, n_t, out[:tiled])
    if tiled < M:
        with threads_for(_gather_work(M - tiled, values.shape[0])):
            _csr_rows(x[tiled:], values, indices, indptr, x.dtype.type(0), out[tiled:])
    return out


def _tiled_product(x, values, indices, indptr, n_t, out):
    """out (M <= n_t TILE_M, N) = x (M, K) times the CSR weight, through _csr_tiles."""
    M, K = x.shape
    N = indptr.shape[0] - 1
    xtiles = np.zeros((n_t * TILE_M, K), dtype=x.dtype)
    xtiles[:M] = x
    xtiles = np.ascontiguousarray(xtiles.reshape(n_t, TILE_M, K).transpose(0, 2, 1))  # (T, K, TILE_M)
    acc = np.empty((n_t, N, TILE_M), dtype=x.dtype)
    with threads_for(_tile_work(n_t, values.shape[0])):
        _csr_tiles(xtiles, values, indices, indptr, x.dtype.type(0), acc, out)


def warm_up(dtype="float32", verbose=True) -> float:
    """Compile (or load from numba's cache) both paths for dtype before a clock starts,
    announced on a cold cache like minigpt.kernels.warm_up; returns the seconds spent.
    (A sparse model's first product otherwise pays it: ~3 s cold, measured.)"""
    from .warmup import run_announced

    def calls():
        values, indices = np.ones(2, dtype=dtype), np.array([0, 2], dtype=np.uint16)
        indptr = np.array([0, 1, 2], dtype=np.int64)
        for rows in (1, GATHER_ROWS):  # the gather loop and one tile
            sparse_matmul(np.ones((rows, 3), dtype=dtype), values, indices, indptr)

    message = f"minigpt: compiling the {np.dtype(dtype).name} sparse kernels (first run only, ~3 s) ..."
    return run_announced(calls, message, verbose)
