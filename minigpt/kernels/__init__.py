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


def _full_width_vectors():
    """On a CPU with AVX-512, let LLVM vectorise numba's kernels 512 bits wide.

    LLVM tunes Intel's AVX-512 CPUs to prefer 256-bit vectors (its
    "prefer-256-bit" tuning, chosen for clock-throttling Skylake servers), so
    by default the kernels used half the registers' width. Measured on a
    2-core Xeon (family 6 model 207), one thread, CPU time (the machine was
    shared), causal attention with 4 heads of 32: the backward 1.6 ms instead
    of 2.1 ms at B=12, T=64; 14.3 instead of 19.5 ms at B=16, T=256; 58
    instead of 68 ms at T=512; the forward unchanged. Decided here, from the CPU this process runs
    on: a CPU without AVX-512 (AVX2-only Zen 2/3, older Intel) is unchanged,
    and one with it (Zen 4/5, Intel since Skylake-SP) gets full width. An
    explicit NUMBA_CPU_FEATURES wins. numba reads the setting when it starts,
    so this runs before the kernels import it (and also sets numba's config
    if numba came first, which counts as long as nothing was compiled yet).
    """
    if "NUMBA_CPU_FEATURES" in os.environ:
        return
    try:
        import llvmlite.binding as ll

        ll.initialize_native_target()
        features = ll.get_host_cpu_features()
    except (ImportError, RuntimeError):
        return
    if not features.get("avx512f"):
        return
    os.environ["NUMBA_CPU_FEATURES"] = features.flatten() + ",-prefer-256-bit"
    import sys

    config = getattr(sys.modules.get("numba.core.config"), "CPU_FEATURES", None)
    if "numba.core.config" in sys.modules and config is None:
        sys.modules["numba.core.config"].CPU_FEATURES = os.environ["NUMBA_CPU_FEATURES"]


_full_width_vectors()

# --threads N in a parent process (threads.set_threads) reaches a child
# through MINIGPT_THREADS; numba's pool size must be set before numba starts.
if "MINIGPT_THREADS" in os.environ and "numba" not in __import__("sys").modules:
    os.environ.setdefault("NUMBA_NUM_THREADS", os.environ["MINIGPT_THREADS"])
from .warmup import warm_up  # noqa: E402,F401  (compile a dtype's kernels before a clock starts)
