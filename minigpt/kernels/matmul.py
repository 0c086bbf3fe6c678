"""Matrix products split over a pool of Python threads, BLAS on one thread in each,
and the linear layer built on them (the numba backend's "linear" op).

Same op as minigpt.layers.linear (the NumPy reference that defines it):
    out = x @ w + b;   dx = dout @ w^T,  dw = x^T dout,  db = sum of dout's rows

Why not let BLAS thread the products itself. A training step alternates
BLAS products with numba kernels, and the two libraries' pools then take the
cores from each other. Measured on a 2-core Xeon (family 6 model 207) shared
with other work, one process, variants interleaved, small char-level shape
(4 layers, 128 wide, block 64, batch 12): OpenBLAS on 2 threads 1,200-2,300 ms
a step, OpenBLAS on 1 thread 130-280 ms, the products split over two Python
threads with OpenBLAS on 1 thread in each 63-77 ms. OpenBLAS's own pool,
whose threads wait for work actively, was as slow with OPENBLAS_THREAD_TIMEOUT
at its minimum. Python threads wait for work on a lock, passively, like
numba's OpenMP threads here (OMP_WAIT_POLICY=PASSIVE, kernels/__init__.py),
so whichever library runs gets the cores. NumPy releases the GIL inside a
product, so the threads run in parallel.

The budget is numba's thread count (set_threads sets it, with --threads):
that many threads work on a product (fewer if a piece would be under
MIN_FLOPS: handing work to a thread costs ~10-20 us), taking its pieces
one at a time, so that a thread still waiting for a core (other processes)
leaves its share to the caller. The first
product sets the BLAS library to one thread for the rest of the process
(threads.single_thread_blas): a multi-threaded BLAS call inside a piece
would start BLAS's own pool again, and so would an unsplit product when the
budget is one thread.
"""
from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from . import threads

MIN_FLOPS = 1 << 22  # 4 MFLOP, ~30 us on one AVX-512 core: less is not worth a hand-off
MIN_ROWS = 8  # fewer rows per piece: split the columns instead (decoding: one row)
# Pieces per thread. More pieces would let a thread that gets its core late
# take fewer of them, but measured (base and small training steps, one
# process, interleaved, load ~4): 1 a thread 285 / 130 ms a step, 4 a thread
# 377 / 150 ms, 8 a thread 444 / 179 ms: smaller BLAS calls, more hand-offs.
# With one, a worker that has not started yet still leaves its piece to the caller.
PIECES_PER_THREAD = 1

_lock = threading.Lock()
_executor, _workers = None, 0


def _pool(n_threads):
    """The thread pool that helps the calling thread: n_threads - 1 workers."""
    global _executor, _workers
    with _lock:
        if _workers < n_threads - 1:
            old = _executor
            _executor, _workers = ThreadPoolExecutor(n_threads - 1, thread_name_prefix="minigpt-matmul"), n_threads - 1
            if old is not None:
                old.shutdown(wait=False)
        return _executor


