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
