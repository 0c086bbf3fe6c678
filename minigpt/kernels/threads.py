"""Run small kernel calls on one thread.

numba's parallel loops hand work to sleeping threads (OpenMP waits
passively here, see kernels/__init__.py), and waking one costs tens of
microseconds: more than a decoding step's matrix-vector product takes on
one core. Measured on GPT-2-small-shaped generation with int8 weights:
127 tokens/s when every call woke the second thread, 225 on one thread.
"""
from contextlib import contextmanager

import numba

# Work is counted in rough scalar operations (callers weigh their loops: an
# int4 multiply-add, with its unpacking, counts 4). Below this, one thread wins.
SMALL_WORK = 1 << 22


@contextmanager
def threads_for(work):
    """Within the block, numba uses one thread if work < SMALL_WORK, else its usual count."""
    if work >= SMALL_WORK or numba.get_num_threads() == 1:
        yield
        return
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(n)


def serial_twin(kernel, name, fastmath):
    """kernel (an njit(parallel=True) function) compiled again without
    parallel=True under its own name (numba's cache files are named after
    the function; its flags are not in the key): prange runs as range.

    For calls below SMALL_WORK, which run on one thread anyway: a parallel
    kernel's launch costs ~1.5 us even on one thread, and threads_for's
    switch ~30 us with two; a decoding step makes ~50 such small calls.
    """
    import types

    f = kernel.py_func
    twin = types.FunctionType(f.__code__, f.__globals__, name, f.__defaults__, f.__closure__)
    twin.__qualname__ = name
    return numba.njit(cache=True, fastmath=fastmath)(twin)


# ------------------------------------------------------------ one budget
# Two thread pools share the cores while a model trains: numba's (OpenMP,
# for the kernels) and the BLAS library's (NumPy's OpenBLAS uses pthreads;
# for the matmuls). set_threads(n) sizes both from one number. threadpoolctl
# finds the BLAS library NumPy actually loaded (OpenBLAS, MKL or BLIS, each
# with its own set_num_threads call), which a hand-written ctypes lookup
# would have to guess; without it, BLAS is left at its own default.
_blas_single = False  # set by single_thread_blas(): the split products (kernels/matmul.py) are in use
# What set_threads writes into the environment for processes started later.
# Not NUMBA_NUM_THREADS: numba re-reads its settings when it compiles and
# refuses a value that differs from its running pool's size; a child reads
# MINIGPT_THREADS instead (kernels/__init__.py, before numba starts there).
ENV_VARS = ("MINIGPT_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _blas_controller():
    """threadpoolctl's controller of the loaded BLAS libraries, or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    import numpy as np

    np.ones((2, 2)) @ np.ones((2, 2))  # make sure NumPy's BLAS is loaded, so the controller sees it
    return ThreadpoolController().select(user_api="blas")


def max_threads() -> int:
    """The most threads numba's pool can run (its size, fixed when numba starts)."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


def set_threads(n: int, environ=None) -> None:
    """Numba kernels and BLAS both on n threads from now on (n <= max_threads()).

    Once minigpt.kernels.matmul splits products over its own pool, BLAS stays
    on one thread and the pool uses n (numba's count) instead.

    Also writes the count into the environment (environ, default os.environ),
    so that processes started from here (the tour's chapters) get the same budget.
    """
    import os

    import numba

    if not 1 <= n <= max_threads():
        raise ValueError(f"threads must be between 1 and {max_threads()} (numba's pool), got {n}")
    env = os.environ if environ is None else environ
    for var in ENV_VARS:
        env[var] = str(n)
    numba.set_num_threads(n)
    blas = _blas_controller()
    if blas is not None:  # stays in force (the returned context is not undone)
        blas.limit(limits=1 if _blas_single else n)  # once split products run, BLAS stays on one thread


def single_thread_blas() -> None:
    """BLAS on one thread from now on: minigpt.kernels.matmul supplies the
    parallelism with its own passive pool (see there why)."""
    global _blas_single
    _blas_single = True
    blas = _blas_controller()
    if blas is not None:
        blas.limit(limits=1)


def blas_is_single() -> bool:
    """Whether single_thread_blas() has run in this process."""
    return _blas_single


def blas_threads():
    """The BLAS libraries NumPy loaded: [{"library", "version", "threading", "threads", "kernels"}]."""
    blas = _blas_controller()
    if blas is None:
        return []
    return [{"library": lib.internal_api, "version": lib.version, "threading": getattr(lib, "threading_layer", None),
             "threads": lib.num_threads, "kernels": getattr(lib, "architecture", None)} for lib in blas.lib_controllers]


def numba_threading() -> str:
    """numba's threading layer (omp, tbb or workqueue), after starting its pool if needed."""
    import numba
    import numpy as np

    @numba.njit(parallel=True, cache=False)
    def _touch(a):
        for i in numba.prange(a.shape[0]):
            a[i] += 1

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet in this process
        _touch(np.zeros(2))
        return numba.threading_layer()


# LLVM feature names -> how Intel and AMD name them. LLVM compiles numba's
# kernels for the host CPU with every feature it reports, so this is what
# the kernels may use on this machine (another CPU compiles its own).
SIMD_NAMES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512vnni", "AVX-512 VNNI"), ("avxvnni", "AVX-VNNI"), ("avx512bf16", "AVX-512 BF16"),
              ("amx-int8", "AMX-INT8"))


def simd_features():
    """(LLVM's name for this CPU, [SIMD extensions from SIMD_NAMES that it has])."""
    import llvmlite.binding as ll

    features = ll.get_host_cpu_features()
    return ll.get_host_cpu_name(), [name for key, name in SIMD_NAMES if features.get(key)]
