"""Compiled (numba) kernels. Each agrees with a NumPy reference in minigpt.layers.

The kernels are the bottom layer: they import nothing of minigpt's above
them (the op table, minigpt.ops, says which op each one computes, and the
model asks the table). Every kernel is compiled with
cache=True: the first process on a machine pays the compilation (see the
README), later ones load machine code from numba's cache in __pycache__.
"""
import os

# numba's OpenMP workers otherwise spin for a while after every parallel
# loop, and on a 2-core machine that spinning takes the cores from the BLAS
# threads of the matmul that follows (measured on a base training step:
# 2.0 s per step spinning, 0.4 s passive). Set before numba's thread pool starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from .warmup import warm_up  # noqa: E402,F401  (compile a dtype's kernels before a clock starts)