def pieces_for(M, K, N, threads=None):
    """(threads, pieces) for an (M, K) x (K, N) product: how many threads work
    on it, and into how many pieces it is cut (PIECES_PER_THREAD each, none
    under MIN_FLOPS); (1, 1) for a product not worth splitting."""
    threads = numba.get_num_threads() if threads is None else threads
    flops = 2 * M * K * N
    n_threads = max(1, min(threads, flops // MIN_FLOPS))
    if n_threads == 1:
        return 1, 1
    return n_threads, max(n_threads, min(PIECES_PER_THREAD * n_threads, flops // MIN_FLOPS))


def _bounds(total, n):
    edges = [total * i // n for i in range(n + 1)]
    return [(s, e) for s, e in zip(edges[:-1], edges[1:]) if e > s]


class _Pieces:
    """Pieces of one product, taken one at a time by whichever thread is free.

    On a shared machine a worker thread may wait milliseconds for a core; the
    calling thread then does its pieces instead of waiting for it, and waits
    only for pieces already started (a worker that wakes up late finds none left).
    """

    def __init__(self, jobs, run):
        self.jobs, self.run = jobs, run
        self.taken = itertools.count()  # next() on a count is atomic under the GIL
        self.left = len(jobs)
        self.errors = []
        self.done = threading.Condition()

    def work(self):
        while (i := next(self.taken)) < len(self.jobs):
            try:
                self.run(self.jobs[i])
            except BaseException as e:  # noqa: BLE001  (re-raised by the caller, in wait)
                self.errors.append(e)
            with self.done:
                self.left -= 1
                if self.left == 0:
                    self.done.notify_all()

    def wait(self):
        with self.done:
            while self.left:
                self.done.wait()
        if self.errors:
            raise self.errors[0]


def matmul(a, b, *, bias=None, row_sum=False):
    """a @ b for 2-D a (M, K) and b (K, N) (any strides BLAS accepts, e.g. transposed
    views), its rows (or, for few rows, its columns) split over the thread budget.

    bias (N,): returns a @ b + bias, each piece adding it to its own block of
    the output, in parallel and while the block is still in cache (added
    after the product on the calling thread it was serial work on one core).
    row_sum: returns (a @ b, the sum of a's rows (K,)), each row piece summing
    its rows of a, which its product has just read (a linear layer's bias
    gradient, db = sum of dout's rows, from dx = dout @ w^T)."""
    if not threads.blas_is_single():
        threads.single_thread_blas()  # once: also when nothing is split (a budget of one thread)
    M, K = a.shape
    N = b.shape[1]
    n_threads, n = pieces_for(M, K, N)
    if n == 1:
        out = a @ b
        if bias is not None:
            out += bias
        return (out, _row_sum(a)) if row_sum else out
    out = np.empty((M, N), dtype=np.result_type(a, b))
    sums = None
    if M >= n * MIN_ROWS:  # row blocks of out are contiguous: each piece writes its own in place
        jobs = [(a[s:e], b, out[s:e], i) for i, (s, e) in enumerate(_bounds(M, n))]
        if row_sum:
            sums = np.empty((len(jobs), K), dtype=out.dtype)  # one partial sum a piece
    else:  # column blocks are strided: each piece's block is copied in
        jobs = [(a, b[:, s:e], (s, e), None) for s, e in _bounds(N, n)]

    def run(job):
        x, y, where, i = job
        if isinstance(where, tuple):
            s, e = where
            block = x @ y  # (M, e - s)
            if bias is not None:
                block += bias[s:e]
            out[:, s:e] = block
            return
        np.matmul(x, y, out=where)
        if bias is not None:
            where += bias
        if sums is not None:
            sums[i] = _row_sum(x)

    run_pieces(jobs, run, n_threads)
    if not row_sum:
        return out
    return out, (sums.sum(axis=0) if sums is not None else _row_sum(a))


def _row_sum(a):
    """The sum of a's rows (K,) for a (M, K): a product with a vector of ones,
    one BLAS pass over a (~1.5x faster than a.sum(axis=0) at 2048 x 384,
    float32, one thread, Xeon family 6 model 207)."""
    if a.shape[0] == 0:
        return np.zeros(a.shape[1], dtype=a.dtype)
    return np.ones(a.shape[0], dtype=a.dtype) @ a


def run_pieces(jobs, run, n_threads):
    """run(job) for every job, on this thread and n_threads - 1 pool workers, each taking the
    next job when it is free (_Pieces); returns when all are done (re-raising a job's error)."""
    pieces = _Pieces(jobs, run)
    pool = _pool(n_threads)
    for _ in range(n_threads - 1):
        pool.submit(pieces.work)
    pieces.work()  # this thread works too instead of waiting idle
    pieces.wait()


def linear_forward(x, w, b):
    """Same contract as minigpt.layers.linear.linear_forward: out = x @ w + b."""
    n_in, n_out = w.shape
    rows = int(np.prod(x.shape[:-1]))
    out = matmul(x.reshape(rows, n_in), w, bias=b)  # (N, n_out)
    return out.reshape(*x.shape[:-1], n_out), (x, w)


def linear_backward(dout, cache):
    """Same contract as minigpt.layers.linear.linear_backward: (dx, dw, db)."""
    x, w = cache
    n_in, n_out = w.shape
    rows = int(np.prod(x.shape[:-1]))
    d2 = dout.reshape(rows, n_out)  # (N, n_out)
    x2 = x.reshape(rows, n_in)  # (N, n_in)
    n_threads, n = pieces_for(rows, n_out, 2 * n_in)  # the two products, dx and dw
    if n > 1 and rows >= n * MIN_ROWS:
        dx, dw, db = _backward_by_rows(x2, d2, w, n, n_threads)
    else:  # few rows (or one thread): each product split on its own
        dx, db = matmul(d2, w.T, row_sum=True)  # (N, n_in), (n_out,): db = sum of dout's rows
        dw = matmul(x2.T, d2)  # (n_in, n_out): a row block of dw is a column block of x
    return dx.reshape(*dout.shape[:-1], n_in), dw, db


def _backward_by_rows(x2, d2, w, n, n_threads):
    """(dx, dw, db) of the linear layer from n pieces of rows, one round of hand-offs.

    Piece i takes rows s:e and computes dx[s:e] = d2[s:e] w^T, and its parts of
    dw = sum over pieces of x2[s:e]^T d2[s:e] and db = sum of d2[s:e]'s rows,
    while d2[s:e] is in its core's cache; the n partial dw (n_in x n_out, small)
    are added at the end. (Split by rows of dw, as matmul would, every piece
    read all of d2 and x2, in a second round after dx's.)"""
    if not threads.blas_is_single():
        threads.single_thread_blas()
    N, n_in = x2.shape
    n_out = d2.shape[1]
    dtype = np.result_type(x2, d2, w)
    bounds = _bounds(N, n)
    dx = np.empty((N, n_in), dtype=dtype)
    dws = np.empty((len(bounds), n_in, n_out), dtype=dtype)
    dbs = np.empty((len(bounds), n_out), dtype=dtype)

    def run(job):
        i, (s, e) = job
        g = d2[s:e]  # (e - s, n_out)
        np.matmul(g, w.T, out=dx[s:e])
        np.matmul(x2[s:e].T, g, out=dws[i])
        dbs[i] = _row_sum(g)

    run_pieces(list(enumerate(bounds)), run, n_threads)
    return dx, dws.sum(axis=0), dbs.sum(axis=0)
