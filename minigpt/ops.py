"""The op table: which function computes each op, for each backend.

    table = op_table("numba")
    fwd, bwd = table["attention"]      # causal attention core, (B, H, T, D)
    fwd, bwd = table["gelu"]           # "layernorm", "linear" likewise
    fwd, _ = table["int8_weight_matmul"]   # integer products: forward only
    fwd, _ = table["sparse_matmul"]        # CSR weight (minigpt.layers.sparse_linear): forward only

"numpy" is the reference: the functions in minigpt.layers that follow each
formula and define the op. "numba" swaps in the compiled kernels of
minigpt.kernels for the ops a profile showed to matter; each kernel has a
test that it agrees with the reference. An op without a kernel falls back
to its reference, so a backend only names what it changes.

The table is built by a function call, never by importing a module for its
side effects: listing BACKENDS imports nothing, and the kernels (and numba)
are imported only when a numba table is first asked for. Layers import only
layers, kernels import nothing of minigpt's above them, and this module and
the model sit on top: no import cycles.
"""
from __future__ import annotations

import functools

from .errors import ConfigError

BACKENDS = ("numpy", "numba")  # "numpy" defines every op; "numba" is the default
OPS = ("attention", "gelu", "layernorm", "linear", "sparse_matmul",
       "int8_weight_matmul", "int4_weight_matmul", "w8a8_matmul",
       "block_weight_matmul")


def _reference_ops() -> dict:
    from .layers.block import REFERENCE_OPS  # every op a block runs, as the NumPy definition

    return dict(REFERENCE_OPS)


def _numba_ops() -> dict:
    from .kernels.attention import ATTENTION
    from .kernels.gelu import gelu_backward, gelu_forward
    from .kernels.int_matmul import int4_weight_matmul, int8_weight_matmul, quantized_linear_int8
    from .kernels.layernorm import layernorm_backward, layernorm_forward
    from .kernels.matmul import linear_backward, linear_forward
    from .kernels.sparse import sparse_matmul

    return {
        "attention": ATTENTION,  # the pair, which also runs on the packed qkv (AttentionKernel)
        "gelu": (gelu_forward, gelu_backward),
        "layernorm": (layernorm_forward, layernorm_backward),
        "linear": (linear_forward, linear_backward),  # BLAS products split over one passive thread pool
        "int8_weight_matmul": (int8_weight_matmul, None),  # forward only: integer weights are frozen
        "int4_weight_matmul": (int4_weight_matmul, None),
        "sparse_matmul": (sparse_matmul, None),  # forward only: a sparse weight is frozen
        "w8a8_matmul": (quantized_linear_int8, None),  # x quantized per token, then int8 x int8
    }


_OVERRIDES = {"numpy": lambda: {}, "numba": _numba_ops}


def check_backend(backend) -> str:
    """backend if it names a backend, else a ConfigError listing the choices."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    return backend


@functools.cache
def op_table(backend: str) -> dict[str, tuple]:
    """{op name: (forward, backward)} for backend (see the module docstring)."""
    check_backend(backend)
    return {**_reference_ops(), **_OVERRIDES[backend]()}


def kernel_pairs(with_backward=True) -> list[tuple[str, str, tuple]]:
    """Every (backend, op, (forward, backward)) that is not the reference itself:
    what a test or a chapter checks against the NumPy definitions.
    with_backward: only the ops that have a backward (not the integer products)."""
    ref = op_table("numpy")
    return [(b, op, pair) for b in BACKENDS for op, pair in op_table(b).items()
            if pair != ref[op] and (pair[1] is not None or not with_backward)]
