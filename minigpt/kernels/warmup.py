"""Compile (or load from numba's cache) the model's kernels before a clock starts.

numba compiles a kernel the first time it is called with a new type
signature, and with cache=True writes the machine code to disk, so only the
first process on a machine pays (see the README). That first call takes
seconds, silently: a progress bar would sit at step 0 and then report an
absurd time per step and ETA. warm_up() makes the same calls the numba
backend makes, on tiny arrays of one dtype, so that the compilation happens
here, announced, and a caller can keep it out of its timings.

Only the kernels of one dtype are compiled: float32 for training and
sampling; float64 (gradient checks) is compiled the first time it is used.

How it knows the cache is cold: numba fires a "numba:compile" event only
when a signature is neither loaded in this process nor found in its on-disk
cache (numba.core.event), so the message is printed just before the first
real compilation, and never on a warm cache.
"""
from __future__ import annotations

import sys
import time

import numpy as np

# Measured cold (empty NUMBA_CACHE_DIR), on a 2-core Intel Xeon (family 6
# model 207, Emerald Rapids), before the two optimizer kernels joined: the six kernels (attention, GELU, LayerNorm,
# forward and backward) of one dtype took 14 s (float32) on a quiet machine,
# 18-23 s (float32) and 18-21 s (float64) under a load of 2-4; warm, 0.2 s.
# Only the message's estimate.
COLD_SECONDS = {"float32": 20, "float64": 20}


def _model_kernel_calls(dtype):
    """Run every kernel the numba backend's model uses, once, on tiny arrays of dtype.

    Through the public wrappers, so the argument types (and with them the
    compiled signatures) are exactly those of a real forward and backward.
    """
    from .adamw import adamw_update, sum_squares
    from .attention import attention_backward, attention_forward
    from . import gelu as gelu_kernels
    from .gelu import gelu_backward, gelu_forward
    from .layernorm import layernorm_backward, layernorm_forward

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 5, 4)).astype(dtype) for _ in range(3))  # (B, H, T, D)
    out, cache = attention_forward(q, k, v)
    attention_backward(np.ones_like(out), cache)
    attention_forward(q[:, :, -1:], k, v)  # one query row: a decoding step's kernel (its serial twin)
    from . import attention as attention_kernels

    kT = np.ascontiguousarray(k.swapaxes(2, 3))  # (B, H, D, T): the layout a KV cache keeps
    vT = np.ascontiguousarray(v.swapaxes(2, 3))
    attention_kernels._decode_kernel(q[:, :, -1:].copy(), kT, vT, k.shape[2], q.dtype.type(0.5),
                                     np.empty_like(q[:, :, -1:]), 1)  # a long context's threaded path
    x = rng.standard_normal((2, 3, 8)).astype(dtype)  # (B, T, C)
    y, cache = gelu_forward(x)  # a small call: the kernel's serial twin (decoding's path)
    x2 = x.reshape(-1, 8)
    gelu_kernels._gelu_forward_kernel(x2, np.empty_like(x2), gelu_kernels._constants(x2.dtype))  # a batch's path
    gelu_backward(np.ones_like(y), cache)
    gamma, beta = np.ones(8, dtype=dtype), np.zeros(8, dtype=dtype)
    y, cache = layernorm_forward(x, gamma, beta)  # small: the serial twins
    layernorm_backward(np.ones_like(y), cache)
    from . import layernorm as ln_kernels

    ln_kernels.warm_parallel(x, gamma, beta)  # a large batch's path
    p, g, m, v = (np.ones(4, dtype=dtype) for _ in range(4))  # the optimizer's step (minigpt.optim)
    sum_squares(g)
    adamw_update(p, g, m, v, 0.9, 0.99, 0.1, 0.01, 1e-8, 0.1, 1e-3)


def run_announced(calls, message, verbose=True, stream=None):
    """Run calls(); if numba compiles anything meanwhile, print `message` to
    stream (default stderr) just before the first compilation, and finish the
    line with the time taken. Returns the seconds calls() took."""
    from numba.core import event

    stream = sys.stderr if stream is None else stream
    t0 = time.perf_counter()
    announced = []

    class _FirstCompile(event.Listener):
        def on_start(self, ev):
            if verbose and not announced:
                print(message, end="", file=stream, flush=True)
            announced.append(ev)

        def on_end(self, ev):
            pass

    with event.install_listener("numba:compile", _FirstCompile()):
        calls()
    seconds = time.perf_counter() - t0
    if verbose and announced:
        print(f" done in {seconds:.0f} s", file=stream, flush=True)
    return seconds


def warm_up(dtype="float32", verbose=True) -> float:
    """Compile or load from cache every kernel the model's numba backend uses for dtype.

    Prints "minigpt: compiling kernels (first run only, ~N s) ... done in M s"
    to stderr when (and only when) something had to be compiled, i.e. on a
    cold numba cache. Returns the seconds spent (a fraction of a second warm).
    """
    name = np.dtype(dtype).name
    if name not in COLD_SECONDS:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    message = f"minigpt: compiling {name} kernels (first run only, ~{COLD_SECONDS[name]} s) ..."
    return run_announced(lambda: _model_kernel_calls(name), message, verbose)
